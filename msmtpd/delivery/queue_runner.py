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
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from msmtpd.base.exit_codes import EXIT_FAILURE, EXIT_OK
from msmtpd.base.logger import log
from msmtpd.base.safe_files import UnsafeFile, open_checked, queue_file
from msmtpd.delivery.pipe_command import PipeCommand
from msmtpd.delivery.queue_attempts import DEFERRED, DELIVERED, FAILED, REFUSED, Attempts
from msmtpd.delivery.queue_decision import (  # noqa: F401 (the back-off, as before the split)
    FIRST_RETRY_SECONDS,
    MAX_RETRY_SECONDS,
    retry_delay,
)
from msmtpd.delivery.queue_directory import RUNNER_LOCK, WAKE_FLUSH, make_fifo
from msmtpd.delivery.queue_store import Queue
from msmtpd.system.processes import PARENT_CHECK_SECONDS, master_gone
from msmtpd.system.signal_inbox import SignalInbox
from msmtpd.system.supervision import STOP_MARGIN_SECONDS

if TYPE_CHECKING:
    from msmtpd.delivery.queue_pace import PaceFile

# Without any wake-up, look at the directory this often (mails queued by a
# process that could not reach the FIFO, an expired lock).
SCAN_SECONDS = 60.0
# A mail another process holds is looked at again after this long.
BUSY_RETRY_SECONDS = 1.0


