"""Logging on the --inetd path, in a real process: without --log an inetd
session never imports logging; the log format is in tests/unit."""

from __future__ import annotations

from pathlib import Path


def test_without_a_log_an_inetd_session_never_imports_logging(tmp_path: Path) -> None:
    """--log=none (the default) costs nothing: the logging module is not
    even imported by a whole --inetd session with a delivery."""
    import subprocess
    import sys

    # The session ends in os._exit (no teardown), so the interpreter's own
    # record of every import it made is what tells.
    script = ("import sys\n"
              "sys.argv = ['msmtpd', '--inetd', '--command=cat > /dev/null; :']\n"
              "from msmtpd.commands.cli import main\n"
              "main()\n")
    conversation = b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", script], input=conversation,
                          capture_output=True, timeout=30)
    assert b"250 2.0.0 OK" in done.stdout
    imported = {line.rpartition(b"|")[2].strip() for line in done.stderr.splitlines()
                if line.startswith(b"import time:")}
    assert b"msmtpd.smtp.session" in imported, done.stderr[-500:]
    assert b"logging" not in imported
