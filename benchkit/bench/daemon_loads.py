"""Loads 1 to 3 (small mails one or a hundred per session, large mails),
with row 5 (start to accepting) and row 6 (memory) measured around load 1,
against one started daemon a round; and load 2 with the compiled sink."""

from __future__ import annotations

import multiprocessing.pool
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

from benchkit.bench.command_floor import LARGE
from benchkit.bench.cpu import CPU_METRIC, SETTLE_SECONDS, Counter, CpuMeter
from benchkit.bench.memory import PeakPss, pss_kb
from benchkit.bench.report import Samples
from benchkit.bench.smtp_client import message, run_clients
from benchkit.bench.target import Target


@dataclass(frozen=True)
class Load:
    """One of loads 1 to 3: ``sessions`` sessions of ``mails`` mails of
    ``body`` each, ``concurrency`` at once.  ``key`` names it in the tables
    ("2s": load 2 with the compiled sink)."""

    key: str
    title: str
    concurrency: int
    sessions: int
    mails: int
    body: bytes

    @property
    def rate(self) -> str:
        """The throughput figure of its table: MB/s for large mails."""
        return "MB/s" if len(self.body) >= LARGE else "mails/s"


def run_load(pool: multiprocessing.pool.Pool, target: Target, load: Load) -> Dict[str, float]:
    """One load: throughput, latency per mail and the CPU time per mail of
    the whole server tree (see CpuMeter), read before the clock starts and,
    once the tree has settled, after it stops."""
    assert target.meter is not None
    cpu_before = target.meter.settled()[0]
    results, elapsed = run_clients(pool, target.port, load.concurrency, load.sessions, load.mails, load.body,
                                   None)
    cpu_after, settled = target.meter.settled()
    if not settled:
        print(f"note: the {target.name} server's processes still came and went {SETTLE_SECONDS:g} s after "
              "a load; its CPU figure may miss some of what they used")
    latencies = sorted(x for r, _, _ in results for x in r)
    count = len(latencies)
    return {
        "mails/s": count / elapsed,
        "MB/s": count * len(load.body) / elapsed / 1e6,
        "p50 ms": latencies[count // 2] * 1000,
        "p99 ms": latencies[min(count - 1, int(count * 0.99))] * 1000,
        CPU_METRIC: (cpu_after - cpu_before) / count * 1000,
    }


def daemon_loads(quick: bool) -> List[Load]:
    """Loads 1 to 3, run against a started daemon."""
    scale = 0.02 if quick else 1.0
    small = message(1000)
    return [
        Load("1", "1 KB mails, one per session, 16 at once", 16, int(1600 * scale) or 16, 1, small),
        Load("2", "1 KB mails, 100 per session, 16 at once", 16, 16, max(1, int(100 * scale)), small),
        Load("3", "20 MB mails, 4 sessions at once", 4, int(8 * scale) or 4, 1,
             message(int(20_000_000 * (0.05 if quick else 1)))),
    ]


def sink_load(loads: List[Load]) -> Load:
    """Load 2 again, with the compiled sink as the command: the row that
    keeps the figures taken before issue 22 comparable."""
    two = next(load for load in loads if load.key == "2")
    return replace(two, key="2s", title=two.title + ", the compiled sink as the command")


def run_daemon(pool: multiprocessing.pool.Pool, target: Target, loads: List[Load], samples: Samples,
               load_samples: Samples, counter: Optional[Counter]) -> None:
    """One round of ``loads`` against one daemon, into ``load_samples``,
    with the CPU time of the tree counted in a cgroup under ``counter``
    (from /proc if None); with load 1, rows 5 and 6 into ``samples``."""
    startup = target.start()
    try:
        time.sleep(0.3)
        assert target.process is not None
        idle = pss_kb(target.process.pid)
        target.meter = CpuMeter(target.process.pid, target.name, counter)
        for load in loads:
            if load.key == "1":
                samples.setdefault(("5 start to accepting", target.name), []).append({"ms": startup * 1000})
                with PeakPss(target.process.pid) as peak:
                    result = run_load(pool, target, load)
                samples.setdefault(("6 memory PSS", target.name), []).append(
                    {"idle MB": idle / 1024, "load-1 MB": peak.kb / 1024})
            else:
                result = run_load(pool, target, load)
            load_samples.setdefault((load.key, target.name), []).append(result)
    finally:
        target.stop()
        if target.meter is not None:
            target.meter.close()
            target.meter = None
