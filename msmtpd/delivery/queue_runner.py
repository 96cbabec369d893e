"""The queue runner: the daemon's child process that delivers the queue.

It wakes on a byte in the queue's FIFO (``w``: a session stored a mail;
``f``: ``--queue-flush`` asks to try everything now), on SIGUSR1 (try
everything now; the master passes it on), and when the next retry is due.
Attempts themselves are :mod:`msmtpd.delivery.queue_attempts`.  SIGTERM: start
nothing new, let running deliveries finish within the grace time
(``--timeout``), then kill them.  A forked runner always leaves through
``os._exit``.
"""

from __future__ import annotations

import os
import select
import signal
import stat
import time
from typing import Dict, List, Optional

from msmtpd.base.logger import log
from msmtpd.delivery.pipe_command import PipeCommand
from msmtpd.delivery.queue_attempts import DEFERRED, DELIVERED, FAILED, REFUSED, Attempts
from msmtpd.delivery.queue_decision import (  # noqa: F401 (the back-off, as before the split)
    FIRST_RETRY_SECONDS,
    MAX_RETRY_SECONDS,
    retry_delay,
)
from msmtpd.delivery.queue_directory import RUNNER_LOCK, WAKE_FLUSH, make_fifo
from msmtpd.delivery.queue_store import Queue
from msmtpd.system.safe_files import UnsafeFile, open_checked

# Without any wake-up, look at the directory this often (mails queued by a
# process that could not reach the FIFO, an expired lock).
SCAN_SECONDS = 60.0
# A mail another process holds is looked at again after this long.
BUSY_RETRY_SECONDS = 1.0
# How often the runner checks that its master is still alive.
PARENT_CHECK_SECONDS = 1.0
# After the grace time: how long killed commands' attempts get to be recorded
# (the master's STOP_MARGIN is the same).
KILL_MARGIN_SECONDS = 2.0
EXIT_OK, EXIT_FAILED = 0, 1


