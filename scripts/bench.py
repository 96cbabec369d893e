#!/usr/bin/env python3
"""Side-by-side benchmark of this msmtpd and the C msmtpd (Debian's
msmtp-mta, /usr/bin/msmtpd), in one run, on loopback, with the same tiny
delivery command.  Loads alternate between the two servers over several
rounds; the table shows medians and the ratio ours/C.

    python3 scripts/bench.py            # the full run (a few minutes)
    python3 scripts/bench.py --quick    # a tiny run, to check it works

Loads: (1) 1 KB mails, one per session, 16 sessions at once; (2) the same
with 100 mails per session; (3) 20 MB mails, 4 sessions at once, each of
the three also as the CPU time per mail of the whole server tree, delivery
commands included (counted in a cgroup where one can be made, else from
/proc: see CpuMeter); (4) --inetd sessions, one process each, against
`python -c pass`; (5) time from start to accepting connections; (6) PSS of the whole process tree,
idle and under load 1; (7) start to listening, many runs each, against
`python -c pass` spawned to exit; (8) load 1 over STARTTLS against ours
with a certificate, beside the same load in plain text against the same
server (the C msmtpd has no TLS).  No assertion: this is a measurement,
not a test.

    python3 scripts/bench.py --only start   # only row 7 (a few seconds)
    python3 scripts/bench.py --only tls     # only row 8 (some 20 seconds)

Every Python process it starts is sys.executable itself, and ours is the
console script next to it: `python3` on PATH may be a pyenv shim (a shell
script costing some 25 ms a start), which would inflate the floor.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import multiprocessing
import multiprocessing.pool
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

C_MSMTPD = "/usr/bin/msmtpd"
PYTHON = sys.executable  # the interpreter itself, never a shim found on PATH
OURS = str(Path(PYTHON).parent / "msmtpd")
FLOOR = "python -c pass"  # the name of the floor's column and samples
START_RUNS, START_RUNS_QUICK = 17, 3
START_POLL = 0.0005  # seconds between connect attempts
START_AIM = 1.5  # ours / floor, for starting to listen
TLS_HOST = "localhost"  # the benchmark certificate's name, checked by the client
NO_TLS = "n/a (no TLS)"  # the C column of row 8
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


def shebang_interpreter(script: str) -> Optional[str]:
    """The interpreter a console script's #! line names, if it has one."""
    try:
        with open(script, "rb") as file:
            first = file.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return words[0] if words else None


def check_interpreter(ours: str) -> None:
    """The floor only means something if ours runs on the interpreter that
    the floor times: say so when the console script names another one."""
    named = shebang_interpreter(ours)
    if named is None:
        print(f"note: {ours} has no #! line; the floor is timed with {PYTHON}")
    elif os.path.realpath(named) != os.path.realpath(PYTHON):
        print(f"note: {ours} runs {named}, but the floor is timed with {PYTHON}")


def use_bytecode_cache(directory: Path) -> None:
    """Let every Python this benchmark starts read and write compiled
    bytecode in ``directory``.  An installed package comes byte-compiled,
    but with PYTHONDONTWRITEBYTECODE set (as on this project's machine) a
    source tree never gets a __pycache__, and each start would compile
    msmtpd's modules again (some 20 ms).  Set in our own environment, it is
    inherited by every child; the tree itself is left alone."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(directory)


def warm_up(ours: Sequence[str], inetd: Sequence[str]) -> None:
    """One untimed start of each Python program, to fill the bytecode cache."""
    time_to_listen(ours)
    inetd_rate(inetd, 1)
    time_to_exit([PYTHON, "-c", "pass"])


# -- start to listening (row 7) --------------------------------------------------

def spawn(argv: Sequence[str], stderr: Union[int, IO[bytes]] = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start a program the same way for servers and for the floor."""
    return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)


