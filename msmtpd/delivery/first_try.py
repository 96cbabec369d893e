"""``--queue-first-try=SECONDS``: the session tries a queued mail itself
before it answers, so a client that must know at once learns the truth.

The mail is stored (fsynced) exactly as without the option, its message
locked by the session from before its commit, so the runner never takes it
while the session tries (:meth:`Queue.lock` finds it held and skips it
without counting an attempt).  The command runs through
:mod:`msmtpd.delivery.pipe_command` with the locked message as its input and
SECONDS as its deadline; what to do after it is the runner's own pure
decision (:func:`msmtpd.delivery.queue_decision.decide`):

* delivered: the mail leaves the queue; the client gets the 250 of direct
  delivery;
* refused for good (what would be 554): the mail leaves the queue, nothing
  in ``failed/``; the client gets the 554 of direct delivery with the reason;
* a temporary failure, SECONDS passed (the command's process group killed)
  or the stop's grace time ran out: the attempt is recorded as the first
  deferral, the runner is woken, and the client gets ``250 ... queued as ID``
  with the reason.

A session killed in the middle (SIGKILL) records nothing: its lock dies with
it (and with the command, which holds the message as its input), and the
runner delivers the mail as any other (the at-least-once window of a crash
during delivery, no wider).
"""

from __future__ import annotations

import math
import time
from typing import IO, TYPE_CHECKING, Any, Optional

from msmtpd.base.logger import ERROR, INFO, log
from msmtpd.delivery.pipe_command import Outcome, PipeCommand, deliver, summarise_stderr
from msmtpd.delivery.queue_decision import DEFER, REMOVE, Decision, MailState, decide
from msmtpd.delivery.queue_envelope import QueuedEnvelope
from msmtpd.delivery.queue_store import Queue
from msmtpd.smtp import replies

if TYPE_CHECKING:
    from msmtpd.delivery.pipe_command import Interrupt
    from msmtpd.smtp.replies import Reply

# The mail arrived a moment ago: its first try never outlives --queue-lifetime.
FIRST_TRY_LIFETIME = math.inf

# The three paths a mail takes, as the log names them.
DELIVERED_PATH = "delivered on first try"
REFUSED_PATH = "refused on first try"
QUEUED_PATH = "queued after first try"


class FirstTry:
    """One session's first attempts (the Queuer calls it after each store)."""

    def __init__(self, queue: Queue, command: PipeCommand, seconds: float,
                 interrupt: Optional[Interrupt] = None, who: str = "client",
                 counters: Any = None) -> None:
        self.queue = queue
        self.command = command
        self.seconds = seconds  # the deadline of each try
        self.interrupt = interrupt
        self.who = who
        self.counters = counters  # --metrics: msmtpd.base.metrics.Counters

    def __call__(self, mail_id: str, handle: IO[bytes], envelope: QueuedEnvelope) -> Reply:
        """Try the stored, locked mail once; the reply for the client.  The
        lock is released (``handle`` closed) once the outcome is recorded."""
        self.delivered = False  # this call's mail left the queue delivered (--metrics)
        with handle:
            outcome = deliver(self.command, envelope.sender, envelope.recipients, handle.fileno(),
                              self.seconds, self.interrupt)
            if self.counters is not None:
                self.counters.observe_delivery(outcome.seconds)
            decision = decide(MailState(envelope.attempts, envelope.arrived, envelope.next_try,
                                        envelope.last_error), outcome, time.time(), FIRST_TRY_LIFETIME)
            if decision.action == REMOVE:
                return self._delivered(mail_id, outcome)
            if decision.action != DEFER:
                reply = self._refused(mail_id, envelope, outcome, decision)
                if reply is not None:
                    return reply
            reply = self._deferred(mail_id, envelope, outcome, decision)
        self.queue.wake()  # after the lock is gone: the runner takes it from here
        return reply

    def _delivered(self, mail_id: str, outcome: Outcome) -> Reply:
        try:
            self.queue.remove(mail_id)
        except OSError as exc:  # delivered all the same; the runner may deliver it again
            log.error("queue %s: cannot remove the mail delivered on first try: %s", mail_id,
                      exc.strerror or exc, event="first_try_error", queue_id=mail_id,
                      error=str(exc.strerror or exc))
        log.info("queue %s: %s: %s in %.3f s%s", mail_id, DELIVERED_PATH, outcome.status,
                 outcome.seconds, _stderr(outcome), event="first_try", queue_id=mail_id,
                 result="delivered", status=outcome.status, seconds=round(outcome.seconds, 3))
        self.delivered = True
        return outcome.reply

    def _refused(self, mail_id: str, envelope: QueuedEnvelope, outcome: Outcome,
                 decision: Decision) -> Optional[Reply]:
        """The 554 of direct delivery, once the mail is out of the queue;
        None when it cannot leave it (it then stays for the runner, and
        the client must not hear that it will never be delivered)."""
        try:
            self.queue.remove(mail_id)
        except OSError as exc:
            log.error("queue %s: cannot remove the mail refused on first try: %s", mail_id,
                      exc.strerror or exc, event="first_try_error", queue_id=mail_id,
                      error=str(exc.strerror or exc))
            return None
        log.error("queue %s: %s: mail from <%s>: %s in %.3f s%s; removed, the client is told",
                  mail_id, REFUSED_PATH, envelope.sender, outcome.status, outcome.seconds,
                  _stderr(outcome), event="first_try", queue_id=mail_id, result="refused",
                  sender=envelope.sender, status=outcome.status, seconds=round(outcome.seconds, 3))
        return outcome.reply

    def _deferred(self, mail_id: str, envelope: QueuedEnvelope, outcome: Outcome,
                  decision: Decision) -> Reply:
        """The first deferral, recorded as the runner records one."""
        envelope.attempts, envelope.last_try = decision.attempts, decision.last_try
        envelope.next_try, envelope.last_error = decision.next_try, decision.last_error
        try:
            self.queue.update(mail_id, envelope)
        except OSError as exc:  # the stored envelope stays: the runner tries at once
            log.error("queue %s: cannot record the first try: %s", mail_id, exc.strerror or exc,
                      event="first_try_error", queue_id=mail_id, error=str(exc.strerror or exc))
        log.log(ERROR if outcome.reply.code >= 400 else INFO,
                "queue %s: %s: %s in %.3f s%s; next try in %.1f s", mail_id, QUEUED_PATH,
                outcome.status, outcome.seconds, _stderr(outcome),
                decision.next_try - decision.last_try, event="first_try", queue_id=mail_id,
                result="queued", status=outcome.status, seconds=round(outcome.seconds, 3))
        return replies.QUEUED_AFTER_TRY.format(id=mail_id, why=outcome.status)


def _stderr(outcome: Outcome) -> str:
    detail = summarise_stderr(outcome.stderr)
    return f"; stderr: {detail}" if detail else ""
