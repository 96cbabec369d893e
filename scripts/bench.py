#!/usr/bin/env python3
"""Side-by-side benchmark of this msmtpd and the C msmtpd (Debian's
msmtp-mta, /usr/bin/msmtpd), in one run, on loopback, with the same tiny
delivery command.  Loads alternate between the two servers over several
rounds; the table shows medians and the ratio ours/C.

    python3 scripts/bench.py            # the full run (a few minutes)
    python3 scripts/bench.py --quick    # a tiny run, to check it works

Loads: (1) 1 KB mails, one per session, 16 sessions at once; (2) the same
with 100 mails per session; (3) 20 MB mails, 4 sessions at once; (4)
--inetd sessions, one process each, against `python -c pass`; (5) time
from start to accepting connections; (6) PSS of the whole process tree,
idle and under load 1.  No assertion: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

C_MSMTPD = "/usr/bin/msmtpd"
OURS = str(Path(sys.executable).parent / "msmtpd")
DISCARD_C = r"""
#include <unistd.h>
int main(void) { char buf[65536]; while (read(0, buf, sizeof buf) > 0) {} return 0; }
"""


def build_discard(directory: Path) -> str:
    """The delivery command: reads the whole mail and discards it, ignoring
    its arguments.  Compiled, so that it costs both servers the same."""
    source = directory / "discard.c"
    binary = directory / "discard"
    source.write_text(DISCARD_C)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler and subprocess.run([compiler, "-O2", "-o", str(binary), str(source)]).returncode == 0:
        return str(binary)
    script = directory / "discard.sh"
    script.write_text("#!/bin/sh\nexec cat >/dev/null\n")
    script.chmod(0o755)
    return str(script)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return time.monotonic() - started
        except OSError:
            time.sleep(0.002)
    raise RuntimeError(f"nothing listens on port {port}")


class Target:
    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = 0
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> float:
        """Start the server; returns the seconds until it accepted a connection."""
        self.port = free_port()
        started = time.monotonic()
        self.process = subprocess.Popen([*self.argv, "--interface=127.0.0.1", f"--port={self.port}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


# -- an SMTP client light enough not to be the bottleneck ----------------------------

def _expect(sock: socket.socket, buffer: bytearray) -> bytes:
    """Read one complete (possibly multi-line) reply."""
    while True:
        end = buffer.find(b"\r\n")
        while end >= 0:
            line = bytes(buffer[: end + 2])
            if len(line) >= 4 and line[3:4] == b" ":
                del buffer[: end + 2]
                return line
            del buffer[: end + 2]
            end = buffer.find(b"\r\n")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk


def _session(port: int, mails: int, body: bytes) -> List[float]:
    """One session sending ``mails`` mails; returns each mail's latency."""
    latencies = []
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        buffer = bytearray()
        _expect(sock, buffer)
        sock.sendall(b"EHLO bench\r\n")
        _expect(sock, buffer)
        for _ in range(mails):
            for command in (b"MAIL FROM:<bench@example.org>\r\n", b"RCPT TO:<sink@example.org>\r\n",
                            b"DATA\r\n"):
                sock.sendall(command)
                _expect(sock, buffer)
            sock.sendall(body)
            reply = _expect(sock, buffer)
            if not reply.startswith(b"250"):
                raise RuntimeError(f"mail refused: {reply!r}")
            now = time.perf_counter()
            latencies.append(now - started)
            started = now
        sock.sendall(b"QUIT\r\n")
        _expect(sock, buffer)
    return latencies


def _client(args: Tuple[int, int, int, bytes]) -> List[float]:
    port, sessions, mails, body = args
    latencies: List[float] = []
    for _ in range(sessions):
        latencies.extend(_session(port, mails, body))
    return latencies


