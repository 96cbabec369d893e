"""Row 4: one-mail sessions under --inetd, one process each, beside the
floor (this Python spawned to do nothing)."""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import Dict, List, Sequence, Tuple

from benchkit.bench.report import Samples
from benchkit.bench.smtp_client import message


def inetd_rate(argv: Sequence[str], count: int) -> Dict[str, float]:
    conversation = (b"EHLO bench\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
                    + message(1000) + b"QUIT\r\n")
    times = []
    for _ in range(count):
        started = time.perf_counter()
        result = subprocess.run(argv, input=conversation, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
        if argv[-1] != "pass" and b"\r\n250 " not in result.stdout.split(b"354 ", 1)[-1]:
            raise RuntimeError(f"inetd session failed: {result.stdout[-200:]!r}")
    times.sort()
    return {"sessions/s": 1 / statistics.median(times), "p50 ms": statistics.median(times) * 1000,
            "p99 ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1000}


def run_inetd(inetd_targets: List[Tuple[str, List[str]]], count: int, samples: Samples) -> None:
    """One round of row 4."""
    for name, inetd_argv in inetd_targets:
        samples.setdefault(("4 --inetd sessions", name), []).append(inetd_rate(inetd_argv, count))
