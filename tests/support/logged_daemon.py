"""An msmtpd master with a log file and a Maildir, started (once its log
says it listens) and stopped; the system tests add what they ask of it."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Sequence

from tests import helpers


class LoggedDaemon:
    """``user``: a command any --user can run (the mail is thrown away)."""

    def __init__(self, directory: Path, args: Sequence[str], user: bool = False) -> None:
        self.log = directory / "msmtpd.log"
        self.maildir = directory / "Maildir"
        command = "cat >/dev/null; :" if user else helpers.maildir_command(self.maildir)
        self.server = helpers.Server([f"--command={command}", f"--log={self.log}",
                                      "--max-sessions=2", *args])

    def __enter__(self) -> LoggedDaemon:
        self.server.start()
        helpers.wait_for_log(self.log, "listening on")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__()

    def log_text(self) -> str:
        return helpers.log_text(self.log)

    def hup(self, text: str) -> None:
        """SIGHUP, then wait for the log line ``text`` it brings."""
        count = sum(text in line for line in helpers.log_text(self.log).splitlines())
        os.kill(self.server.pid, signal.SIGHUP)
        helpers.wait_for_log(self.log, text, count + 1)
