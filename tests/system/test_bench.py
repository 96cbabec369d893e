"""Smoke test of the benchmark: it runs at a tiny size and prints every
load for both servers.  No timing is asserted; speed is for scripts/bench.py.
The CPU counting of loads 1 to 3 is checked for what it must include: a
grandchild that burnt CPU and was reaped before the second reading."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import List

import pytest

from benchkit.bench.cpu import CpuMeter, usable_counter
from tests.helpers import ROOT, tool, unavailable

NUMBER = r"\s+\d+\.\d"
# ours, C and the ratio (a dash if C read 0.00, possible from /proc at this size), then each one's range
CPU_ROW = (r"CPU ms/mail +(\d+\.\d\d) +(\d+\.\d\d) +(\d+\.\d\d|-)  rounds: ours \d+\.\d\d-\d+\.\d\d, "
           r"C \d+\.\d\d-\d+\.\d\d(, ratio \d+\.\d\d-\d+\.\d\d)?$")


def run_bench(*args: str) -> List[str]:
    """The lines of a --quick run that start with a row number."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "CPU ms/mail: user+system CPU of the whole server tree" in result.stdout, result.stdout
    return [line for line in result.stdout.splitlines() if re.match(r"\d ", line)]


def check_cpu_rows(rows: List[str]) -> None:
    """One CPU ms/mail line for each of loads 1 to 3, with ours, C, the ratio and the rounds' spread."""
    cpu = [row for row in rows if " CPU ms/mail " in row]
    assert [row[:2] for row in cpu] == ["1 ", "2 ", "3 "], rows
    for row in cpu:
        match = re.search(CPU_ROW, row)
        assert match, row
        assert (match.group(3) == "-") == (float(match.group(2)) == 0) == (match.group(4) is None), row


def test_benchmark_runs_side_by_side() -> None:
    tool("/usr/bin/msmtpd")  # the C msmtpd from msmtp-mta, for the side-by-side columns
    tool("openssl")  # row 8 makes its certificate with it
    rows = run_bench()
    loads = {row[:1] for row in rows}
    assert loads == {"1", "2", "3", "4", "5", "6", "7", "8"}
    check_cpu_rows(rows)
    for row in rows:
        if not row.startswith(("7 ", "8 ")) and " CPU ms/mail " not in row:
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


def test_cpu_from_proc_alone() -> None:
    """--proc-cpu: the /proc way, which is also what runs without a cgroup."""
    tool("/usr/bin/msmtpd")
    check_cpu_rows(run_bench("--only", "daemon", "--proc-cpu"))


# A tree like a server's: the root waits for a line, then forks a child that
# forks a grandchild burning BURN seconds of CPU (by its own clock), waits for
# it and exits; the root reaps the child, says "done" and stays.
BURN = 0.3
TREE = f"""
import os, sys, time
sys.stdin.readline()
child = os.fork()
if child == 0:
    grandchild = os.fork()
    if grandchild == 0:
        started = time.process_time()
        while time.process_time() - started < {BURN}:
            pass
        os._exit(0)
    os.waitpid(grandchild, 0)
    os._exit(0)
os.waitpid(child, 0)
print("done", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("way", ["proc", "cgroup"])
def test_cpu_of_a_reaped_grandchild_is_counted(way: str) -> None:
    """The CPU of a process that has come and gone between the two readings
    is in them, both ways.  A lower bound only: nothing here is timed."""
    counter = usable_counter(way == "proc")
    if way == "cgroup" and counter is None:
        unavailable("no cgroup can be made here")
    root = subprocess.Popen([sys.executable, "-c", TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    meter = None
    try:
        assert root.stdin is not None and root.stdout is not None
        meter = CpuMeter(root.pid, "test", counter)
        before, running = meter.seconds()
        assert running == {root.pid}
        root.stdin.write("go\n")
        root.stdin.flush()
        assert root.stdout.readline() == "done\n"
        after, running = meter.seconds()
        assert running == {root.pid}  # the child and the grandchild have been reaped
        assert after - before >= BURN * 0.9, (before, after)
    finally:
        root.kill()
        root.communicate()
        if meter is not None:
            meter.close()
