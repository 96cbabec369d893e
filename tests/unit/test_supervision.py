"""The master's supervision rules, in-process: the back-off after deaths at
start, renewal after SIGHUP, surplus workers leaving, the boot-error halt,
the record table, and the signal inbox.  No process is forked; time comes
from a clock the test moves.  tests/test_daemon.py and tests/test_faults.py
hold the same rules on real process trees."""

from __future__ import annotations

import os
import select
import signal
from types import SimpleNamespace
from typing import Any, List

import pytest

from msmtpd.base.exit_codes import EXIT_NOT_RUNNING
from msmtpd.server import pool as pool_module
from msmtpd.server.child_table import (
    BOOT_FAILED,
    BOOT_GRACE_SECONDS,
    ENDED,
    RETIRED,
    RUNNER,
    RUNNER_GRACE_SECONDS,
    SURPLUS_IDLE_SECONDS,
    WORKER,
    Child,
    ChildTable,
    SurplusTimer,
    parse_reports,
    worker_ending,
)
from msmtpd.server.pool import Halt, WorkerPool
from msmtpd.server.worker import BUSY, IDLE
from msmtpd.system.signal_inbox import MAX_PENDING, SignalInbox
from msmtpd.system.supervision import MAX_RESPAWN_DELAY, Backoff, exit_text, respawn_delay


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def exit_status(code: int) -> int:
    """The wait status of a child that called exit(code)."""
    return code << 8


def booted_worker(pid: int, slot: int, started: float = 0.0) -> Child:
    child = Child(pid, WORKER, started, slot)
    child.booted = True
    return child


# -- the back-off ------------------------------------------------------------

def test_respawn_delay_doubles_up_to_its_limit() -> None:
    assert [respawn_delay(deaths) for deaths in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.8]
    assert respawn_delay(50) == MAX_RESPAWN_DELAY


def test_young_deaths_hold_the_next_start_back_and_an_old_one_resets_it() -> None:
    clock = Clock()
    backoff = Backoff(clock)
    assert backoff.may_start()
    backoff.ended(young=True)
    assert not backoff.may_start()
    clock.now += 0.1
    assert backoff.may_start()
    backoff.ended(young=True)
    clock.now += 0.15
    assert not backoff.may_start()  # the second wait is 0.2 s
    clock.now += 0.1
    assert backoff.may_start()
    backoff.ended(young=False)
    assert backoff.deaths == 0
    backoff.ended(young=True)
    assert backoff.next_start == pytest.approx(clock.now + 0.1)


def test_exit_text_names_the_status_or_the_signal() -> None:
    assert exit_text(0) == "exit status 0"
    assert exit_text(2) == "exit status 2"
    assert exit_text(-signal.SIGKILL) == "signal 9"


# -- which death is young, which ending halts -----------------------------------

def test_a_worker_is_young_until_booted_and_for_a_grace_time_after() -> None:
    worker = Child(10, WORKER, started=0.0, slot=0)
    assert worker.died_young(0, now=100.0)  # never reported ready
    worker.booted = True
    assert worker.died_young(1, now=BOOT_GRACE_SECONDS / 2)
    assert not worker.died_young(0, now=BOOT_GRACE_SECONDS / 2)  # stopped from outside
    assert not worker.died_young(1, now=BOOT_GRACE_SECONDS)


def test_a_runner_is_young_for_its_own_grace_time() -> None:
    runner = Child(11, RUNNER, started=0.0)
    assert runner.died_young(0, now=RUNNER_GRACE_SECONDS - 0.1)
    assert not runner.died_young(1, now=RUNNER_GRACE_SECONDS)


def test_a_boot_error_halts_unless_nothing_else_counts() -> None:
    worker = booted_worker(12, 0)
    assert worker_ending(worker, EXIT_NOT_RUNNING) == BOOT_FAILED
    assert worker_ending(worker, 0) == ENDED
    assert worker_ending(worker, -signal.SIGKILL) == ENDED
    worker.retiring = True  # renewed after SIGHUP, or a surplus
    assert worker_ending(worker, 0) == RETIRED
    assert worker_ending(worker, 1) == ENDED  # a crash is a crash
    assert worker_ending(worker, EXIT_NOT_RUNNING) == BOOT_FAILED


