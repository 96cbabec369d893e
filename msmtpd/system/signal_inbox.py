"""One signal inbox for every process that acts on signals: the master, a
worker, ``--inetd`` and the queue runner.

A handler only records the signal (never logs: it may interrupt the
logger itself), and Python's wake-up fd writes a byte to a pipe that the
process's select loop watches.  The main flow then calls
``handle_<name>`` on the inbox's owner for each recorded signal, oldest
first, where logging and real work are safe (gunicorn's arbiter is the
model).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    import signal
    from typing import Dict, Iterable, List, Optional, Tuple
else:
    # The C module: signal wraps it in enums, and enum costs an --inetd
    # session some 2 ms.  The numbers and functions are the same.
    import _signal as signal

# Recorded signals waiting to be handled, at the most; past it only a signal
# not yet waiting is recorded, so a burst of SIGCHLD never hides a SIGTERM.
MAX_PENDING = 10
# The owner's method for a signal is ``handle_`` and this name.
HANDLER_NAMES: Dict[int, str] = {signal.SIGTERM: "term", signal.SIGINT: "int", signal.SIGHUP: "hup",
                                  signal.SIGCHLD: "chld", signal.SIGUSR1: "usr1", signal.SIGUSR2: "usr2"}


class SignalInbox:
    """Installs a recording handler for each of ``signums`` and makes
    itself the process's wake-up fd; :meth:`dispatch` hands the recorded
    signals to ``owner.handle_<name>``."""

    def __init__(self, owner: object, signums: Iterable[int]) -> None:
        self.owner = owner
        self.signums = frozenset(signums)
        self.pending: List[int] = []
        self.wake_fd, self.wake_w = os.pipe()
        for fd in (self.wake_fd, self.wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        signal.set_wakeup_fd(self.wake_w)
        for signum in self.signums:
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame: object) -> None:
        # Only record; dispatch() does the work.
        if len(self.pending) < MAX_PENDING or signum not in self.pending:
            self.pending.append(signum)

    def unblock(self) -> None:
        """Let the signals in: a forked child gets them blocked (see
        processes.fork_child) until its handlers are in place."""
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signums)

    def fds(self) -> Tuple[int, int]:
        """The wake-up pipe's two ends, which no forked child may keep."""
        return self.wake_fd, self.wake_w

    def drain(self) -> None:
        """Empty the wake-up pipe, so that select waits again."""
        try:
            while os.read(self.wake_fd, 512):
                pass
        except BlockingIOError:
            pass

    def dispatch(self, at_most: Optional[int] = None) -> int:
        """Call ``handle_<name>`` for the recorded signals, oldest first
        (``at_most`` of them); returns how many were handled."""
        handled = 0
        while self.pending and (at_most is None or handled < at_most):
            signum = self.pending.pop(0)
            handled += 1
            getattr(self.owner, f"handle_{HANDLER_NAMES[signum]}")()
        return handled


class RecordedSignals:
    """The inbox of a process that serves sessions (a worker, or
    ``--inetd``).  SIGTERM: stop; SIGHUP: reopen the log; SIGUSR2 (a worker
    only, sent by its master after a reload or to a surplus worker): finish
    the current session, then leave.  The connection and the delivery wait
    on ``wake_fd``."""

    def __init__(self, retire: bool = False) -> None:
        self.stop_requested = False
        self.retire_requested = False
        signums = [signal.SIGTERM, signal.SIGHUP] + ([signal.SIGUSR2] if retire else [])
        self.inbox = SignalInbox(self, signums)
        self.wake_fd = self.inbox.wake_fd

    def handle(self) -> bool:
        """Act on what came; True once a SIGTERM came."""
        self.inbox.drain()
        self.inbox.dispatch()
        return self.stop_requested

    def handle_term(self) -> None:
        self.stop_requested = True

    def handle_hup(self) -> None:
        from msmtpd.base import log_targets

        log_targets.reopen()

    def handle_usr2(self) -> None:
        self.retire_requested = True