def connects(port: int) -> bool:
    """One TCP connect to 127.0.0.1:port.  A connect that lands on its own
    source port (TCP simultaneous open, possible on an ephemeral port with
    no listener) does not count."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0 and sock.getsockname()[1] != port


def stop_process(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM and wait; SIGKILL if it has not gone within ``grace``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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


class Target:
    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = 0
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.meter: Optional[CpuMeter] = None  # loads 1 to 3 only

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


@functools.cache
def _client_context(cafile: str) -> ssl.SSLContext:
    """The client's TLS context, made once per client process: it trusts
    only the benchmark's certificate and checks the host name, as a real
    client would."""
    return ssl.create_default_context(cafile=cafile)


def _session(port: int, mails: int, body: bytes, cafile: Optional[str] = None) -> Tuple[List[float], float]:
    """One session sending ``mails`` mails, after STARTTLS when ``cafile``
    (the certificate to trust) is given.  Returns each mail's latency (the
    first counted from the connect) and the whole session's, from the
    connect to QUIT's reply."""
    opened = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        buffer = bytearray()
        _expect(sock, buffer)
        sock.sendall(b"EHLO bench\r\n")
        _expect(sock, buffer)
        if cafile is None:
            latencies, ended = _mails(sock, buffer, mails, body, opened)
        else:
            sock.sendall(b"STARTTLS\r\n")
            reply = _expect(sock, buffer)
            if not reply.startswith(b"220") or buffer:
                raise RuntimeError(f"STARTTLS refused: {reply!r}")
            # a full handshake every session: no session is offered for resumption
            with _client_context(cafile).wrap_socket(sock, server_hostname=TLS_HOST) as tls:
                tls.sendall(b"EHLO bench\r\n")
                _expect(tls, buffer)
                latencies, ended = _mails(tls, buffer, mails, body, opened)
    return latencies, ended - opened


def _mails(sock: socket.socket, buffer: bytearray, mails: int, body: bytes,
           started: float) -> Tuple[List[float], float]:
    """The mails of one session, then QUIT: each mail's latency, and the
    clock when QUIT was answered."""
    latencies = []
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
    return latencies, time.perf_counter()


def _client(args: Tuple[int, int, int, bytes, Optional[str]]) -> Tuple[List[float], List[float], float]:
    """One client process's sessions, one after another: every mail's
    latency, every session's, and the CPU seconds the client used."""
    port, sessions, mails, body, cafile = args
    latencies: List[float] = []
    whole: List[float] = []
    cpu = time.process_time()
    for _ in range(sessions):
        mail_times, session_time = _session(port, mails, body, cafile)
        latencies.extend(mail_times)
        whole.append(session_time)
    return latencies, whole, time.process_time() - cpu