# -- the record table -----------------------------------------------------------

def test_one_record_per_child_in_one_table() -> None:
    table = ChildTable()
    assert not table and table.runner() is None
    table.add(Child(20, WORKER, 0.0, slot=0))
    table.add(Child(21, WORKER, 0.0, slot=2))
    table.add(Child(22, RUNNER, 0.0))
    assert table and 22 in table and 99 not in table
    assert [child.pid for child in table.workers()] == [20, 21]
    runner = table.runner()
    assert runner is not None and runner.pid == 22
    assert table.free_slot(4) == 1
    table.mark_booted(21)
    table.mark_booted(99)  # a report from a child already reaped
    assert table.booted_workers() == 1
    assert table.pop(99) is None  # an adopted orphan
    popped = table.pop(20)
    assert popped is not None and popped.slot == 0
    assert table.free_slot(4) == 0


def test_idle_workers_are_booted_not_leaving_and_idle_oldest_first() -> None:
    table = ChildTable()
    for pid, slot in ((30, 0), (31, 1), (32, 2), (33, 3)):
        table.add(booted_worker(pid, slot))
    table.add(Child(34, WORKER, 0.0, slot=4))  # not booted yet
    scoreboard = [IDLE, BUSY, IDLE, IDLE, IDLE]
    leaving = table.by_pid[33]
    leaving.retiring = True
    idle = table.idle_workers(lambda slot: scoreboard[slot] == IDLE)
    assert [child.pid for child in idle] == [30, 32]


def test_status_reports_split_on_newlines_and_keep_the_rest() -> None:
    reports, rest = parse_reports(b"ready 5\nerror 6 no such user: x\nbusy 7\nrea")
    assert reports == [("ready", "5", ""), ("error", "6", "no such user: x"), ("busy", "7", "")]
    assert rest == b"rea"


# -- surplus workers --------------------------------------------------------------

def test_surplus_workers_leave_after_a_quiet_while() -> None:
    clock = Clock()
    surplus = SurplusTimer(clock)
    assert surplus.due(idle=2, spare=2) == 0
    assert surplus.due(idle=5, spare=2) == 0  # the surplus is first seen
    clock.now += SURPLUS_IDLE_SECONDS - 0.5
    assert surplus.due(idle=5, spare=2) == 0
    clock.now += 0.5
    assert surplus.due(idle=5, spare=2) == 3
    assert surplus.since is None  # the next surplus waits its own while


def test_a_busy_moment_restarts_the_surplus_wait() -> None:
    clock = Clock()
    surplus = SurplusTimer(clock)
    surplus.due(idle=4, spare=1)
    clock.now += SURPLUS_IDLE_SECONDS - 1
    assert surplus.due(idle=1, spare=1) == 0
    clock.now += 1
    assert surplus.due(idle=4, spare=1) == 0


# -- the pool, without forking ---------------------------------------------------

