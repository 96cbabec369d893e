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
    tool("openssl")  # row 8 makes its certificate with it
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if re.match(r"\d ", line)]
    loads = {row[:1] for row in rows}
    assert loads == {"1", "2", "3", "4", "5", "6", "7", "8"}
    for row in rows:
        if not row.startswith(("7 ", "8 ")):
            assert re.search(NUMBER + NUMBER + r"\s+\d+\.\d\d", row), row  # ours, C and the ratio
    assert any("python -c" not in row and re.search(r"\d+\.\d\s*$", row) for row in rows)
    start = [row for row in rows if row.startswith("7 start to listening")]
    assert [row.split()[4] for row in start] == ["median", "min", "max"], start
    # ours, C, the ratio ours/C, the floor, then ours/floor beside its aim
    assert re.search(NUMBER + NUMBER + r"\s+\d+\.\d\d" + NUMBER + r"\s+ours/floor \d+\.\d\d \(aim <= 1\.5\)$",
                     start[0]), start[0]
    # row 8: ours over STARTTLS, the C msmtpd's "n/a", ours in plain text, TLS/plain, then TLS-plain in ms
    tls_rows = [row for row in rows if row.startswith("8 ")]
    assert all(row.startswith("8 STARTTLS, 1 KB, 1/session, 16 at once ") for row in tls_rows), tls_rows
    p50 = [row for row in tls_rows if " p50 ms/sess " in row]
    assert len(p50) == 1, tls_rows
    assert re.search(NUMBER + r"\s+n/a \(no TLS\)" + NUMBER + r"\s+\d+\.\d\d\s+[+-]\d+\.\d\s", p50[0]), p50[0]
    assert any(" sessions/s " in row for row in tls_rows), tls_rows
