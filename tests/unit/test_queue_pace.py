"""--queue-rate's rule and its file, on given times: at most N starts in
any PERIOD (a sliding window), the pace remembered in DIR across a restart,
a torn or foreign file read safely, a clock set back not stopping the queue,
and what --queue-list learns from the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from msmtpd.base.safe_files import UnsafeFile
from msmtpd.delivery.queue_pace import RATE_FILE, Pace, PaceFile, parse, waiting_for_the_rate


def test_at_most_n_starts_in_any_window() -> None:
    pace = Pace(5, 2.0)
    now, starts = 1000.0, []
    while now < 1020.0:
        if pace.free(now):
            pace.record(now)
            starts.append(now)
        now += 0.01
    for first in starts:
        assert sum(1 for t in starts if first <= t < first + 2.0) <= 5
    assert len(starts) >= 5 * 10  # and the pace is kept, not only bounded


def test_next_start_is_when_the_oldest_start_leaves_the_window() -> None:
    pace = Pace(2, 10.0, [100.0, 104.0])
    assert pace.free(105.0) == 0
    assert pace.next_start(105.0) == 110.0
    assert pace.free(110.0) == 1 and pace.next_start(110.0) == 110.0


def test_a_clock_set_back_does_not_stop_the_queue_for_as_long() -> None:
    pace = Pace(1, 60.0, [5000.0])
    assert pace.next_start(1000.0) == pytest.approx(1060.0)


def test_parse_skips_torn_and_foreign_lines() -> None:
    rate, starts = parse("msmtpd-queue-rate 5 2.0\n1.5\nnan\ninf\ngarbage\n2.5\n3.")
    assert rate == (5, 2.0) and starts == [1.5, 2.5, 3.0]
    assert parse("something else\n1\n") == (None, [1.0])


def test_the_pace_survives_a_restart_and_the_file_stays_bounded(tmp_path: Path) -> None:
    owner = os.getuid()
    first = PaceFile(str(tmp_path), owner, 3, 10.0, now=100.0)
    for t in (100.0, 101.0, 102.0):
        first.record(t)
    second = PaceFile(str(tmp_path), owner, 3, 10.0, now=105.0)  # a restart
    assert second.pace.free(105.0) == 0 and second.pace.next_start(105.0) == 110.0
    for n in range(200):
        second.record(200.0 + n * 10)
    assert len((tmp_path / RATE_FILE).read_text().splitlines()) <= 2 * 3 + 16 + 1
    third = PaceFile(str(tmp_path), owner, 3, 10.0, now=2195.0)
    assert third.pace.free(2195.0) == 2


def test_list_sees_the_rate_the_runner_wrote(tmp_path: Path) -> None:
    owner = os.getuid()
    assert not waiting_for_the_rate(str(tmp_path), owner, None, 100.0)  # no file: no rate
    pace = PaceFile(str(tmp_path), owner, 2, 10.0, now=100.0)
    pace.record(100.0)
    assert not waiting_for_the_rate(str(tmp_path), owner, None, 101.0)
    pace.record(101.0)
    assert waiting_for_the_rate(str(tmp_path), owner, None, 102.0)
    assert not waiting_for_the_rate(str(tmp_path), owner, (5, 10.0), 102.0)  # the rate given wins
    assert not waiting_for_the_rate(str(tmp_path), owner, None, 111.0)


def test_a_rate_file_that_is_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("msmtpd-queue-rate 1 10\n")
    (tmp_path / RATE_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeFile):
        PaceFile(str(tmp_path), os.getuid(), 1, 10.0, now=0.0)
    assert not waiting_for_the_rate(str(tmp_path), os.getuid(), None, 0.0)