class Runner:
    """The daemon's queue runner (a child of the master)."""

    def __init__(self, attempts: Attempts, master_pid: int, grace: float,
                 pace: Optional[PaceFile] = None) -> None:
        self.attempts = attempts
        self.pace = pace  # --queue-rate
        self.queue = attempts.queue
        self.master_pid = master_pid
        self.grace = grace
        self.schedule: Dict[str, float] = {}  # id -> next try (time.time())
        self.forced: set[str] = set()  # SIGUSR1: try these at once, due or not
        self.stop_requested = False
        self.last_scan = 0.0
        self.last_tidy = 0.0
        self.lock_fd = -1
        self.fifo = -1  # the wake-up FIFO, read while we hold the runner lock
        self.sharing = False
        self.unsafe_reported = False

    def serve(self) -> int:
        inbox = SignalInbox(self, (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1))
        inbox.unblock()
        self._tidy()
        queued = len(self.queue.ids())
        log.info("queue runner %d on %s: %d mails queued", os.getpid(), self.queue.directory,
                 queued, event="runner_start", queue=self.queue.directory, queued=queued)
        while True:
            inbox.dispatch()
            if self.stop_requested or master_gone(self.master_pid):
                return self._stop()
            self._dispatch()
            wait = PARENT_CHECK_SECONDS
            if not self.attempts.full and self.schedule:
                now = time.time()
                due = min(self.schedule.values())
                if self.pace is not None:  # a due mail waits for its turn
                    due = max(due, self.pace.pace.next_start(now))
                wait = min(wait, due - now)
            watch = [inbox.wake_fd, self.attempts.done_r] + ([self.fifo] if self.fifo >= 0 else [])
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
                                            os.O_RDWR | os.O_CREAT, queue_file(stat.S_IFREG, owner),
                                            label=RUNNER_LOCK)
            try:
                fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                if not self.sharing:
                    log.error("queue %s is served by another runner as well; sharing it", directory,
                              event="runner_sharing", queue=directory)
                self.sharing = True
                return
            fifo = make_fifo(directory)
            reader = open_checked(fifo, os.O_RDONLY, queue_file(stat.S_IFIFO, owner), label=fifo)
            try:  # our own writer keeps the FIFO from reading as "end of file" forever
                self._fifo_writer = open_checked(fifo, os.O_WRONLY, queue_file(stat.S_IFIFO, owner),
                                                 label=fifo)
            except BaseException:
                os.close(reader)
                raise
            self.fifo = reader
        except OSError as exc:
            if not self.unsafe_reported:
                why = exc if isinstance(exc, UnsafeFile) else exc.strerror or exc
                log.error("queue %s: no wake-ups: %s", directory, why, event="runner_no_wakeups",
                          queue=directory, error=str(why))
            self.unsafe_reported = True
            return
        try:  # for a person; nobody signals this pid
            os.ftruncate(self.lock_fd, 0)
            os.pwrite(self.lock_fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the lock is what counts
        if self.sharing:
            log.info("queue %s: runner %d takes over the wake-ups", directory, os.getpid(),
                     event="runner_takes_over", queue=directory)

    # -- signals, from the inbox (the runner stops on SIGTERM or when its
    # master is gone) --------------------------------------------------------

    def handle_term(self) -> None:
        self.stop_requested = True

    def handle_hup(self) -> None:
        from msmtpd.base import log_targets

        log_targets.reopen()

    def handle_usr1(self) -> None:
        self._flush_all("SIGUSR1")

    def _flush_all(self, why: str) -> None:
        """SIGUSR1 or --queue-flush: every queued mail is tried now."""
        self._scan()
        # A mail being delivered right now gets one more attempt after
        # this one: its current one may have started before the request.
        self.forced = set(self.schedule)
        log.info("queue: trying all %d queued mails now (%s)", len(self.forced), why,
                 event="queue_flush", queued=len(self.forced), reason=why)

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
            if not self._take_turn(now):
                return  # waiting for the rate: neither tried nor aged
            self.forced.discard(mail_id)
            self.schedule[mail_id] = now + SCAN_SECONDS  # until the attempt says better
            self.attempts.start(mail_id, forced)

    def _take_turn(self, now: float) -> bool:
        """--queue-rate: whether a delivery may start now; its start is
        remembered in DIR first.  When DIR cannot take it (a full disk) the
        pace still holds in memory."""
        if self.pace is None:
            return True
        if not self.pace.pace.free(now):
            return False
        try:
            self.pace.record(now)
        except OSError as exc:
            log.error("queue %s: cannot remember the delivery start for --queue-rate: %s",
                      self.queue.directory, exc.strerror or exc, event="queue_rate_unrecorded",
                      queue=self.queue.directory, error=str(exc.strerror or exc))
        return True

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
            log.info("queue runner stopping: %d deliveries running", len(self.attempts.running),
                     event="runner_stop", running=len(self.attempts.running))
        if not self.attempts.wait_all(time.monotonic() + self.grace):
            self.attempts.stopper.fire("msmtpd is stopping and the grace time ran out")
            self.attempts.wait_all(time.monotonic() + STOP_MARGIN_SECONDS)
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
               workers: int, grace: float, user: Optional[str], master_pid: int,
               counters: Any = None, rate: Optional[Tuple[int, float]] = None) -> None:
    """The forked runner's whole life (after processes.fork_child's set-up);
    never returns.  ``counters`` (--metrics): the runner writes their last slot."""
    code = EXIT_FAILURE
    if counters is not None:
        counters.use_slot(counters.slots - 1)
    try:
        queue = Queue(queue_dir)
        os.close(queue.open_directory())  # learns DIR's owner: whom to deliver as
        assert queue.owner is not None
        from msmtpd.delivery.queue_directory import delivery_user

        user = delivery_user(user, queue.owner)
        if user is not None:
            from msmtpd.delivery.queue_envelope import QUEUE_LATE_MODULES
            from msmtpd.system import privileges

            privileges.drop(user, QUEUE_LATE_MODULES)
        attempts = Attempts(queue, command, timeout, lifetime, workers, counters)
        pace = None
        if rate is not None:
            from msmtpd.delivery.queue_pace import PaceFile

            pace = PaceFile(queue.directory, queue.owner, *rate, time.time())
        code = Runner(attempts, master_pid, grace, pace).serve()
    except BaseException as exc:
        try:
            log.error("queue runner failed: %s", exc, event="runner_failed", error=str(exc))
        finally:
            os._exit(EXIT_FAILURE)
    os._exit(code)
