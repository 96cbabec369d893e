"""The master's dealings with its child processes at the system level:
forking one safely (the one set-up every child gets), reaping, signalling,
the adopted orphans it must find, and a child's check on its master."""

from __future__ import annotations

import errno
import os

from msmtpd.base.exit_codes import EXIT_NOT_RUNNING

TYPE_CHECKING = False  # typing at run time costs every process some 1.6 MB and 3 ms; annotations are strings
if TYPE_CHECKING:
    import signal
    from typing import Callable, Iterable, Iterator, List, Set, Tuple
else:
    # The C module, not signal's enum wrappers: in a freshly forked child
    # the wrappers' first calls write to pages shared with the master
    # (a child of the loaded master that sets its dispositions through
    # signal has some 720 KB of private memory, through _signal 510).
    import _signal as signal

PR_SET_CHILD_SUBREAPER = 36
# How often a child (worker, queue runner) checks that its master is alive.
PARENT_CHECK_SECONDS = 1.0


def fork_child(blocked: Set[signal.Signals], close: Iterable[int], title: str,
               run: Callable[[], None]) -> int:
    """Fork a child that runs ``run`` and never returns into our code.

    Until the child has its own handlers, a signal sent to it would land in
    its copy of the master's inbox and be lost: ``blocked`` stay blocked
    across the fork, and the child unblocks them once it is ready (its
    SignalInbox.unblock).  The child leaves through ``os._exit``."""
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
        return pid
    try:
        _settle_child(close, title)
        run()
    finally:
        os._exit(EXIT_NOT_RUNNING)  # could not start: the master halts on a worker's
    raise AssertionError("unreachable")  # for the type checker


def _settle_child(close: Iterable[int], title: str) -> None:
    """Shed what a child inherits from the master: its wake-up fd, its
    signal dispositions (SIGCHLD above all, or a delivery command's exit
    status would be lost) and the descriptors in ``close``."""
    from msmtpd.system.proctitle import set_title

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the master, which stops us
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    for fd in close:
        os.close(fd)
    set_title(title)


def master_gone(master_pid: int) -> bool:
    """For a child: its master died (it was adopted by another process)."""
    return os.getppid() != master_pid


def reaped() -> Iterator[Tuple[int, int]]:
    """``(pid, wait status)`` of each child that has ended, without waiting."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def become_subreaper() -> None:
    """Adopt the delivery commands of children that die (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def kernel_children() -> List[int]:
    """Our children as the kernel lists them: adopted orphans too."""
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
