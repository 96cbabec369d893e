"""Row 7: from spawning a server to its first accepted connect, many
runs each, beside the floor: this Python spawned to exit."""

from __future__ import annotations

import functools
import socket
import statistics
import subprocess
import tempfile
import time
from typing import IO, Callable, Dict, List, Sequence, Tuple, Union

from benchkit.bench.programs import FLOOR, PYTHON
from benchkit.bench.report import row
from benchkit.processes import free_port, stop_process

START_RUNS, START_RUNS_QUICK = 17, 3
START_POLL = 0.0005  # seconds between connect attempts
START_AIM = 1.2  # ours / floor, for starting to listen (issue 22: keep <= 1.2)


def spawn(argv: Sequence[str], stderr: Union[int, IO[bytes]] = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start a program the same way for servers and for the floor."""
    return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)


def connects(port: int) -> bool:
    """One TCP connect to 127.0.0.1:port.  A connect that lands on its own
    source port (TCP simultaneous open, possible on an ephemeral port with
    no listener) does not count."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0 and sock.getsockname()[1] != port


def time_to_listen(argv: Sequence[str], timeout: float = 20.0) -> float:
    """Seconds from spawning the server on a fresh port until a connect to
    it succeeds, polled every START_POLL from here; the server is stopped."""
    port = free_port()
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = spawn([*argv, f"--port={port}", "--interface=127.0.0.1"], stderr=errors)
        try:
            return _poll_listening(process, port, started, timeout)
        except RuntimeError as error:
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"{argv[0]} {error}: {' '.join(tail) or 'no error output'}") from None
        finally:
            stop_process(process)


def _poll_listening(process: subprocess.Popen[bytes], port: int, started: float, timeout: float) -> float:
    """Connect every START_POLL until one succeeds; seconds since ``started``."""
    while True:
        if connects(port):
            return time.perf_counter() - started
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before listening")
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"did not listen on port {port} within {timeout} s")
        time.sleep(START_POLL)


def time_to_exit(argv: Sequence[str]) -> float:
    """Seconds from spawning ``argv`` until it has exited (the floor)."""
    started = time.perf_counter()
    spawn(argv).wait()
    return time.perf_counter() - started


def start_to_listening(servers: Dict[str, List[str]], runs: int) -> Dict[str, List[float]]:
    """Each server's start-to-listening times and the floor's spawn-to-exit
    times, in milliseconds; the three alternate, in a rotating order, so
    that the machine's noise falls on all of them alike."""
    timers: List[Tuple[str, Callable[[], float]]] = [
        (name, functools.partial(time_to_listen, argv)) for name, argv in servers.items()]
    timers.append((FLOOR, functools.partial(time_to_exit, [PYTHON, "-c", "pass"])))
    times: Dict[str, List[float]] = {name: [] for name, _ in timers}
    for run in range(runs):
        shift = run % len(timers)
        for name, timer in timers[shift:] + timers[:shift]:
            times[name].append(timer() * 1000)
    return times


def report_start(times: Dict[str, List[float]]) -> None:
    """Row 7: median, min and max over the runs; on the median line the
    ratio ours / C and ours / floor, next to the aim for the latter."""
    runs = len(times["ours"])
    print(f"\n7: {runs} runs each; ours and C: spawn until a connect succeeds (polled every "
          f"{START_POLL * 1000:g} ms); floor: `{PYTHON} -c pass`, spawn to exit")
    print(f"{'load':42} {'metric':11} {'ours':>10} {'C':>10} {'ratio':>7} {FLOOR:>15}")
    for metric, pick in (("median ms", statistics.median), ("min ms", min), ("max ms", max)):
        mine = pick(times["ours"])
        theirs = pick(times["C"]) if "C" in times else None
        base = pick(times[FLOOR])
        note = ""
        if metric.startswith("median"):
            note = f"ours/floor {mine / base:.2f} (aim <= {START_AIM:g})"
        print(row("7 start to listening", metric, mine, theirs,
                  mine / theirs if theirs and metric.startswith("median") else None, base, note))