class Runner:
    """The daemon's queue runner (a child of the master)."""

    def __init__(self, attempts: Attempts, master_pid: int, grace: float) -> None:
        self.attempts = attempts
        self.queue = attempts.queue
        self.master_pid = master_pid
        self.grace = grace
        self.schedule: Dict[str, float] = {}  # id -> next try (time.time())
        self.forced: set[str] = set()  # SIGUSR1: try these at once, due or not
        self.flagged: List[int] = []
        self.last_scan = 0.0
        self.last_tidy = 0.0
        self.lock_fd = -1
        self.fifo = -1  # the wake-up FIFO, read while we hold the runner lock
        self.sharing = False
        self.unsafe_reported = False

    def _record(self, signum: int, frame: object) -> None:
        self.flagged.append(signum)  # only record; the loop does the work

    def serve(self) -> int:
        sig_r, sig_w = os.pipe()
        for fd in (sig_r, sig_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(sig_w)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, self._record)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1})
        self._tidy()
        log.info("queue runner %d on %s: %d mails queued", os.getpid(), self.queue.directory,
                 len(self.queue.ids()))
        while True:
            if self._handle_signals():
                return self._stop()
            self._dispatch()
            wait = PARENT_CHECK_SECONDS
            if not self.attempts.full and self.schedule:
                wait = min(wait, min(self.schedule.values()) - time.time())
            watch = [sig_r, self.attempts.done_r] + ([self.fifo] if self.fifo >= 0 else [])
            try:
                ready, _, _ = select.select(watch, [], [], max(wait, 0.01))
            except InterruptedError:
                ready = []
            for fd in ready:
                data = _drain(fd)
                if fd == self.fifo:
                    self.last_scan = 0.0  # a new mail: look now
                    if WAKE_FLUSH in data:
                        self._flush_all("--queue-flush")

    def _tidy(self) -> None:
        """Now and then: take the runner lock if we run without it, and
        remove what crashes left in DIR."""
        self.last_tidy = time.time()
        if self.fifo < 0:
            self._take_runner_lock()
        self.queue.clean(self.last_tidy)

    def _take_runner_lock(self) -> None:
        """The runner lock tells --queue-flush that a daemon runs on DIR,
        and goes with the wake-up FIFO.  A second daemon on the same DIR
        runs without them (the per-mail locks keep the two apart) and takes
        them over when the first is gone.  Both are checked files of DIR's
        owner; one that is not is reported once and left alone."""
        import fcntl

        directory, owner = self.queue.directory, self.queue.owner
        try:
            if self.lock_fd < 0:
                self.lock_fd = open_checked(os.path.join(directory, RUNNER_LOCK),
                                            os.O_RDWR | os.O_CREAT, stat.S_IFREG, owner,
                                            label=RUNNER_LOCK)
            try:
                fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                if not self.sharing:
                    log.error("queue %s is served by another runner as well; sharing it", directory)
                self.sharing = True
                return
            fifo = make_fifo(directory)
            reader = open_checked(fifo, os.O_RDONLY, stat.S_IFIFO, owner, label=fifo)
            try:  # our own writer keeps the FIFO from reading as "end of file" forever
                self._fifo_writer = open_checked(fifo, os.O_WRONLY, stat.S_IFIFO, owner,
                                                 label=fifo)
            except BaseException:
                os.close(reader)
                raise
            self.fifo = reader
        except (OSError, UnsafeFile) as exc:
            if not self.unsafe_reported:
                log.error("queue %s: no wake-ups: %s", directory,
                          getattr(exc, "strerror", None) or exc)
            self.unsafe_reported = True
            return
        try:  # for a person; nobody signals this pid
            os.ftruncate(self.lock_fd, 0)
            os.pwrite(self.lock_fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the lock is what counts
        if self.sharing:
            log.info("queue %s: runner %d takes over the wake-ups", directory, os.getpid())

    def _handle_signals(self) -> bool:
        """True when the runner must stop (SIGTERM, or the master is gone)."""
        stop = os.getppid() != self.master_pid
        while self.flagged:
            signum = self.flagged.pop(0)
            if signum == signal.SIGTERM:
                stop = True
            elif signum == signal.SIGHUP:
                from msmtpd.base import log_targets

                log_targets.reopen()
            elif signum == signal.SIGUSR1:
                self._flush_all("SIGUSR1")
        return stop

    def _flush_all(self, why: str) -> None:
        """SIGUSR1 or --queue-flush: every queued mail is tried now."""
        self._scan()
        # A mail being delivered right now gets one more attempt after
        # this one: its current one may have started before the request.
        self.forced = set(self.schedule)
        log.info("queue: trying all %d queued mails now (%s)", len(self.forced), why)

    def _scan(self) -> None:
        """Learn new mails from the directory and forget removed ones."""
        now = time.time()
        self.last_scan = now
        ids = self.queue.ids()
        known = self.schedule
        self.schedule = {}
        for mail_id in ids:
            if mail_id in known:
                self.schedule[mail_id] = known[mail_id]
                continue
            try:
                self.schedule[mail_id] = self.queue.read_envelope(mail_id).next_try
            except FileNotFoundError:
                continue  # delivered or moved meanwhile
            except UnsafeFile as exc:
                self.attempts.report_refused(mail_id, exc)
            except (OSError, ValueError) as exc:
                self.attempts.report_unreadable(mail_id, exc)

    def _dispatch(self) -> None:
        now = time.time()
        if now - self.last_tidy >= SCAN_SECONDS:
            self._tidy()
        if now - self.last_scan >= SCAN_SECONDS or not self.last_scan:
            self._scan()
        self._note_results()
        for mail_id in sorted(self.schedule, key=self.schedule.__getitem__):
            if self.attempts.full:
                return
            forced = mail_id in self.forced
            if mail_id in self.attempts.running or (self.schedule[mail_id] > now and not forced):
                continue
            self.forced.discard(mail_id)
            self.schedule[mail_id] = now + SCAN_SECONDS  # until the attempt says better
            self.attempts.start(mail_id, forced)

    def _note_results(self) -> None:
        results = self.attempts.results
        while results:
            mail_id, verdict, next_try = results.popleft()
            if verdict in (DELIVERED, FAILED, REFUSED):  # REFUSED: looked at by the next scan
                self.schedule.pop(mail_id, None)
            elif verdict == DEFERRED:
                if next_try is not None and mail_id in self.schedule:
                    self.schedule[mail_id] = next_try
            else:  # BUSY: another process has it, or it was not due after all
                envelope = self.queue.envelope(mail_id)
                if envelope is None:
                    self.schedule.pop(mail_id, None)
                else:
                    self.schedule[mail_id] = max(envelope.next_try, time.time() + BUSY_RETRY_SECONDS)

    def _stop(self) -> int:
        """Start nothing new; running deliveries get the grace time, then
        their commands are killed (each attempt records a 451)."""
        if self.attempts.running:
            log.info("queue runner stopping: %d deliveries running", len(self.attempts.running))
        if not self.attempts.wait_all(time.monotonic() + self.grace):
            self.attempts.stopper.fire("msmtpd is stopping and the grace time ran out")
            self.attempts.wait_all(time.monotonic() + KILL_MARGIN_SECONDS)
        return EXIT_OK


def _drain(fd: int) -> bytes:
    """What is waiting in a non-blocking pipe (or FIFO), read to the end."""
    data = b""
    try:
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    except (BlockingIOError, InterruptedError):
        pass
    return data


def run_runner(queue_dir: str, command: PipeCommand, timeout: float, lifetime: float,
               workers: int, grace: float, user: Optional[str], master_pid: int) -> None:
    """The forked runner's whole life; never returns."""
    code = EXIT_FAILED
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # or the command's exit status is lost
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the master, which stops us
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        from msmtpd.system.proctitle import set_title  # imported while we may still read everything

        set_title(f"queue runner {queue_dir}")
        queue = Queue(queue_dir)
        os.close(queue.open_directory())  # learns DIR's owner: whom to deliver as
        assert queue.owner is not None
        from msmtpd.delivery.queue_directory import delivery_user

        user = delivery_user(user, queue.owner)
        if user is not None:
            from msmtpd.delivery.queue_envelope import QUEUE_LATE_MODULES
            from msmtpd.system import privileges

            privileges.drop(user, QUEUE_LATE_MODULES)
        attempts = Attempts(queue, command, timeout, lifetime, workers)
        code = Runner(attempts, master_pid, grace).serve()
    except BaseException as exc:
        try:
            log.error("queue runner failed: %s", exc)
        finally:
            os._exit(EXIT_FAILED)
    os._exit(code)
