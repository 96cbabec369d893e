"""Smoke test of the benchmark: it runs at a tiny size and prints every
load for both servers.  No timing is asserted; speed is for scripts/bench.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import tool

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_runs_side_by_side() -> None:
    tool("msmtpd")  # the C msmtpd from msmtp-mta, for the side-by-side columns
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if re.match(r"\d ", line)]
    loads = {row[:1] for row in rows}
    assert loads == {"1", "2", "3", "4", "5", "6"}
    number = r"\s+\d+\.\d"
    for row in rows:
        assert re.search(number + number + r"\s+\d+\.\d\d", row), row  # ours, C and the ratio
    assert any("python -c" not in row and re.search(r"\d+\.\d\s*$", row) for row in rows)