def message(size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    head = b"Subject: benchmark\r\n\r\n"
    return head + line * max(1, (size - len(head)) // len(line)) + b".\r\n"


def run_load(pool: multiprocessing.pool.Pool, target: Target, concurrency: int, sessions: int,
             mails: int, body: bytes) -> Dict[str, float]:
    """One of loads 1 to 3: throughput, latency per mail and the CPU time
    per mail of the whole server tree (see CpuMeter), read before the
    clock starts and, once the tree has settled, after it stops."""
    assert target.meter is not None
    per_client = max(1, sessions // concurrency)
    cpu_before = target.meter.settled()[0]
    started = time.perf_counter()
    results = pool.map(_client, [(target.port, per_client, mails, body, None)] * concurrency)
    elapsed = time.perf_counter() - started
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


# -- the CPU time of the whole server tree (the CPU ms/mail lines of loads 1 to 3) -----
#
# The server's tree is its master, the master's workers (ours: spares forked
# at start, more as they are taken, surplus ones leaving after a minute idle)
# or session processes (the C msmtpd forks one per connection), and the
# delivery commands they run (the C msmtpd's through /bin/sh).  Commands and
# the C msmtpd's session processes are born and die within a load, so adding
# up the processes alive at the end would miss them.  Two ways to count them:
#
# A cgroup, when this benchmark may make one (root, usually): the server's
# tree is moved into a group of its own before the loads, and everything it
# forks from then on is born there.  The kernel charges the group for the
# CPU of every task in it as it runs, exited ones included, whoever reaps
# them, in microseconds (v2's cpu.stat) or nanoseconds (v1's cpuacct.usage).
# Only a group that no CPU controller governs is used (v2 without "cpu" in
# the parent's cgroup.subtree_control, a v1 cpuacct hierarchy without "cpu"),
# so the group changes nothing in how the server is scheduled.
#
# Otherwise (or with --proc-cpu) /proc: when a parent waits for a child, the
# kernel adds the child's utime+stime+cutime+cstime to the parent's cutime
# and cstime (fields 14 to 17 of /proc/PID/stat), and in both servers every
# parent waits: ours, the worker for its command and the master for a worker
# that ends (and for an orphan it adopted as subreaper); the C msmtpd, sh for
# the command, the session process for sh (pclose) and the master for the
# session process (wait4 in its SIGCHLD handler: 1.8.23 does not set SIGCHLD
# to SIG_IGN, which would let the kernel reap them uncounted; checked with
# strace).  So for a process P in /proc, utime+stime+cutime+cstime is the CPU
# of P and of all its descendants already reaped, and the sum over the tree
# counts everything the tree has used once (a child still in /proc, zombie or
# not, is in no parent's cutime yet).  The figure is that sum after the load
# minus before: a process there before and gone after moved its total into
# its parent's cutime, one born and reaped in between is in its parent's.  A
# process reaped while the tree is being read could be missed or counted
# twice, hence the settling below.  The C msmtpd reaps one child per SIGCHLD,
# and signals that arrive together count once, so some of its session
# processes stay zombies until later ones end: they are counted where they
# are.  The weak point is resolution: every field is truncated to a clock
# tick (10 ms), separately for each process, so ours, whose workers start
# load 1 with their fields at or near zero (or are forked during it), reads
# 3 to 11% low there; against a cgroup, loads 2 and 3, and the C msmtpd's
# three, agree within 1.5%.
#
# Both ways, the tree is read when it has settled: its running processes have
# stayed the same for SETTLE_QUIET (after a load, the C msmtpd's session
# processes end just after their QUIT is answered).  Checked with a delivery
# command that burns 5 ms of CPU more than the usual one: loads 1 and 2 then
# show 5.5 to 5.8 ms more per mail, for both servers, both ways.

CPU_METRIC = "CPU ms/mail"
SETTLE_SECONDS = 5.0  # at most, after a load, for its processes to exit
SETTLE_QUIET = 0.1  # seconds the running processes must stay the same: the tree has settled
SETTLE_POLL = 0.01
Counter = Tuple[Path, str]  # a cgroup directory to make groups in, and the file that counts CPU there


def cpu_method(parent: Optional[Counter]) -> str:
    """The header's description of the CPU ms/mail lines."""
    what = ("CPU ms/mail: user+system CPU of the whole server tree (master, workers or session processes, "
            "delivery commands\n   and their /bin/sh) during the load, per mail, read before and after it "
            "with the tree settled; lower is better;\n   ")
    if parent is not None:
        return what + (f"counted in a cgroup of its own ({parent[1]} under {parent[0]}), into which the tree "
                       "is moved\n   before the loads: the kernel charges it for every process in it, "
                       "exited ones too")
    return what + ("from /proc/PID/stat: utime+stime+cutime+cstime summed over the tree, after minus before "
                   "(a reaped\n   child's CPU is in its parent's cutime/cstime); each process's figures are "
                   "truncated to a clock tick,\n   so ours reads 3 to 11% low in load 1 (no cgroup could be "
                   "made, or --proc-cpu)")


def tree_pids(pid: int) -> List[int]:
    """``pid`` and all its descendants (the children of any of their
    threads), from /proc; zombies included, as they are until reaped."""
    pids: List[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        pids.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            pending.extend(int(child) for child in children)
    return pids


def tree_cpu(pid: int) -> Tuple[float, Set[int]]:
    """CPU seconds (user+system) used so far by ``pid``, its descendants
    and every descendant already reaped: utime+stime+cutime+cstime summed
    over the tree.  Also the pids read that are still running (not zombies:
    a zombie's figures are final, and move to its parent's when reaped)."""
    ticks = 0
    running: Set[int] = set()
    for current in tree_pids(pid):
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            continue  # gone since its parent listed it
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        ticks += sum(int(field) for field in fields[11:15])  # fields 14 to 17 of proc(5)
        if fields[0] not in ("Z", "X"):
            running.add(current)
    return ticks / os.sysconf("SC_CLK_TCK"), running


def cgroup_counters() -> List[Counter]:
    """This process's own cgroups in which a group could count CPU without
    a CPU controller acting on it: v2 first, then a v1 cpuacct hierarchy."""
    try:
        mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
        own = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    except OSError:
        return []
    found: List[Counter] = []
    for _, controllers, path in own:
        for mount in mounts:
            point, kind, options = mount[1], mount[2], mount[3].split(",")
            if kind == "cgroup2" and controllers == "":
                directory = Path(point + path)
                try:
                    enabled = (directory / "cgroup.subtree_control").read_text().split()
                except OSError:
                    continue
                if "cpu" not in enabled:
                    found.insert(0, (directory, "cpu.stat"))
            elif kind == "cgroup" and "cpuacct" in options and "cpu" not in options \
                    and "cpuacct" in controllers.split(","):
                found.append((Path(point + path), "cpuacct.usage"))
    return found


def group_seconds(group: Path, counter: str) -> float:
    """The CPU seconds a cgroup has been charged."""
    text = (group / counter).read_text()
    if counter == "cpu.stat":
        return int(dict(line.split() for line in text.splitlines())["usage_usec"]) / 1e6
    return int(text) / 1e9


def remove_group(group: Path) -> None:
    """rmdir, once its processes have gone (a few moments after they were reaped)."""
    for _ in range(100):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)
    print(f"note: could not remove the cgroup {group}")


def new_group(parent: Counter, name: str) -> Path:
    """A new, empty cgroup under ``parent``: its name is this benchmark's
    pid, ``name`` and a serial number, so none is ever made twice."""
    group = parent[0] / f"msmtpd-bench-{os.getpid()}-{name}-{next(GROUP_SERIALS)}"
    group.mkdir()
    return group


GROUP_SERIALS = itertools.count(1)


def usable_counter(proc_only: bool) -> Optional[Counter]:
    """Where the CPU ms/mail lines count from: the first cgroup in which a
    group can be made, a process moved into it, the group read and removed;
    None for /proc."""
    if proc_only:
        return None
    for parent in cgroup_counters():
        try:
            probe = new_group(parent, "probe")
        except OSError:
            continue
        child = subprocess.Popen([PYTHON, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        try:
            (probe / "cgroup.procs").write_text(str(child.pid))
            group_seconds(probe, parent[1])
            return parent
        except (OSError, ValueError, KeyError):
            continue
        finally:
            child.kill()
            child.communicate()
            remove_group(probe)
    return None


class CpuMeter:
    """The CPU seconds used by a server's whole tree: from a cgroup made
    for it under ``parent`` (the tree is moved in at once), else, with no
    parent, from /proc (tree_cpu)."""

    def __init__(self, pid: int, name: str, parent: Optional[Counter]) -> None:
        self.pid = pid
        self.group: Optional[Path] = None
        self.counter = ""
        if parent is not None:
            group = new_group(parent, name)
            try:
                # the master first: from then on, whatever it forks is born in the group
                (group / "cgroup.procs").write_text(str(pid))
                for current in tree_pids(pid)[1:]:
                    try:
                        (group / "cgroup.procs").write_text(str(current))
                    except ProcessLookupError:
                        pass  # exited since
                inside = {int(p) for p in (group / "cgroup.procs").read_text().split()}
                if not tree_cpu(pid)[1] <= inside:
                    raise RuntimeError(f"the {name} server's processes did not all move into {group}")
            except BaseException:
                for moved in (group / "cgroup.procs").read_text().split():
                    (parent[0] / "cgroup.procs").write_text(moved)  # back where they were
                remove_group(group)
                raise
            self.group, self.counter = group, parent[1]

    def seconds(self) -> Tuple[float, Set[int]]:
        """CPU seconds so far, and the tree's running processes."""
        cpu, running = tree_cpu(self.pid)
        if self.group is not None:
            cpu = group_seconds(self.group, self.counter)
        return cpu, running

    def settled(self, timeout: float = SETTLE_SECONDS) -> Tuple[float, bool]:
        """seconds() once the tree's running processes have stayed the same
        for SETTLE_QUIET (the C msmtpd's session processes end just after
        their QUIT is answered; ours may have started workers, which stay);
        False beside it if that took over ``timeout``."""
        deadline = time.monotonic() + timeout
        cpu, running = self.seconds()
        quiet_since = time.monotonic()
        while True:
            time.sleep(SETTLE_POLL)
            cpu, now_running = self.seconds()
            now = time.monotonic()
            if now_running != running:
                running, quiet_since = now_running, now
            elif now - quiet_since >= SETTLE_QUIET:
                return cpu, True
            if now >= deadline:
                return cpu, False

    def close(self) -> None:
        """Remove the cgroup, once the server has been stopped."""
        if self.group is not None:
            remove_group(self.group)
            self.group = None


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


# -- STARTTLS against plain text (row 8) --------------------------------------------

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


def server_cpu(pid: int) -> Tuple[float, List[int]]:
    """User plus system CPU seconds used so far by the master ``pid`` and
    its workers (its children), from /proc/PID/stat, and the pids counted.
    The delivery commands (the workers' children) are not counted: no row
    of this benchmark measures them."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    pids = [pid, *sorted(int(child) for child in children)]
    ticks = 0
    for current in pids:
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        ticks += int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK"), pids


def run_sessions(pool: multiprocessing.pool.Pool, target: Target, concurrency: int, sessions: int,
                 body: bytes, cafile: Optional[str]) -> Dict[str, float]:
    """Load 1's sessions (one mail each, ``concurrency`` at once), over
    STARTTLS when ``cafile`` is given: sessions per second, the latency of
    whole sessions (connect to QUIT's reply), and the CPU time per session
    of the server and of the benchmark's own clients (on the same cores)."""
    assert target.process is not None
    per_client = max(1, sessions // concurrency)
    cpu_before, pids_before = server_cpu(target.process.pid)
    started = time.perf_counter()
    results = pool.map(_client, [(target.port, per_client, 1, body, cafile)] * concurrency)
    elapsed = time.perf_counter() - started
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


def tls_probe(port: int, cafile: str) -> str:
    """One untimed STARTTLS session's protocol and cipher, as the client saw them."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        buffer = bytearray()
        _expect(sock, buffer)
        sock.sendall(b"EHLO bench\r\nSTARTTLS\r\n")  # an EHLO reply, then STARTTLS's
        _expect(sock, buffer)
        reply = _expect(sock, buffer)
        if not reply.startswith(b"220"):
            raise RuntimeError(f"STARTTLS refused: {reply!r}")
        with _client_context(cafile).wrap_socket(sock, server_hostname=TLS_HOST) as tls:
            cipher = tls.cipher()
            described = f"{tls.version()} with {cipher[0] if cipher else 'unknown cipher'}"
            tls.sendall(b"QUIT\r\n")
            _expect(tls, buffer)
    return described


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


# -- the run -----------------------------------------------------------------------

Samples = Dict[Tuple[str, str], List[Dict[str, float]]]
Load = Callable[[multiprocessing.pool.Pool, Target], Dict[str, float]]
GROUPS = {"daemon": "rows 1, 2, 3, 5 and 6", "inetd": "row 4", "start": "row 7",
          "tls": "row 8, STARTTLS beside plain text (ours only)"}


def parse_options(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--ours", default=OURS, help="this msmtpd's console script")
    parser.add_argument("--c-msmtpd", default=C_MSMTPD)
    parser.add_argument("--only", action="append", choices=sorted(GROUPS),
                        help="run only these rows (repeatable): "
                        + "; ".join(f"{k}: {v}" for k, v in GROUPS.items()))
    parser.add_argument("--cold-bytecode", action="store_true",
                        help="keep the environment's PYTHONDONTWRITEBYTECODE and __pycache__ as they are "
                        "(by default a private, warmed bytecode cache is used)")
    parser.add_argument("--proc-cpu", action="store_true",
                        help="count the CPU ms/mail lines from /proc even where a cgroup could be made "
                        "(coarser: clock ticks, per process)")
    parser.add_argument("--start-runs", type=int, default=None,
                        help=f"runs for row 7 (default {START_RUNS}, {START_RUNS_QUICK} with --quick)")
    options = parser.parse_args(argv)
    if not os.access(options.ours, os.X_OK):
        parser.error(f"{options.ours} is not executable (pip install -e . with {PYTHON})")
    if os.path.realpath(options.ours) == os.path.realpath(options.c_msmtpd):
        # e.g. run with /usr/bin/python3: the msmtpd next to it is the C one
        parser.error(f"{options.ours} is the C msmtpd; give this one with --ours")
    return options


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


def run_inetd(inetd_targets: List[Tuple[str, List[str]]], count: int, samples: Samples) -> None:
    """One round of row 4."""
    for name, inetd_argv in inetd_targets:
        samples.setdefault(("4 --inetd sessions", name), []).append(inetd_rate(inetd_argv, count))


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_options(argv)
    groups = set(options.only or GROUPS)
    rounds = 1 if options.quick else options.rounds
    check_interpreter(options.ours)
    have_c = os.access(options.c_msmtpd, os.X_OK)
    if not have_c:
        print(f"note: {options.c_msmtpd} is not installed (apt-get install msmtp-mta); "
              "reporting ours alone")

    workdir = Path(tempfile.mkdtemp(prefix="msmtpd-bench-"))
    try:
        command = build_discard(workdir)
        if not options.cold_bytecode:
            use_bytecode_cache(workdir / "pycache")
            warm_up([options.ours, f"--command={command}"], [options.ours, "--inetd", f"--command={command}"])
        print("bytecode: " + ("as the environment has it" if options.cold_bytecode
                              else f"a private cache, warmed ({os.environ['PYTHONPYCACHEPREFIX']})"))
        start_times: Dict[str, List[float]] = {}
        if "start" in groups:
            servers = {"ours": [options.ours, f"--command={command}"]}
            if have_c:
                servers["C"] = [options.c_msmtpd, f"--command={command}"]
            runs = options.start_runs or (START_RUNS_QUICK if options.quick else START_RUNS)
            start_times = start_to_listening(servers, runs)
        targets = [Target("ours", [options.ours, f"--command={command}", "--max-sessions=16"])]
        inetd_targets = [("ours", [options.ours, "--inetd", f"--command={command}"])]
        if have_c:
            targets.append(Target("C", [options.c_msmtpd, f"--command={command}"]))
            inetd_targets.append(("C", [options.c_msmtpd, "--inetd", f"--command={command}"]))
        inetd_targets.append((FLOOR, [PYTHON, "-c", "pass"]))
        certificate = None
        if "tls" in groups:
            certificate = make_certificate(workdir)
            if certificate is None:
                print("note: openssl is not installed (apt-get install openssl); no row 8")
        tls_target = None
        if certificate is not None:
            # A fixed pool: row 8 compares TLS with plain text, and its CPU
            # figure reads the workers, which must not come and go meanwhile.
            tls_target = Target("ours", [*targets[0].argv, f"--tls-cert={certificate[0]}",
                                         f"--tls-key={certificate[1]}", "--spare-workers=16"])
        tls_sessions = int(1600 * (0.02 if options.quick else 1.0))  # as load 1
        counter = usable_counter(options.proc_cpu) if "daemon" in groups else None
        samples: Samples = {}
        tls_samples: TlsSamples = {}
        described = ""
        if groups & {"daemon", "inetd"} or tls_target is not None:
            loads = daemon_loads(options.quick)
            with multiprocessing.get_context("fork").Pool(16) as pool:
                for round_number in range(rounds):
                    if "daemon" in groups:
                        for target in targets if round_number % 2 == 0 else targets[::-1]:
                            run_daemon(pool, target, loads, samples, counter)
                    if "inetd" in groups:
                        run_inetd(inetd_targets, 5 if options.quick else 40, samples)
                    if tls_target is not None and certificate is not None:
                        described = run_tls(pool, tls_target, certificate[0], tls_sessions, round_number,
                                            tls_samples)
        if samples:
            report(samples, rounds, counter)
        if start_times:
            report_start(start_times)
        if tls_samples:
            report_tls(tls_samples, tls_sessions, described)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def row(load: str, metric: str, mine: float, theirs: Optional[float], ratio: Optional[float],
        base: Optional[float], note: str = "", digits: int = 1) -> str:
    """One line of the table; a missing figure is a dash."""
    def cell(value: Optional[float], width: int, places: int) -> str:
        return f"{value:{width}.{places}f}" if value is not None else f"{'-':>{width}}"
    line = f"{load:42} {metric:11} {mine:10.{digits}f} {cell(theirs, 10, digits)} {cell(ratio, 7, 2)}"
    if base is not None:
        line += f" {base:15.{digits}f}"
    return line + (f"  {note}" if note else "")


def spread(ours: List[float], theirs: List[float]) -> str:
    """The rounds' range of ours, of C and of the ratio ours/C taken round
    by round (ours and C alternate within each round)."""
    text = f"rounds: ours {min(ours):.2f}-{max(ours):.2f}"
    if theirs:
        text += f", C {min(theirs):.2f}-{max(theirs):.2f}"
        ratios = [mine / other for mine, other in zip(ours, theirs) if other]
        if ratios:
            text += f", ratio {min(ratios):.2f}-{max(ratios):.2f}"
    return text


def report(samples: Samples, rounds: int, counter: Optional[Counter]) -> None:
    loads = sorted({load for load, _ in samples})
    print(f"\nmedians of {rounds} round(s); ratio = ours / C "
          f"(for ms and MB lower is better, for rates higher is better)")
    if any(CPU_METRIC in s for sample in samples.values() for s in sample):
        print(cpu_method(counter))
    print(f"{'load':42} {'metric':11} {'ours':>10} {'C':>10} {'ratio':>7} {FLOOR:>15}")
    for load in loads:
        ours = samples.get((load, "ours"), [])
        other = samples.get((load, "C"), [])
        floor = samples.get((load, FLOOR), [])
        for metric in ours[0] if ours else []:
            mine = statistics.median(s[metric] for s in ours)
            theirs = statistics.median(s[metric] for s in other) if other else None
            base = statistics.median(s[metric] for s in floor) if floor else None
            ratio = mine / theirs if theirs else None
            if metric == CPU_METRIC:
                note = spread([s[metric] for s in ours], [s[metric] for s in other])
                print(row(load, metric, mine, theirs, ratio, base, note, digits=2))
            else:
                print(row(load, metric, mine, theirs, ratio, base))


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


if __name__ == "__main__":
    raise SystemExit(main())
