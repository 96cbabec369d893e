"""The shipped service files as the system tests run them: where they are,
xinetd stopped, a process killed that may be gone already."""

from __future__ import annotations

import os
import signal
import subprocess

from tests.helpers import ROOT, descendants

ETC = ROOT / "etc"



def kill_quietly(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass



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

