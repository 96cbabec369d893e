"""--kill-workers: SIGKILL random workers of the started msmtpd while the
load runs, any worker or only one running its delivery command."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import List

from benchkit.processes import children_of, stat_fields


def workers_of(master: int) -> List[int]:
    """The master's workers.  Not every child is one: the master adopts the
    delivery commands of dead workers (as their subreaper), and those lead a
    process group of their own, while workers stay in the master's."""
    try:
        group = os.getpgid(master)
    except OSError:
        return []
    workers = []
    for pid in children_of(master):
        try:
            if os.getpgid(pid) == group:
                workers.append(pid)
        except OSError:
            continue
    return workers


def is_delivering(worker: int) -> bool:
    """A worker with a child process is running the delivery command."""
    return bool(children_of(worker))


def is_alive(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[:1] != ["Z"]


@dataclass
class KillStats:
    kills: int = 0
    while_delivering: int = 0
    missed: int = 0


def killer(master: int, rate: float, target: str, rng: random.Random, stop: threading.Event,
           stats: KillStats) -> None:
    """SIGKILL a random worker of ``master`` ``rate`` times per second.
    ``target`` narrows the choice: any worker, or only one that is running
    its delivery command at that moment."""
    interval = 1.0 / rate
    due = time.monotonic() + interval
    while not stop.wait(max(0.0, due - time.monotonic())):
        due += interval
        victim = None
        delivering = False
        while victim is None and not stop.is_set():
            workers = [pid for pid in workers_of(master) if is_alive(pid)]
            if target == "delivering":
                workers = [pid for pid in workers if is_delivering(pid)]
            if workers:
                victim = rng.choice(workers)
                delivering = is_delivering(victim)
            elif time.monotonic() < due - interval / 2:
                time.sleep(0.005)
            else:
                break
        if victim is None:
            stats.missed += 1
            continue
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            stats.missed += 1
            continue
        stats.kills += 1
        stats.while_delivering += delivering
