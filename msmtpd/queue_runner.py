"""Delivering the queue: the runner process of a daemon, and one attempt at
one mail (shared with ``--queue-flush``).

Each attempt takes the mail's lock (the message file, flocked), runs the
command through :mod:`msmtpd.delivery` exactly as direct delivery does
(same argv, ``%F``, exit-status mapping, ``--command-timeout``), with the
locked message file as the command's standard input, so the lock also
lives as long as the command holds it.  Exit 0 removes the mail; a
temporary failure (451) is retried after 1 minute, then 2, 4 ... up to an
hour; a permanent one (554), or a mail older than ``--queue-lifetime``,
moves to ``failed/``.  The runner wakes on a byte in the queue's FIFO (a
session stored a mail), on SIGUSR1 (try everything now), and when the
next retry is due.  SIGTERM: start nothing new, let running deliveries
finish within the grace time (``--timeout``), then kill them.  A forked
runner always leaves through ``os._exit``.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from typing import Dict, List, Optional

from msmtpd.delivery import PipeCommand, deliver, summarise_recipients, summarise_stderr
from msmtpd.log import ERROR, INFO, log
from msmtpd.queue_store import RUNNER_LOCK, Envelope, Queue, make_fifo


# The first retry after a temporary failure, doubling up to the last (like
# Postfix's minimal_backoff_time and maximal_backoff_time).  The variable
# shortens the first delay for the test suite; it is not an option.
def _first_retry(default: float = 60.0) -> float:
    try:
        value = float(os.environ.get("MSMTPD_QUEUE_RETRY_SECONDS", default))
    except ValueError:
        return default
    return value if 0 < value <= default else default


FIRST_RETRY_SECONDS = _first_retry()
MAX_RETRY_SECONDS = 3600.0
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
DELIVERED, DEFERRED, FAILED, BUSY = "delivered", "deferred", "failed", "busy"


def retry_delay(attempts: int, first: float = FIRST_RETRY_SECONDS) -> float:
    """1, 2, 4 ... minutes after the first, second, third attempt, at most an
    hour (a shortened first delay shortens the longest in proportion)."""
    longest = MAX_RETRY_SECONDS * first / 60.0
    return float(min(first * 2.0 ** min(max(attempts - 1, 0), 64), longest))


class Stopper:
    """The running commands' Interrupt: its pipe becomes readable, for good,
    once the stop's grace time ran out."""

    def __init__(self) -> None:
        self.wake_fd, self._wake_w = os.pipe()
        self.reason: Optional[str] = None

    def interrupted(self) -> Optional[str]:
        return self.reason

    def fire(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            os.write(self._wake_w, b"x")


class Attempts:
    """Runs attempts at queued mails, at most ``workers`` at once, each in
    a thread of its own (the command is a child process; the thread only
    waits for it)."""

    def __init__(self, queue: Queue, command: PipeCommand, timeout: float, lifetime: float,
                 workers: int) -> None:
        self.queue = queue
        self.command = command
        self.timeout = timeout
        self.lifetime = lifetime
        self.workers = workers
        self.stopper = Stopper()
        self.running: Dict[str, threading.Thread] = {}
        self.results: Dict[str, str] = {}
        self.next_tries: Dict[str, float] = {}  # of deferred mails, also when the disk is full
        self.done_r, self._done_w = os.pipe()
        os.set_blocking(self.done_r, False)
        self.unreadable: set[str] = set()  # damaged envelopes, reported once

    def report_unreadable(self, mail_id: str, exc: Exception) -> None:
        """A damaged envelope stays for a person to look at; say so once."""
        if mail_id not in self.unreadable:
            self.unreadable.add(mail_id)
            log.error("queue %s: cannot read its envelope (%s); left in the queue",
                      mail_id, getattr(exc, "strerror", None) or exc)

    @property
    def full(self) -> bool:
        self.collect()
        return len(self.running) >= self.workers

    def start(self, mail_id: str, force: bool) -> None:
        thread = threading.Thread(target=self._run, args=(mail_id, force), daemon=True,
                                  name=f"deliver {mail_id}")
        self.running[mail_id] = thread
        thread.start()

    def _run(self, mail_id: str, force: bool) -> None:
        try:
            self.results[mail_id] = self.attempt(mail_id, force)
        except Exception as exc:  # a broken disk must not end the runner
            log.error("queue %s: attempt failed: %s", mail_id, exc)
            self.results[mail_id] = BUSY
        finally:
            try:
                os.write(self._done_w, b"d")
            except OSError:
                pass

    def collect(self) -> None:
        """Forget the threads that are done."""
        try:
            while os.read(self.done_r, 512):
                pass
        except BlockingIOError:
            pass
        for mail_id, thread in list(self.running.items()):
            if not thread.is_alive():
                thread.join()
                del self.running[mail_id]

    def wait_all(self, deadline: float) -> bool:
        while self.running and time.monotonic() < deadline:
            select.select([self.done_r], [], [], min(1.0, max(deadline - time.monotonic(), 0)))
            self.collect()
        return not self.running

    def attempt(self, mail_id: str, force: bool = False) -> str:
        """One try at one mail; BUSY when another process holds it, it is
        gone, or (without ``force``) it is not due yet."""
        handle = self.queue.lock(mail_id)
        if handle is None:
            return BUSY
        with handle:
            try:
                envelope = self.queue.read_envelope(mail_id)
            except FileNotFoundError:
                return BUSY  # delivered or moved meanwhile
            except (OSError, ValueError) as exc:
                self.report_unreadable(mail_id, exc)
                return BUSY
            now = time.time()
            if not force and envelope.next_try > now:
                return BUSY
            outcome = deliver(self.command, envelope.sender, envelope.recipients, handle.fileno(),
                              self.timeout, self.stopper)
            now = time.time()
            envelope.attempts += 1
            envelope.last_try = now
            code = outcome.reply.code
            detail = summarise_stderr(outcome.stderr)
            if not outcome.delivered:
                envelope.last_error = outcome.status + (f"; {detail}" if detail else "")
            give_up = ""
            if code >= 500:
                give_up = f"permanent failure: {outcome.status}"
            elif not outcome.delivered and now - envelope.arrived >= self.lifetime:
                give_up = (f"still undelivered after the queue lifetime of {self.lifetime:g} s:"
                           f" {outcome.status}")
            else:
                envelope.next_try = now + retry_delay(envelope.attempts)
            then = ("" if outcome.delivered or give_up
                    else f"; next try in {envelope.next_try - now:.1f} s")
            # One line per attempt, with the command's status.
            log.log(INFO if outcome.delivered else ERROR,
                    "queue %s: attempt %d: mail from <%s> to %s: %s, %s in %.3f s%s%s", mail_id,
                    envelope.attempts, envelope.sender, summarise_recipients(envelope.recipients),
                    "delivered" if outcome.delivered else f"{code} not delivered", outcome.status,
                    outcome.seconds, f"; stderr: {detail}" if detail else "", then)
            if outcome.delivered:
                self.queue.remove(mail_id)
                log.info("queue %s: delivered after %d attempt%s, %.0f s in the queue", mail_id,
                         envelope.attempts, "" if envelope.attempts == 1 else "s",
                         now - envelope.arrived)
                return DELIVERED
            if give_up:
                return self._give_up(mail_id, envelope, give_up)
            self.next_tries[mail_id] = envelope.next_try
            try:
                self.queue.update(mail_id, envelope)
            except OSError as exc:  # the old envelope stays; the back-off holds all the same
                log.error("queue %s: cannot record the attempt: %s", mail_id, exc.strerror or exc)
            return DEFERRED

    def _give_up(self, mail_id: str, envelope: Envelope, reason: str) -> str:
        self.queue.fail(mail_id, envelope, reason)
        log.error("queue %s: moved to failed/ after %d attempt%s: mail from <%s> to %s: %s", mail_id,
                  envelope.attempts, "" if envelope.attempts == 1 else "s", envelope.sender,
                  summarise_recipients(envelope.recipients), reason)
        return FAILED


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
                _drain(fd)
                if fd == self.fifo:
                    self.last_scan = 0.0  # a new mail: look now

    def _tidy(self) -> None:
        """Now and then: take the runner lock if we run without it, and
        remove what crashes left in DIR."""
        self.last_tidy = time.time()
        if self.fifo < 0:
            self._take_runner_lock()
        self.queue.clean(self.last_tidy)

    def _take_runner_lock(self) -> None:
        """The runner lock tells --queue-flush which process to ask, and
        goes with the wake-up FIFO.  A second daemon on the same DIR runs
        without them (the per-mail locks keep the two apart) and takes them
        over when the first is gone."""
        import fcntl

        if self.lock_fd < 0:
            self.lock_fd = os.open(os.path.join(self.queue.directory, RUNNER_LOCK),
                                   os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if not self.sharing:
                log.error("queue %s is served by another runner as well; sharing it",
                          self.queue.directory)
            self.sharing = True
            return
        os.ftruncate(self.lock_fd, 0)
        os.write(self.lock_fd, f"{os.getpid()}\n".encode())
        fifo = make_fifo(self.queue.directory)
        self.fifo = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        # Our own writer keeps the FIFO from reading as "end of file" forever.
        self._fifo_writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if self.sharing:
            log.info("queue %s: runner %d takes over the wake-ups", self.queue.directory,
                     os.getpid())

    def _handle_signals(self) -> bool:
        """True when the runner must stop (SIGTERM, or the master is gone)."""
        stop = os.getppid() != self.master_pid
        while self.flagged:
            signum = self.flagged.pop(0)
            if signum == signal.SIGTERM:
                stop = True
            elif signum == signal.SIGHUP:
                from msmtpd import logs

                logs.reopen()
            elif signum == signal.SIGUSR1:
                self._scan()
                # A mail being delivered right now gets one more attempt after
                # this one: its current one may have started before the request.
                self.forced = set(self.schedule)
                log.info("queue: trying all %d queued mails now", len(self.forced))
        return stop

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
        for mail_id, result in list(self.attempts.results.items()):
            del self.attempts.results[mail_id]
            if result in (DELIVERED, FAILED):
                self.schedule.pop(mail_id, None)
            elif result == DEFERRED:
                next_try = self.attempts.next_tries.pop(mail_id, None)
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


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def run_runner(queue_dir: str, command: PipeCommand, timeout: float, lifetime: float,
               workers: int, grace: float, user: Optional[str], master_pid: int) -> None:
    """The forked runner's whole life; never returns."""
    code = EXIT_FAILED
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # or the command's exit status is lost
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the master, which stops us
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        from msmtpd.proctitle import set_title  # imported while we may still read everything

        set_title(f"queue runner {queue_dir}")
        if user is not None:
            from msmtpd import privileges
            from msmtpd.queue_store import QUEUE_LATE_MODULES

            privileges.drop(user, QUEUE_LATE_MODULES)
        attempts = Attempts(Queue(queue_dir), command, timeout, lifetime, workers)
        code = Runner(attempts, master_pid, grace).serve()
    except BaseException as exc:
        try:
            log.error("queue runner failed: %s", exc)
        finally:
            os._exit(EXIT_FAILED)
    os._exit(code)
