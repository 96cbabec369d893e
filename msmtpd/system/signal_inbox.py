"""Signals for a process that serves sessions (a worker, or ``--inetd``):
the handlers only record SIGTERM and SIGHUP and wake a pipe that the
connection and the delivery wait on; :meth:`RecordedSignals.handle` acts
on them from the main flow, where logging is safe."""

from __future__ import annotations

import os
import signal


class RecordedSignals:
    """SIGTERM: stop; SIGHUP: reopen the log; SIGUSR2 (a worker only, sent
    by its master after a reload): finish the current session, then leave."""

    def __init__(self, retire: bool = False) -> None:
        self.wake_fd, wake_w = os.pipe()
        for fd in (self.wake_fd, wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        signal.set_wakeup_fd(wake_w)
        self.stop_requested = False
        self.reopen_log = False
        self.retire_requested = False
        signal.signal(signal.SIGTERM, self._record)
        signal.signal(signal.SIGHUP, self._record)
        if retire:
            signal.signal(signal.SIGUSR2, self._record)

    def _record(self, signum: int, frame: object) -> None:
        # Only record; handle() does the work.
        if signum == signal.SIGTERM:
            self.stop_requested = True
        elif signum == signal.SIGHUP:
            self.reopen_log = True
        elif signum == signal.SIGUSR2:
            self.retire_requested = True

    def handle(self) -> bool:
        """Empty the wake-up pipe, reopen the log after a SIGHUP; True once
        a SIGTERM came."""
        try:
            while os.read(self.wake_fd, 512):
                pass
        except BlockingIOError:
            pass
        if self.reopen_log:
            self.reopen_log = False
            from msmtpd.base import log_targets

            log_targets.reopen()
        return self.stop_requested
