"""One attempt at one queued mail, shared by the daemon's queue runner and
``--queue-flush``: the lock, the checks, the command, the log and the
files; what to do after it is :mod:`msmtpd.delivery.queue_decision`.

Each attempt takes the mail's lock (the message file, flocked), checks the
message against the size and SHA-256 its envelope recorded, and runs the
command through :mod:`msmtpd.delivery.pipe_command` exactly as direct delivery does
(same argv, ``%F``, exit-status mapping, ``--command-timeout``), with the
locked message file as the command's standard input, so the lock also
lives as long as the command holds it.  Exit 0 removes the mail; a
temporary failure (451) is retried after 1 minute, then 2, 4 ... up to an
hour; a permanent one (554), a mail older than ``--queue-lifetime``, or a
damaged message moves to ``failed/``.  An attempt whose outcome cannot be
recorded (a full disk) backs off the same way, with one log line each
time.  A file that is no file to trust (a symbolic link, a FIFO, someone
else's) is reported once and never read, delivered or removed.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, NamedTuple, Optional

from msmtpd.base.logger import ERROR, INFO, log
from msmtpd.base.safe_files import UnsafeFile, owner_name
from msmtpd.delivery.pipe_command import (
    Outcome,
    PipeCommand,
    deliver,
    mail_result,
    summarise_recipients,
    summarise_stderr,
)
from msmtpd.delivery.queue_decision import DEFER, REMOVE, Decision, MailState, decide, unrecorded_retry
from msmtpd.delivery.queue_envelope import QueuedEnvelope
from msmtpd.delivery.queue_store import Queue
from msmtpd.smtp.replies import reply_text
from msmtpd.smtp.session_parts import recipient_fields

DELIVERED, DEFERRED, FAILED, BUSY = "delivered", "deferred", "failed", "busy"
REFUSED = "refused"  # a file not to trust: looked at again at the next scan only


class AttemptResult(NamedTuple):
    """What an attempt's thread hands to the runner: the verdict, and
    when a DEFERRED mail is due again."""

    mail_id: str
    verdict: str  # DELIVERED, DEFERRED, FAILED, BUSY or REFUSED
    next_try: Optional[float] = None


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
    waits for it).  Each thread hands one :class:`AttemptResult` to the
    runner, through ``results``."""

    def __init__(self, queue: Queue, command: PipeCommand, timeout: float, lifetime: float,
                 workers: int, counters: Any = None) -> None:
        self.queue = queue
        self.counters = counters  # --metrics: msmtpd.base.metrics.Counters
        self.command = command
        self.timeout = timeout
        self.lifetime = lifetime
        self.workers = workers
        self.stopper = Stopper()
        self.running: Dict[str, threading.Thread] = {}
        self.results: Deque[AttemptResult] = deque()  # appended by threads, taken by the runner
        # Attempts whose command ran but whose outcome could not be recorded
        # (the envelope's counter could not grow): they count all the same.
        self.lost: Dict[str, int] = {}
        # Attempts in a row that failed before their command ran (a broken disk).
        self.broken: Dict[str, int] = {}
        self.done_r, self._done_w = os.pipe()
        os.set_blocking(self.done_r, False)
        self.reported: set[str] = set()  # damaged envelopes and refused files, reported once

    def report_unreadable(self, mail_id: str, exc: Exception) -> None:
        """A damaged envelope stays for a person to look at; say so once."""
        if mail_id not in self.reported:
            self.reported.add(mail_id)
            why = getattr(exc, "strerror", None) or exc
            log.error("queue %s: cannot read its envelope (%s); left in the queue", mail_id, why,
                      event="queue_unreadable", queue_id=mail_id, error=str(why))

    def report_refused(self, mail_id: str, why: object) -> AttemptResult:
        """A file that is no file to trust is never touched; say so once."""
        if mail_id not in self.reported:
            self.reported.add(mail_id)
            log.error("queue %s: refused: %s; never read, delivered or removed", mail_id, why,
                      event="queue_refused_file", queue_id=mail_id, error=str(why))
        return AttemptResult(mail_id, REFUSED)

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
            try:
                result = self.attempt(mail_id, force)
            except Exception as exc:  # a broken disk must not end the runner, nor spin it
                result = self._cannot_record(mail_id, "attempt it", exc, None)
            self.results.append(result)
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

    def attempt(self, mail_id: str, force: bool = False) -> AttemptResult:
        """One try at one mail; BUSY when another process holds it, it is
        gone, or (without ``force``) it is not due yet; REFUSED when one of
        its files is no file to trust."""
        try:
            handle = self.queue.lock(mail_id)
        except UnsafeFile as exc:
            return self.report_refused(mail_id, exc)
        if handle is None:
            return AttemptResult(mail_id, BUSY)
        with handle:
            envelope = self._due_envelope(mail_id, force)
            if isinstance(envelope, AttemptResult):
                return envelope
            damage = self.queue.damage(mail_id, handle, envelope)
            if damage:
                return self._give_up(mail_id, envelope, f"{damage}; not delivered", ran=False)
            outcome = deliver(self.command, envelope.sender, envelope.recipients, handle.fileno(),
                              self.timeout, self.stopper)
            self._count(outcome)
            return self._record(mail_id, envelope, outcome)

    def _count(self, outcome: Outcome) -> None:
        if self.counters is not None:
            self.counters.observe_delivery(outcome.seconds)
            code = outcome.reply.code
            result = "delivered" if code < 400 else "tempfail" if code < 500 else "permfail"
            self.counters.add("msmtpd_queue_deliveries_total", result)

    def _due_envelope(self, mail_id: str, force: bool) -> QueuedEnvelope | AttemptResult:
        """The locked mail's envelope when it is to be delivered now, else
        why not (BUSY or REFUSED)."""
        try:
            envelope = self.queue.read_envelope(mail_id)
        except FileNotFoundError:
            return AttemptResult(mail_id, BUSY)  # delivered or moved meanwhile
        except UnsafeFile as exc:
            return self.report_refused(mail_id, exc)
        except (OSError, ValueError) as exc:
            self.report_unreadable(mail_id, exc)
            return AttemptResult(mail_id, BUSY)
        if not force and envelope.next_try > time.time():
            return AttemptResult(mail_id, BUSY)
        if os.geteuid() == 0 and self.queue.owner != 0:  # root never delivers as root from it
            return self.report_refused(mail_id, "root does not deliver from a queue owned by "
                                       + owner_name(self.queue.owner or 0))
        return envelope

    def _record(self, mail_id: str, envelope: QueuedEnvelope, outcome: Outcome) -> AttemptResult:
        """Decide, log the attempt and record its outcome in DIR."""
        now = time.time()
        self.broken.pop(mail_id, None)
        decision = decide(MailState(envelope.attempts, envelope.arrived, envelope.next_try,
                                    envelope.last_error, self.lost.get(mail_id, 0)),
                          outcome, now, self.lifetime)
        envelope.attempts, envelope.last_try = decision.attempts, decision.last_try
        envelope.next_try, envelope.last_error = decision.next_try, decision.last_error
        _log_attempt(mail_id, envelope, outcome, decision)
        if decision.action == REMOVE:
            return self._remove(mail_id, envelope, now)
        if decision.gives_up:
            return self._give_up(mail_id, envelope, decision.reason)
        try:
            self.queue.update(mail_id, envelope)
        except OSError as exc:  # the old envelope stays; the back-off grows all the same
            return self._cannot_record(mail_id, "record the attempt", exc, envelope.attempts)
        self.lost.pop(mail_id, None)
        return AttemptResult(mail_id, DEFERRED, envelope.next_try)

    def _remove(self, mail_id: str, envelope: QueuedEnvelope, now: float) -> AttemptResult:
        try:
            self.queue.remove(mail_id)
        except OSError as exc:
            return self._cannot_record(mail_id, "remove the delivered mail", exc,
                                       envelope.attempts)
        self.lost.pop(mail_id, None)
        log.info("queue %s: delivered after %d attempt%s, %.0f s in the queue", mail_id,
                 envelope.attempts, "" if envelope.attempts == 1 else "s",
                 now - envelope.arrived, event="queue_delivered", queue_id=mail_id,
                 attempts=envelope.attempts, queued_seconds=round(now - envelope.arrived, 3))
        return AttemptResult(mail_id, DELIVERED)

    def _give_up(self, mail_id: str, envelope: QueuedEnvelope, reason: str,
                 ran: bool = True) -> AttemptResult:
        try:
            self.queue.fail(mail_id, envelope, reason)
        except OSError as exc:
            return self._cannot_record(mail_id, f"move it to failed/ ({reason})", exc,
                                       envelope.attempts if ran else None)
        self.lost.pop(mail_id, None)
        self.broken.pop(mail_id, None)
        log.error("queue %s: moved to failed/ after %d attempt%s: mail from <%s> to %s: %s", mail_id,
                  envelope.attempts, "" if envelope.attempts == 1 else "s", envelope.sender,
                  summarise_recipients(envelope.recipients), reason, event="queue_failed",
                  queue_id=mail_id, attempts=envelope.attempts, sender=envelope.sender,
                  **recipient_fields(envelope.recipients), reason=reason)
        return AttemptResult(mail_id, FAILED)

    def _cannot_record(self, mail_id: str, what: str, exc: Exception,
                       attempts: Optional[int]) -> AttemptResult:
        """The outcome is lost (a full disk, a broken one): back off as
        after a temporary failure, doubling, with one line.  ``attempts``:
        those of the mail, this one included, when its command ran (it
        then counts, ``lost``); None when it did not (``broken``)."""
        if attempts is None:
            attempts = self.broken[mail_id] = self.broken.get(mail_id, 0) + 1
        else:
            self.lost[mail_id] = self.lost.get(mail_id, 0) + 1
        delay = unrecorded_retry(attempts)
        next_try = time.time() + delay
        why = getattr(exc, "strerror", None) or exc
        log.error("queue %s: cannot %s: %s; next try in %.1f s", mail_id, what, why, delay,
                  event="queue_unrecorded", queue_id=mail_id, action=what, error=str(why),
                  retry_seconds=round(delay, 1))
        return AttemptResult(mail_id, DEFERRED, next_try)


def _log_attempt(mail_id: str, envelope: QueuedEnvelope, outcome: Outcome,
                 decision: Decision) -> None:
    """One line per attempt, with the command's status."""
    detail = summarise_stderr(outcome.stderr)
    then = (f"; next try in {decision.next_try - decision.last_try:.1f} s"
            if decision.action == DEFER else "")
    log.log(INFO if outcome.delivered else ERROR,
            "queue %s: attempt %d: mail from <%s> to %s: %s, %s in %.3f s%s%s", mail_id,
            envelope.attempts, envelope.sender, summarise_recipients(envelope.recipients),
            "delivered" if outcome.delivered else f"{outcome.reply.code} not delivered",
            outcome.status, outcome.seconds, f"; stderr: {detail}" if detail else "", then,
            event="queue_attempt", queue_id=mail_id, attempt=envelope.attempts, peer=envelope.client,
            sender=envelope.sender, **recipient_fields(envelope.recipients), size=envelope.size,
            result=mail_result(outcome), reply=reply_text(outcome.reply), status=outcome.status,
            seconds=round(outcome.seconds, 3), stderr=detail or None,
            retry_seconds=(round(decision.next_try - decision.last_try, 1)
                           if decision.action == DEFER else None))
