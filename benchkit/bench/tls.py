"""Row 8: load 1 over STARTTLS against ours with a certificate, beside the
same load in plain text against the same server (the C msmtpd has no TLS)."""

from __future__ import annotations

import multiprocessing.pool
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from benchkit.bench.cpu import server_cpu
from benchkit.bench.smtp_client import TLS_HOST, message, run_clients, tls_probe
from benchkit.bench.target import Target

NO_TLS = "n/a (no TLS)"  # the C column of row 8


def make_certificate(directory: Path) -> Optional[Tuple[str, str]]:
    """A self-signed EC P-256 certificate for TLS_HOST, valid for a day,
    and its key, made by openssl(1) in ``directory`` (no Python package
    needed); None when openssl is not installed."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "tls-cert.pem", directory / "tls-key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
                    "-subj", f"/CN={TLS_HOST}", "-addext", f"subjectAltName=DNS:{TLS_HOST}"],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return str(cert), str(key)


def run_sessions(pool: multiprocessing.pool.Pool, target: Target, concurrency: int, sessions: int,
                 body: bytes, cafile: Optional[str]) -> Dict[str, float]:
    """Load 1's sessions (one mail each, ``concurrency`` at once), over
    STARTTLS when ``cafile`` is given: sessions per second, the latency of
    whole sessions (connect to QUIT's reply), and the CPU time per session
    of the server and of the benchmark's own clients (on the same cores)."""
    assert target.process is not None
    cpu_before, pids_before = server_cpu(target.process.pid)
    results, elapsed = run_clients(pool, target.port, concurrency, sessions, 1, body, cafile)
    cpu_after, pids_after = server_cpu(target.process.pid)
    if pids_after != pids_before:
        print(f"note: the workers changed during a load of row 8 ({len(pids_before)} processes, then "
              f"{len(pids_after)}): its CPU figure misses the ones that left")
    times = sorted(x for _, r, _ in results for x in r)
    count = len(times)
    return {
        "sessions/s": count / elapsed,
        "p50 ms/sess": times[count // 2] * 1000,
        "p99 ms/sess": times[min(count - 1, int(count * 0.99))] * 1000,
        "server CPU ms": (cpu_after - cpu_before) / count * 1000,
        "client CPU ms": sum(cpu for _, _, cpu in results) / count * 1000,
    }


TlsSamples = Dict[str, List[Dict[str, float]]]


def run_tls(pool: multiprocessing.pool.Pool, target: Target, cafile: str, sessions: int, round_number: int,
            samples: TlsSamples) -> str:
    """One round of row 8 against one start of ours with a certificate:
    load 1 in plain text and over STARTTLS, in turn (which goes first
    alternates with the round).  Returns what TLS the client got."""
    target.start()
    try:
        time.sleep(0.3)
        described = tls_probe(target.port, cafile)
        modes: List[Tuple[str, Optional[str]]] = [("plain", None), ("TLS", cafile)]
        for mode, trusted in modes if round_number % 2 == 0 else modes[::-1]:
            samples.setdefault(mode, []).append(
                run_sessions(pool, target, 16, sessions, message(1000), trusted))
    finally:
        target.stop()
    return described


def report_tls(samples: TlsSamples, sessions: int, described: str) -> None:
    """Row 8: medians over the rounds of TLS and plain, their ratio and, in
    milliseconds, their difference; the rounds' range beside."""
    rounds = len(samples["TLS"])
    print(f"\n8: ours with a self-signed EC P-256 certificate (made by openssl); the client trusts it "
          f"and checks the name; {described}, a full handshake every session")
    print(f"   {sessions} sessions of one 1 KB mail, 16 at once, each EHLO, STARTTLS, EHLO, MAIL, RCPT, "
          f"DATA, QUIT (plain: no STARTTLS, same server);")
    print(f"   medians of {rounds} round(s); latency from connect to QUIT's reply; CPU per session, "
          "user+system: server = master and workers (not the delivery commands), client = this benchmark's")
    print(f"{'load':42} {'metric':13} {'ours TLS':>10} {'C':>12} {'ours plain':>10} {'TLS/plain':>9} "
          f"{'TLS-plain':>9}  rounds' range, TLS; plain")
    for metric in samples["TLS"][0]:
        tls = [s[metric] for s in samples["TLS"]]
        plain = [s[metric] for s in samples["plain"]]
        mine, base = statistics.median(tls), statistics.median(plain)
        ratio = f"{mine / base:9.2f}" if base else f"{'-':>9}"
        difference = f"{mine - base:+9.1f}" if "ms" in metric else f"{'-':>9}"
        print(f"{'8 STARTTLS, 1 KB, 1/session, 16 at once':42} {metric:13} {mine:10.1f} {NO_TLS:>12} "
              f"{base:10.1f} {ratio} {difference}  {min(tls):.1f}-{max(tls):.1f}; "
              f"{min(plain):.1f}-{max(plain):.1f}")
