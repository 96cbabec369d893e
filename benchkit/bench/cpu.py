"""The CPU time of the whole server tree (the CPU ms/mail lines of loads 1
to 3), and of the master and its workers alone (row 8).

The server's tree is its master, the master's workers (ours: spares forked
at start, more as they are taken, surplus ones leaving after a minute idle)
or session processes (the C msmtpd forks one per connection), and the
delivery commands they run (the C msmtpd's through /bin/sh).  Commands and
the C msmtpd's session processes are born and die within a load, so adding
up the processes alive at the end would miss them.  Two ways to count them:

A cgroup, when this benchmark may make one (root, usually): the server's
tree is moved into a group of its own before the loads, and everything it
forks from then on is born there.  The kernel charges the group for the
CPU of every task in it as it runs, exited ones included, whoever reaps
them, in microseconds (v2's cpu.stat) or nanoseconds (v1's cpuacct.usage).
Only a group that no CPU controller governs is used (v2 without "cpu" in
the parent's cgroup.subtree_control, a v1 cpuacct hierarchy without "cpu"),
so the group changes nothing in how the server is scheduled.

Otherwise (or with --proc-cpu) /proc: when a parent waits for a child, the
kernel adds the child's utime+stime+cutime+cstime to the parent's cutime
and cstime (fields 14 to 17 of /proc/PID/stat), and in both servers every
parent waits: ours, the worker for its command and the master for a worker
that ends (and for an orphan it adopted as subreaper); the C msmtpd, sh for
the command, the session process for sh (pclose) and the master for the
session process (wait4 in its SIGCHLD handler: 1.8.23 does not set SIGCHLD
to SIG_IGN, which would let the kernel reap them uncounted; checked with
strace).  So for a process P in /proc, utime+stime+cutime+cstime is the CPU
of P and of all its descendants already reaped, and the sum over the tree
counts everything the tree has used once (a child still in /proc, zombie or
not, is in no parent's cutime yet).  The figure is that sum after the load
minus before: a process there before and gone after moved its total into
its parent's cutime, one born and reaped in between is in its parent's.  A
process reaped while the tree is being read could be missed or counted
twice, hence the settling below.  The C msmtpd reaps one child per SIGCHLD,
and signals that arrive together count once, so some of its session
processes stay zombies until later ones end: they are counted where they
are.  The weak point is resolution: every field is truncated to a clock
tick (10 ms), separately for each process, so ours, whose workers start
load 1 with their fields at or near zero (or are forked during it), reads
3 to 11% low there; against a cgroup, loads 2 and 3, and the C msmtpd's
three, agree within 1.5%.

Both ways, the tree is read when it has settled: its running processes have
stayed the same for SETTLE_QUIET (after a load, the C msmtpd's session
processes end just after their QUIT is answered).  Checked with a delivery
command that burns 5 ms of CPU more than the usual one: loads 1 and 2 then
show 5.5 to 5.8 ms more per mail, for both servers, both ways.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path
from typing import List, Optional, Set, Tuple

from benchkit.bench.programs import PYTHON
from benchkit.processes import children_of, stat_fields, tree_pids

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


def tree_cpu(pid: int) -> Tuple[float, Set[int]]:
    """CPU seconds (user+system) used so far by ``pid``, its descendants
    and every descendant already reaped: utime+stime+cutime+cstime summed
    over the tree.  Also the pids read that are still running (not zombies:
    a zombie's figures are final, and move to its parent's when reaped)."""
    ticks = 0
    running: Set[int] = set()
    for current in tree_pids(pid):
        fields = stat_fields(current)
        if fields is None:
            continue  # gone since its parent listed it
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


def server_cpu(pid: int) -> Tuple[float, List[int]]:
    """User plus system CPU seconds used so far by the master ``pid`` and
    its workers (its children), from /proc/PID/stat, and the pids counted.
    The delivery commands (the workers' children) are not counted: no row
    of this benchmark measures them."""
    pids = [pid, *sorted(children_of(pid))]
    ticks = 0
    for current in pids:
        fields = stat_fields(current)
        if fields is None:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK"), pids
