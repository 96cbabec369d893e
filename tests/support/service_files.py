"""The shipped service files as the system tests run them: where they are,
xinetd stopped, a process killed that may be gone already."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.helpers import ROOT, descendants, kill_quietly

ETC = ROOT / "etc"






def stop_xinetd(server: subprocess.Popen[bytes]) -> None:
    """Stop xinetd and every msmtpd --inetd it started."""
    for pid in descendants(server.pid):
        kill_quietly(pid, signal.SIGKILL)
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def start_xinetd(xinetd: str, tmp_path: Path, services: Path) -> subprocess.Popen[bytes]:
    """xinetd in the foreground with the service files of ``services``,
    logging to tmp_path/xinetd.log and writing its output to xinetd.out."""
    config = tmp_path / "xinetd.conf"
    config.write_text(f"defaults\n{{\n\tlog_type = FILE {tmp_path / 'xinetd.log'}\n}}\n"
                      f"includedir {services}\n")
    with (tmp_path / "xinetd.out").open("wb") as out:
        return subprocess.Popen([xinetd, "-dontfork", "-f", str(config),
                                 "-pidfile", str(tmp_path / "xinetd.pid")],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
