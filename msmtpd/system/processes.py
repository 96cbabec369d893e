"""The master's dealings with its child processes at the system level:
forking one safely, signalling, and the adopted orphans it must find."""

from __future__ import annotations

import errno
import os
import signal
from typing import Callable, Iterable, List, Set

from msmtpd.base.exit_codes import EXIT_NOT_RUNNING

PR_SET_CHILD_SUBREAPER = 36


def fork_child(blocked: Set[signal.Signals], close: Iterable[int], run: Callable[[], None]) -> int:
    """Fork a child that runs ``run`` and never returns into our code.

    Until the child has its own handlers, a signal sent to it would land in
    its copy of the master's queue and be lost: ``blocked`` stay blocked
    across the fork, and the child unblocks them once it is ready.  The
    child closes the master's descriptors in ``close`` and always leaves
    through ``os._exit``."""
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
        return pid
    try:
        signal.set_wakeup_fd(-1)
        for fd in close:
            os.close(fd)
        run()
    finally:
        os._exit(EXIT_NOT_RUNNING)  # could not start: the master halts on a worker's
    raise AssertionError("unreachable")  # for the type checker


def become_subreaper() -> None:
    """Adopt the delivery commands of children that die (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def children() -> List[int]:
    pid = os.getpid()
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(word) for word in listing.read().split()]
    except OSError:
        return []


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True  # gone already


def kill(pid: int, signum: int) -> None:
    """Signal ``pid``; one that is already gone is no error."""
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise
