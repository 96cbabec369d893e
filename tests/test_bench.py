"""Smoke test of the benchmark: it runs at a tiny size and prints every
load for both servers.  No timing is asserted; speed is for scripts/bench.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import tool

ROOT = Path(__file__).resolve().parent.parent
NUMBER = r"\s+\d+\.\d"


def test_benchmark_runs_side_by_side() -> None:
    tool("/usr/bin/msmtpd")  # the C msmtpd from msmtp-mta, for the side-by-side columns
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if re.match(r"\d ", line)]
    loads = {row[:1] for row in rows}
    assert loads == {"1", "2", "3", "4", "5", "6", "7"}
    for row in rows:
        if not row.startswith("7 "):
            assert re.search(NUMBER + NUMBER + r"\s+\d+\.\d\d", row), row  # ours, C and the ratio
    assert any("python -c" not in row and re.search(r"\d+\.\d\s*$", row) for row in rows)
    start = [row for row in rows if row.startswith("7 start to listening")]
    assert [row.split()[4] for row in start] == ["median", "min", "max"], start
    # ours, C, the ratio ours/C, the floor, then ours/floor beside its aim
    assert re.search(NUMBER + NUMBER + r"\s+\d+\.\d\d" + NUMBER + r"\s+ours/floor \d+\.\d\d \(aim <= 1\.5\)$",
                     start[0]), start[0]
