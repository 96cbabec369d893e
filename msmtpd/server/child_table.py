"""The master's record of its children: one :class:`Child` per process
(a worker or the queue runner) in one :class:`ChildTable`, and the pool's
rules that read it (which death is young, which ending is a boot error or
a renewal, when surplus workers leave).  No process is touched here: the
rules take the time from an injected clock, so they are tested in-process.
"""

from __future__ import annotations

import os
import time

from msmtpd.base.exit_codes import EXIT_NOT_RUNNING

TYPE_CHECKING = False  # typing at run time costs every process some 1.6 MB and 3 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Optional, Tuple

WORKER, RUNNER = "worker", "queue runner"
# A worker that dies sooner than this after its start counts as a boot failure.
BOOT_GRACE_SECONDS = 1.0
# A queue runner that dies sooner than this after its start died young.
RUNNER_GRACE_SECONDS = 5.0
# Idle workers beyond --spare-workers leave after this long (like Apache's
# MaxSpareServers, but after a minute rather than at once).  The variable is
# for the test suite.
SURPLUS_IDLE_SECONDS = float(os.environ.get("MSMTPD_SURPLUS_IDLE_SECONDS", "60"))

# How a worker's ending is taken (see worker_ending).
RETIRED, BOOT_FAILED, ENDED = "retired", "boot failed", "ended"


class Child:
    """One child process.  ``slot``: a worker's byte in the scoreboard;
    ``booted``: the worker reported ready; ``retiring``: it was told to
    leave after its session (a renewal after SIGHUP, or a surplus)."""

    __slots__ = ("pid", "kind", "started", "slot", "booted", "retiring")

    def __init__(self, pid: int, kind: str, started: float, slot: int = -1) -> None:
        self.pid = pid
        self.kind = kind
        self.started = started
        self.slot = slot
        self.booted = False
        self.retiring = False

    def died_young(self, code: int, now: float) -> bool:
        """Whether its replacement waits (supervision.Backoff)."""
        if self.kind == RUNNER:
            return now - self.started < RUNNER_GRACE_SECONDS
        return not self.booted or now - self.started < BOOT_GRACE_SECONDS and code > 0


def worker_ending(child: Child, code: int) -> str:
    """RETIRED: it left as told, quietly replaced; BOOT_FAILED: it could not
    start, the master halts; ENDED: it is logged and replaced."""
    if code == 0 and child.retiring:
        return RETIRED
    if code == EXIT_NOT_RUNNING:
        return BOOT_FAILED
    return ENDED


class ChildTable:
    """Every child the master started and has not reaped yet, by pid."""

    def __init__(self) -> None:
        self.by_pid: Dict[int, Child] = {}

    def add(self, child: Child) -> None:
        self.by_pid[child.pid] = child

    def pop(self, pid: int) -> Optional[Child]:
        """The reaped child's record; None for an adopted orphan."""
        return self.by_pid.pop(pid, None)

    def __contains__(self, pid: object) -> bool:
        return pid in self.by_pid

    def __bool__(self) -> bool:
        return bool(self.by_pid)

    def workers(self) -> List[Child]:
        return [child for child in self.by_pid.values() if child.kind == WORKER]

    def runner(self) -> Optional[Child]:
        return next((child for child in self.by_pid.values() if child.kind == RUNNER), None)

    def booted_workers(self) -> int:
        return sum(1 for child in self.workers() if child.booted)

    def mark_booted(self, pid: int) -> None:
        child = self.by_pid.get(pid)
        if child is not None:
            child.booted = True

    def free_slot(self, capacity: int) -> int:
        """The lowest scoreboard slot no worker holds."""
        return min(set(range(capacity)) - {child.slot for child in self.workers()})

    def idle_workers(self, is_idle: Callable[[int], bool]) -> List[Child]:
        """Booted workers not leaving whose slot ``is_idle``, oldest first."""
        return [child for child in self.workers()
                if is_idle(child.slot) and child.booted and not child.retiring]


class SurplusTimer:
    """Idle workers beyond the spares leave once there have been too many
    for SURPLUS_IDLE_SECONDS in a row."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.since: Optional[float] = None

    def due(self, idle: int, spare: int) -> int:
        """How many of the ``idle`` workers should leave now."""
        surplus = idle - spare
        if surplus <= 0:
            self.since = None
            return 0
        now = self.clock()
        if self.since is None:
            self.since = now
        elif now - self.since >= SURPLUS_IDLE_SECONDS:
            self.since = None
            return surplus
        return 0


def parse_reports(buffer: bytes) -> Tuple[List[Tuple[str, str, str]], bytes]:
    """Split the status pipe's bytes into ``(kind, pid text, why)`` reports
    (``ready PID``, ``busy PID``, ``error PID why``) and the unfinished rest."""
    reports = []
    while b"\n" in buffer:
        line, buffer = buffer.split(b"\n", 1)
        kind, _, rest = line.decode("utf-8", "replace").partition(" ")
        pid_text, _, why = rest.partition(" ")
        reports.append((kind, pid_text, why))
    return reports, buffer

