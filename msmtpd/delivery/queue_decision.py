"""What the queue does with a mail after an attempt, as pure functions.

The runner's threads lock, deliver, log and write files; what they decide
is here, free of time, files and threads, so that every rule can be tested
without a process: exit 0 removes the mail; a temporary failure (451) is
retried after 1 minute, then 2, 4 ... up to an hour; a permanent one (554)
or a mail older than ``--queue-lifetime`` moves to ``failed/``; an attempt
whose outcome cannot be recorded (a full disk) backs off the same way.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

from msmtpd.delivery.pipe_command import Outcome, summarise_stderr


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
# A doubling beyond this many attempts changes nothing (and 2.0 ** n overflows).
MAX_DOUBLINGS = 64

# The actions: the mail leaves the queue, waits for its next try, or moves
# to failed/ (refused for good, or past --queue-lifetime).
REMOVE, DEFER, FAIL, EXPIRE = "remove", "defer", "fail", "expire"

BackOff = Callable[[int], float]


def retry_delay(attempts: int, first: float = FIRST_RETRY_SECONDS) -> float:
    """1, 2, 4 ... minutes after the first, second, third attempt, at most an
    hour (a shortened first delay shortens the longest in proportion)."""
    longest = MAX_RETRY_SECONDS * first / 60.0
    return float(min(first * 2.0 ** min(max(attempts - 1, 0), MAX_DOUBLINGS), longest))


class MailState(NamedTuple):
    """What the decision reads of a queued mail before the attempt."""

    attempts: int  # as its envelope records them
    arrived: float
    next_try: float
    last_error: str
    unrecorded: int = 0  # attempts whose command ran but whose outcome could not be written


class Decision(NamedTuple):
    """The action, and the mail's envelope as it is to be recorded."""

    action: str  # REMOVE, DEFER, FAIL or EXPIRE
    attempts: int
    last_try: float
    next_try: float
    last_error: str
    reason: str = ""  # why it moves to failed/

    @property
    def gives_up(self) -> bool:
        return self.action in (FAIL, EXPIRE)


def decide(mail: MailState, outcome: Outcome, now: float, lifetime: float,
           back_off: BackOff = retry_delay) -> Decision:
    """The action after the command ran: every attempt counts, those whose
    outcome was lost included; a failure older than ``lifetime`` expires."""
    attempts = mail.attempts + 1 + mail.unrecorded
    if outcome.delivered:
        return Decision(REMOVE, attempts, now, mail.next_try, mail.last_error)
    detail = summarise_stderr(outcome.stderr)
    last_error = outcome.status + (f"; {detail}" if detail else "")
    if outcome.reply.code >= 500:
        return Decision(FAIL, attempts, now, mail.next_try, last_error,
                        f"permanent failure: {outcome.status}")
    if now - mail.arrived >= lifetime:
        return Decision(EXPIRE, attempts, now, mail.next_try, last_error,
                        f"still undelivered after the queue lifetime of {lifetime:g} s:"
                        f" {outcome.status}")
    return Decision(DEFER, attempts, now, now + back_off(attempts), last_error)


def unrecorded_retry(attempts: int, back_off: BackOff = retry_delay) -> float:
    """The wait before the next try after an attempt whose outcome could
    not be recorded: the back-off of ``attempts`` (the mail's, this one
    included, when its command ran; those in a row that failed before it
    could run, when not), as after a temporary failure."""
    return back_off(attempts)
