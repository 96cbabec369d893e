"""``--daemon``: detach with python-daemon, but return only when the
service is up, so ``msmtpd --daemon ... && swaks ...`` works and a late
start-up error still reaches the terminal with exit status 3.

The foreground process forks once and waits on a pipe; the child detaches
through ``DaemonContext`` (its own double fork and ``setsid``) and the
master reports ``ready`` or ``error <why>`` on that pipe.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable, List

from msmtpd.base.exit_codes import EXIT_NOT_RUNNING, EXIT_OK


def _fileno(thing: Any) -> Any:
    stream = getattr(thing, "stream", None)  # a logging handler's file
    if stream is not None:
        return stream
    sock = getattr(thing, "socket", None)  # SysLogHandler
    return sock if sock is not None else thing


def run_detached(serve: Callable[[int], int], keep: List[Any], log_to_stderr: bool) -> int:
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(ready_w)
        os.waitpid(pid, 0)  # the child leaves as soon as DaemonContext has forked
        return _await_ready(ready_r)
    code = EXIT_NOT_RUNNING
    try:
        os.close(ready_r)
        import daemon

        context = daemon.DaemonContext(
            detach_process=True,
            working_directory="/",
            umask=0o022,
            chroot_directory=None,
            prevent_core=True,
            uid=None,  # privileges are dropped by the workers, after binding
            gid=None,
            initgroups=False,
            pidfile=None,  # the master writes and locks its own
            files_preserve=[ready_w, *(_fileno(item) for item in keep if item is not None)],
            stdin=None,
            stdout=None,
            stderr=sys.stderr if log_to_stderr else None,
            signal_map={signal.SIGTTIN: None, signal.SIGTTOU: None, signal.SIGTSTP: None},
        )
        context.open()
        code = serve(ready_w)
    finally:
        os._exit(code)


def _await_ready(ready_r: int) -> int:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(ready_r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(ready_r)
    message = data.decode("utf-8", "replace").strip()
    if message == "ready":
        return EXIT_OK
    if message.startswith("error "):
        sys.stderr.write(f"msmtpd: {message[6:]}\n")
    else:
        sys.stderr.write("msmtpd: the daemon exited during start-up\n")
    return EXIT_NOT_RUNNING
