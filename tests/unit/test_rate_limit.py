"""--rate-limit's logic on an injected clock, and the session's use of it
on in-memory streams: N reservations per key per window, places given back
by transactions that end without a mail, the 450 at MAIL FROM with the
time to wait, bounded memory."""

from __future__ import annotations

from typing import Tuple

import pytest

from msmtpd.base.config import ConfigError, parse_rate
from msmtpd.policy import rate_limit
from msmtpd.policy.rate_limit import RateTable, Reservation, describe_period
from msmtpd.smtp import replies
from msmtpd.smtp.session import Settings
from tests.helpers import Clock
from tests.support.session_script import HOST, FakeDeliver, lines, talk, transaction


@pytest.mark.parametrize("text, expected", [("100/1h", (100, 3600.0)), ("30/1m", (30, 60.0)),
                                            ("500/1d", (500, 86400.0)), ("5/2s", (5, 2.0)),
                                            ("1/0.5S", (1, 0.5))])
def test_rates_parse(text: str, expected: Tuple[int, float]) -> None:
    assert parse_rate(text, "--rate-limit") == expected


@pytest.mark.parametrize("text", ["", "5", "5/", "/1h", "0/1h", "-1/1h", "5/1", "5/0s", "5/1w",
                                  "5/xh", "1.5/1h", "99999999/1h", "5/1h/2", "٣/1h"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--rate-limit"):
        parse_rate(text, "--rate-limit")


def test_n_per_window_then_the_time_to_wait() -> None:
    clock = Clock(1000.0)
    table = RateTable(3, 60.0, clock)
    holds = [table.reserve("alice") for _ in range(3)]
    assert all(isinstance(h, Reservation) for h in holds)
    clock.now += 20
    assert table.reserve("alice") == pytest.approx(40.0)
    assert isinstance(table.reserve("bob"), Reservation)  # another key, another count
    clock.now += 40
    assert isinstance(table.reserve("alice"), Reservation)  # a new window


def test_a_transaction_without_a_mail_gives_its_place_back_once() -> None:
    table = RateTable(1, 60.0, Clock())
    hold = table.reserve("alice")
    assert isinstance(hold, Reservation)
    assert isinstance(table.reserve("alice"), float)
    hold.settle(accepted=False)
    hold.settle(accepted=False)  # only the first settling counts
    again = table.reserve("alice")
    assert isinstance(again, Reservation)
    assert isinstance(table.reserve("alice"), float)
    again.settle(accepted=True)
    assert isinstance(table.reserve("alice"), float)


def test_a_place_given_back_after_its_window_ended_leaves_the_new_one_alone() -> None:
    clock = Clock()
    table = RateTable(1, 10.0, clock)
    old = table.reserve("alice")
    assert isinstance(old, Reservation)
    clock.now += 10
    new = table.reserve("alice")
    assert isinstance(new, Reservation)
    old.settle(accepted=False)
    assert isinstance(table.reserve("alice"), float)


def test_memory_is_bounded_and_the_oldest_window_is_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rate_limit, "SLOTS", 4)
    monkeypatch.setattr(rate_limit, "PROBES", 4)
    clock = Clock()
    table = RateTable(1, 3600.0, clock)
    for n in range(4):
        assert isinstance(table.reserve(f"client {n}"), Reservation)
        clock.now += 1
    assert isinstance(table.reserve("client 4"), Reservation)  # evicts client 0, the oldest
    assert isinstance(table.reserve("client 0"), Reservation)  # forgotten: a fresh window
    assert isinstance(table.reserve("client 3"), float)  # the newest are still counted
    assert table.fileno() >= 0


def test_periods_are_described_as_written() -> None:
    assert [describe_period(s) for s in (86400, 3600, 60, 90, 2, 0.5)] == \
        ["1d", "1h", "1m", "90s", "2s", "0.5s"]


def test_the_session_answers_450_at_mail_from_and_counts_only_accepted_mails() -> None:
    settings = Settings(hostname=HOST, rate_limit=RateTable(2, 3600.0))
    deliver = FakeDeliver(replies.DELIVERY_TEMPFAIL.format(why="x"))
    script = lines(
        "EHLO client.test",
        *transaction(),                      # 451: does not count
        "MAIL FROM:<a@example.org>", "RSET",  # abandoned: does not count
        *transaction(), *transaction(),      # two accepted
        "MAIL FROM:<a@example.org>",         # the third: 450
        "QUIT")
    result = talk(script, settings=settings, deliver=deliver)
    codes = result.codes
    assert codes.count(450) == 1 and len(deliver.mails) == 3
    refusal = result.replies[codes.index(450)]
    assert refusal.text.startswith("4.7.1 Rate limit of 2 mails per 1h reached; try again in ")
    assert 3590 <= int(refusal.text.split(" in ")[1].split()[0]) <= 3600
    # another client address has its own count; the same one does not
    assert len(talk(lines("EHLO c", *transaction(), "QUIT"), settings=settings,
                    peer="192.0.2.8").mails) == 1
    assert 450 in talk(lines("EHLO c", "MAIL FROM:<a@example.org>", "QUIT"), settings=settings).codes


@pytest.mark.parametrize("ending", ["QUIT", "", "EHLO again", "RCPT TO:<b@example.org>\r\nDATA\r\n"
                                    "Received: x\r\n" * 51 + "\r\n."])
def test_every_way_a_transaction_ends_without_a_mail_gives_the_place_back(ending: str) -> None:
    settings = Settings(hostname=HOST, rate_limit=RateTable(1, 3600.0))
    talk(lines("EHLO c", "MAIL FROM:<a@example.org>", *([ending] if ending else [])),
         settings=settings)
    result = talk(lines("EHLO c", *transaction(), "QUIT"), settings=settings)
    assert len(result.mails) == 1, result.replies
