"""The queue runner's decision after an attempt, without a process, a file
or a clock: deliver, defer with back-off, fail, expire, and the back-off
when an outcome cannot be recorded."""

from __future__ import annotations

import pytest

from msmtpd.delivery.pipe_command import Outcome
from msmtpd.delivery.queue_decision import (
    DEFER,
    EXPIRE,
    FAIL,
    MAX_RETRY_SECONDS,
    REMOVE,
    MailState,
    decide,
    retry_delay,
    unrecorded_retry,
)
from msmtpd.smtp import replies

ARRIVED = 1_800_000_000.0
LIFETIME = 5 * 86400.0
NOW = ARRIVED + 600.0


def outcome(code: int, status: str, stderr: str = "") -> Outcome:
    reply = {250: replies.DELIVERED,
             451: replies.DELIVERY_TEMPFAIL.format(why=status),
             554: replies.DELIVERY_FAILED.format(why=status)}[code]
    return Outcome(reply, status, stderr, 0.5)


def mail(attempts: int = 0, unrecorded: int = 0, arrived: float = ARRIVED) -> MailState:
    return MailState(attempts, arrived, next_try=arrived + 60.0, last_error="earlier",
                     unrecorded=unrecorded)


def doubling(attempts: int) -> float:
    return 10.0 * attempts


def test_exit_0_removes_the_mail_and_keeps_the_last_error() -> None:
    decision = decide(mail(attempts=2), outcome(250, "exit status 0"), NOW, LIFETIME, doubling)
    assert decision.action == REMOVE and not decision.gives_up
    assert (decision.attempts, decision.last_try, decision.last_error) == (3, NOW, "earlier")
    assert decision.next_try == ARRIVED + 60.0  # unchanged: nothing is written


def test_a_temporary_failure_is_deferred_by_the_back_off_rule() -> None:
    decision = decide(mail(attempts=1), outcome(451, "command exit status 75 (EX_TEMPFAIL)",
                                                "no route\nsecond\nthird\nfourth"),
                      NOW, LIFETIME, doubling)
    assert decision.action == DEFER and not decision.gives_up
    assert decision.attempts == 2
    assert decision.next_try == NOW + 20.0
    assert decision.last_error == ("command exit status 75 (EX_TEMPFAIL); no route | second | third")
    assert decision.reason == ""


def test_a_permanent_failure_moves_to_failed_whatever_the_age() -> None:
    decision = decide(mail(), outcome(554, "command exit status 1"), NOW, LIFETIME, doubling)
    assert decision.action == FAIL and decision.gives_up
    assert decision.reason == "permanent failure: command exit status 1"
    assert decision.last_error == "command exit status 1"
    assert decision.next_try == ARRIVED + 60.0  # failed/ keeps the old one


@pytest.mark.parametrize("age, action", [(LIFETIME - 0.001, DEFER), (LIFETIME, EXPIRE),
                                         (LIFETIME + 1, EXPIRE)])
def test_a_temporary_failure_past_the_lifetime_expires(age: float, action: str) -> None:
    now = ARRIVED + age
    decision = decide(mail(attempts=7), outcome(451, "signal 9"), now, LIFETIME, doubling)
    assert decision.action == action
    if action == EXPIRE:
        assert decision.gives_up
        assert decision.reason == ("still undelivered after the queue lifetime of 432000 s:"
                                   " signal 9")
        assert decision.next_try == ARRIVED + 60.0


def test_a_permanent_failure_past_the_lifetime_is_a_failure_not_an_expiry() -> None:
    decision = decide(mail(), outcome(554, "command exit status 1"), ARRIVED + LIFETIME * 2,
                      LIFETIME, doubling)
    assert decision.action == FAIL


def test_attempts_whose_outcome_was_lost_count_all_the_same() -> None:
    decision = decide(mail(attempts=1, unrecorded=2), outcome(451, "signal 9"), NOW, LIFETIME,
                      doubling)
    assert decision.attempts == 4
    assert decision.next_try == NOW + 40.0


def test_the_decision_reads_nothing_but_its_arguments() -> None:
    """The same inputs, the same decision: no clock, no file, no state."""
    inputs = (mail(attempts=3), outcome(451, "signal 15"), NOW, LIFETIME)
    assert decide(*inputs) == decide(*inputs)
    assert decide(*inputs).next_try == NOW + retry_delay(4)


def test_the_back_off_doubles_up_to_an_hour() -> None:
    assert [retry_delay(n, 60.0) for n in (1, 2, 3, 4, 5, 6, 7, 8)] == [
        60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0]
    assert retry_delay(10_000, 60.0) == MAX_RETRY_SECONDS
    assert retry_delay(0, 60.0) == 60.0


def test_an_outcome_that_cannot_be_recorded_backs_off_the_same_way() -> None:
    assert unrecorded_retry(1, doubling) == 10.0
    assert unrecorded_retry(3, doubling) == 30.0
    assert unrecorded_retry(3) == retry_delay(3)