@pytest.fixture()
def pool(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A WorkerPool over a stub service; the signals it would send are recorded."""
    sent: List[tuple[int, int]] = []
    monkeypatch.setattr(pool_module, "kill", lambda pid, signum: sent.append((pid, signum)))
    config = SimpleNamespace(max_sessions=4, spare_workers=1, user=None)
    workers = WorkerPool(SimpleNamespace(config=config), [], ChildTable())  # type: ignore[arg-type]
    workers.sent = sent  # type: ignore[attr-defined]
    yield workers
    for fd in (workers.status_r, workers.status_w):
        os.close(fd)


def test_a_worker_that_cannot_start_halts_the_master(pool: Any) -> None:
    pool.children.add(Child(40, WORKER, 0.0, slot=0))
    os.write(pool.status_w, b"ready 40\n")
    pool.read_status()
    assert pool.children.booted_workers() == 1
    os.write(pool.status_w, b"error 41 cannot read the certificate\n")
    with pytest.raises(Halt, match="cannot read the certificate") as halt:
        pool.read_status()
    assert halt.value.code == EXIT_NOT_RUNNING
    with pytest.raises(Halt, match="worker 42 could not start"):
        pool.ended(Child(42, WORKER, 0.0, slot=1), exit_status(EXIT_NOT_RUNNING), stopping=False)


def test_renewed_workers_leave_quietly_and_crashes_back_off(pool: Any) -> None:
    clock = Clock()
    pool.backoff = Backoff(clock)
    for pid, slot in ((50, 0), (51, 1)):
        pool.children.add(booted_worker(pid, slot, started=clock.now - 60))
    pool.renew()  # after a SIGHUP that changed the settings
    assert pool.sent == [(50, signal.SIGUSR2), (51, signal.SIGUSR2)]
    first = pool.children.pop(50)
    assert pool.ended(first, exit_status(0), stopping=False) is False
    assert pool.backoff.may_start()
    young = Child(52, WORKER, clock.now, slot=0)  # died before it reported ready
    assert pool.ended(young, exit_status(1), stopping=False) is True
    assert not pool.backoff.may_start()
    assert pool.ended(Child(53, WORKER, clock.now, slot=2), exit_status(1), stopping=True) is False


def test_the_pool_lets_surplus_idle_workers_go(pool: Any) -> None:
    clock = Clock()
    pool.surplus = SurplusTimer(clock)
    for pid, slot in ((60, 0), (61, 1), (62, 2)):
        pool.children.add(booted_worker(pid, slot))
    pool.scoreboard[1] = BUSY
    assert pool.wanted() == 2  # the busy one and a spare
    pool.let_surplus_go()
    clock.now += SURPLUS_IDLE_SECONDS
    pool.let_surplus_go()
    assert pool.sent == [(60, signal.SIGUSR2)]
    assert pool.children.by_pid[60].retiring


# -- the signal inbox --------------------------------------------------------------

class Owner:
    inbox: SignalInbox

    def __init__(self) -> None:
        self.handled: List[str] = []

    def handle_usr1(self) -> None:
        self.handled.append("usr1")

    def handle_usr2(self) -> None:
        self.handled.append("usr2")


@pytest.fixture()
def inbox_owner() -> Any:
    """An inbox on SIGUSR1 and SIGUSR2 of this process, undone afterwards."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGUSR1, signal.SIGUSR2)}
    owner = Owner()
    owner.inbox = SignalInbox(owner, (signal.SIGUSR1, signal.SIGUSR2))
    previous_wakeup = signal.set_wakeup_fd(owner.inbox.wake_w)
    yield owner
    signal.set_wakeup_fd(-1 if previous_wakeup == owner.inbox.wake_w else previous_wakeup)
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    for fd in owner.inbox.fds():
        os.close(fd)


def test_handlers_only_record_and_the_loop_dispatches_by_name(inbox_owner: Any) -> None:
    inbox = inbox_owner.inbox
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert inbox_owner.handled == []
    assert select.select([inbox.wake_fd], [], [], 1.0)[0] == [inbox.wake_fd]
    inbox.drain()
    assert select.select([inbox.wake_fd], [], [], 0)[0] == []
    assert inbox.dispatch(at_most=1) == 1
    assert inbox_owner.handled == ["usr2"]
    assert inbox.dispatch() == 1
    assert inbox_owner.handled == ["usr2", "usr1"]


def test_the_inbox_is_bounded_but_never_loses_a_new_kind(inbox_owner: Any) -> None:
    inbox = inbox_owner.inbox
    for _ in range(MAX_PENDING * 3):
        inbox._record(signal.SIGUSR1, None)
    inbox._record(signal.SIGUSR2, None)
    assert len(inbox.pending) == MAX_PENDING + 1
    assert inbox.pending[-1] == signal.SIGUSR2