def message(size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    head = b"Subject: benchmark\r\n\r\n"
    return head + line * max(1, (size - len(head)) // len(line)) + b".\r\n"


def run_load(pool: multiprocessing.pool.Pool, port: int, concurrency: int, sessions: int,
             mails: int, body: bytes) -> Dict[str, float]:
    per_client = max(1, sessions // concurrency)
    started = time.perf_counter()
    results = pool.map(_client, [(port, per_client, mails, body)] * concurrency)
    elapsed = time.perf_counter() - started
    latencies = sorted(x for r in results for x in r)
    count = len(latencies)
    return {
        "mails/s": count / elapsed,
        "MB/s": count * len(body) / elapsed / 1e6,
        "p50 ms": latencies[count // 2] * 1000,
        "p99 ms": latencies[min(count - 1, int(count * 0.99))] * 1000,
    }


def pss_kb(pid: int) -> int:
    """Proportional set size of ``pid`` and all its descendants.  A child
    caught between fork and exec shares its parent's memory and shows the
    parent's command line: it is skipped, or that memory would count twice."""
    total = 0
    pending = [(pid, b"")]
    while pending:
        current, parent_cmdline = pending.pop()
        try:
            cmdline = Path(f"/proc/{current}/cmdline").read_bytes()
            if cmdline != parent_cmdline:
                for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
            pending.extend((int(c), cmdline) for c in
                           Path(f"/proc/{current}/task/{current}/children").read_text().split())
        except OSError:
            continue
    return total


class PeakPss:
    """Samples the tree's PSS in a thread while a load runs; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.kb = max(self.kb, pss_kb(self.pid))
            self._stop.wait(0.05)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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


# -- the run -----------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--ours", default=OURS, help="this msmtpd's console script")
    parser.add_argument("--c-msmtpd", default=C_MSMTPD)
    options = parser.parse_args(argv)
    rounds = 1 if options.quick else options.rounds
    scale = 0.02 if options.quick else 1.0

    workdir = Path(tempfile.mkdtemp(prefix="msmtpd-bench-"))
    try:
        command = build_discard(workdir)
        targets = [Target("ours", [options.ours, f"--command={command}", "--max-sessions=16"])]
        if os.access(options.c_msmtpd, os.X_OK):
            targets.append(Target("C", [options.c_msmtpd, f"--command={command}"]))
        else:
            print(f"note: {options.c_msmtpd} is not installed (apt-get install msmtp-mta); "
                  "reporting ours alone")
        loads: List[Tuple[str, Callable[[multiprocessing.pool.Pool, Target], Dict[str, float]]]] = [
            ("1 small mails, 1/session, 16 at once",
             lambda pool, t: run_load(pool, t.port, 16, int(1600 * scale) or 16, 1, message(1000))),
            ("2 small mails, 100/session, 16 at once",
             lambda pool, t: run_load(pool, t.port, 16, 16, max(1, int(100 * scale)), message(1000))),
            ("3 large mails (20 MB), 4 at once",
             lambda pool, t: run_load(pool, t.port, 4, int(8 * scale) or 4, 1,
                                      message(int(20_000_000 * (0.05 if options.quick else 1))))),
        ]
        samples: Dict[Tuple[str, str], List[Dict[str, float]]] = {}
        context = multiprocessing.get_context("fork")
        with context.Pool(16) as pool:
            for round_number in range(rounds):
                order = targets if round_number % 2 == 0 else targets[::-1]
                for target in order:
                    startup = target.start()
                    try:
                        time.sleep(0.3)
                        samples.setdefault(("5 start to accepting", target.name), []).append(
                            {"ms": startup * 1000})
                        assert target.process is not None
                        idle = pss_kb(target.process.pid)
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
                inetd_count = 5 if options.quick else 40
                inetd_targets = [("ours", [options.ours, "--inetd", f"--command={command}"])]
                if len(targets) > 1:
                    inetd_targets.append(("C", [options.c_msmtpd, "--inetd", f"--command={command}"]))
                inetd_targets.append(("python -c pass", [sys.executable, "-c", "pass"]))
                for name, inetd_argv in inetd_targets:
                    samples.setdefault(("4 --inetd sessions", name), []).append(
                        inetd_rate(inetd_argv, inetd_count))
        report(samples, rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(samples: Dict[Tuple[str, str], List[Dict[str, float]]], rounds: int) -> None:
    loads = sorted({load for load, _ in samples})
    print(f"\nmedians of {rounds} round(s); ratio = ours / C "
          f"(for ms and MB lower is better, for rates higher is better)")
    print(f"{'load':42} {'metric':11} {'ours':>10} {'C':>10} {'ratio':>7} {'python -c pass':>15}")
    for load in loads:
        ours = samples.get((load, "ours"), [])
        other = samples.get((load, "C"), [])
        floor = samples.get((load, "python -c pass"), [])
        for metric in ours[0] if ours else []:
            mine = statistics.median(s[metric] for s in ours)
            theirs = statistics.median(s[metric] for s in other) if other else None
            base = statistics.median(s[metric] for s in floor) if floor else None
            ratio = f"{mine / theirs:7.2f}" if theirs else f"{'-':>7}"
            print(f"{load:42} {metric:11} {mine:10.1f} "
                  f"{(f'{theirs:10.1f}' if theirs is not None else f'{chr(45):>10}')} {ratio} "
                  f"{(f'{base:15.1f}' if base is not None else '')}")


if __name__ == "__main__":
    raise SystemExit(main())
