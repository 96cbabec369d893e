"""The shipped service files as the system tests run them: where they are,
xinetd stopped, a process killed that may be gone already."""

from __future__ import annotations

import signal
import subprocess

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

