"""Rows 1 to 3 (small mails one or a hundred per session, large mails),
with row 5 (start to accepting) and row 6 (memory) measured around them,
against one started daemon a round."""

from __future__ import annotations

import multiprocessing.pool
import time
from typing import Callable, Dict, List, Optional, Tuple

from benchkit.bench.cpu import CPU_METRIC, SETTLE_SECONDS, Counter, CpuMeter
from benchkit.bench.memory import PeakPss, pss_kb
from benchkit.bench.report import Samples
from benchkit.bench.smtp_client import message, run_clients
from benchkit.bench.target import Target

Load = Callable[[multiprocessing.pool.Pool, Target], Dict[str, float]]


def run_load(pool: multiprocessing.pool.Pool, target: Target, concurrency: int, sessions: int,
             mails: int, body: bytes) -> Dict[str, float]:
    """One of loads 1 to 3: throughput, latency per mail and the CPU time
    per mail of the whole server tree (see CpuMeter), read before the
    clock starts and, once the tree has settled, after it stops."""
    assert target.meter is not None
    cpu_before = target.meter.settled()[0]
    results, elapsed = run_clients(pool, target.port, concurrency, sessions, mails, body, None)
    cpu_after, settled = target.meter.settled()
    if not settled:
        print(f"note: the {target.name} server's processes still came and went {SETTLE_SECONDS:g} s after "
              "a load; its CPU figure may miss some of what they used")
    latencies = sorted(x for r, _, _ in results for x in r)
    count = len(latencies)
    return {
        "mails/s": count / elapsed,
        "MB/s": count * len(body) / elapsed / 1e6,
        "p50 ms": latencies[count // 2] * 1000,
        "p99 ms": latencies[min(count - 1, int(count * 0.99))] * 1000,
        CPU_METRIC: (cpu_after - cpu_before) / count * 1000,
    }


def daemon_loads(quick: bool) -> List[Tuple[str, Load]]:
    """Loads 1 to 3, run against a started daemon."""
    scale = 0.02 if quick else 1.0
    return [
        ("1 small mails, 1/session, 16 at once",
         lambda pool, t: run_load(pool, t, 16, int(1600 * scale) or 16, 1, message(1000))),
        ("2 small mails, 100/session, 16 at once",
         lambda pool, t: run_load(pool, t, 16, 16, max(1, int(100 * scale)), message(1000))),
        ("3 large mails (20 MB), 4 at once",
         lambda pool, t: run_load(pool, t, 4, int(8 * scale) or 4, 1,
                                  message(int(20_000_000 * (0.05 if quick else 1))))),
    ]


def run_daemon(pool: multiprocessing.pool.Pool, target: Target, loads: List[Tuple[str, Load]],
               samples: Samples, counter: Optional[Counter]) -> None:
    """One round against one daemon: rows 5, 1 (with row 6), 2 and 3,
    with the CPU time of the tree counted in a cgroup under ``counter``
    (from /proc if None)."""
    startup = target.start()
    try:
        time.sleep(0.3)
        samples.setdefault(("5 start to accepting", target.name), []).append({"ms": startup * 1000})
        assert target.process is not None
        idle = pss_kb(target.process.pid)
        target.meter = CpuMeter(target.process.pid, target.name, counter)
        for name, load in loads:
            if name.startswith("1"):
                with PeakPss(target.process.pid) as peak:
                    result = load(pool, target)
                samples.setdefault(("6 memory PSS", target.name), []).append(
                    {"idle MB": idle / 1024, "load-1 MB": peak.kb / 1024})
            else:
                result = load(pool, target)
            samples.setdefault((name, target.name), []).append(result)
    finally:
        target.stop()
        if target.meter is not None:
            target.meter.close()
            target.meter = None
