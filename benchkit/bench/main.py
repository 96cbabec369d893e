"""Side-by-side benchmark of this msmtpd, the C msmtpd (Debian's
msmtp-mta, /usr/bin/msmtpd) and aiosmtpd (the Python peer, piping to the
command the same way), in one run, on loopback, with the same delivery
command: by default a /bin/sh script (`#!/bin/sh` / `exec cat >/dev/null`),
as users' commands are scripts and real programs; `--command-kind=sink`
for a compiled sink, which load 2 also gets as a row of its own (2s).
Loads alternate between the servers over several rounds; the tables show
medians, the rounds' range and the ratios ours / C and ours / aiosmtpd.

    /path/to/venv/bin/python scripts/bench.py          # the full run (some 4 minutes)
    /path/to/venv/bin/python scripts/bench.py --quick  # a tiny run, to check it works

Run it with a virtualenv's interpreter (in which msmtpd is installed with
its test extra, which brings aiosmtpd): a base interpreter may carry .pth
files that import modules at every start, which raises the floor of rows 4
and 7 and hides what msmtpd's own imports cost; the header says so.

Loads: (1) 1 KB mails, one per session, 16 sessions at once; (2) the same
with 100 mails per session; (3) 20 MB mails, 4 sessions at once; each also
as the CPU time per mail of the whole server tree, delivery commands
included (counted in a cgroup where one can be made, else from /proc: see
CpuMeter), and as that beyond the CPU the command costs when run alone with
the same message (see command_floor); (4) --inetd sessions, one process
each, against `python -c pass`; (5) time from start to accepting
connections; (6) PSS of the whole process tree, idle and under load 1; (7)
start to listening, many runs each, against `python -c pass` spawned to
exit; (8) load 1 over STARTTLS against ours with a certificate, beside the
same load in plain text against the same server (the C msmtpd has no TLS).
Then each aim of issue 22 with this run's figure.  No assertion: this is a
measurement, not a test.

    python scripts/bench.py --only start            # only row 7 (a few seconds)
    python scripts/bench.py --only tls              # only row 8 (some 20 seconds)
    python scripts/bench.py --only daemon --servers ours,aiosmtpd

Every Python process it starts is sys.executable itself, and ours is the
console script next to it: `python3` on PATH may be a pyenv shim (a shell
script costing some 25 ms a start), which would inflate the floor.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import multiprocessing
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from benchkit.bench.aims import report_aims
from benchkit.bench.command_floor import command_floor_ms
from benchkit.bench.cpu import Counter, cpu_method, usable_counter
from benchkit.bench.daemon_loads import Load, daemon_loads, run_daemon, sink_load
from benchkit.bench.inetd import inetd_rate, run_inetd
from benchkit.bench.load_tables import COMMAND_ALONE, report_loads
from benchkit.bench.programs import (
    AIOSMTPD,
    AIOSMTPD_SERVER,
    C_MSMTPD,
    FLOOR,
    OURS,
    PYTHON,
    build_discard,
    check_interpreter,
    interpreter_notes,
    use_bytecode_cache,
    write_script_command,
)
from benchkit.bench.report import Samples, report
from benchkit.bench.start_to_listen import (
    START_RUNS,
    START_RUNS_QUICK,
    report_start,
    start_to_listening,
    time_to_exit,
    time_to_listen,
)
from benchkit.bench.target import Target
from benchkit.bench.tls import TlsSamples, make_certificate, report_tls, run_tls

GROUPS = {"daemon": "loads 1, 2, 3 and 2s with rows 5 and 6", "inetd": "row 4", "start": "row 7",
          "tls": "row 8, STARTTLS beside plain text (ours only)"}
SERVER_NAMES = ("ours", "C", AIOSMTPD)
SCRIPT_DESCRIBED = "a /bin/sh script: #!/bin/sh / exec cat >/dev/null"
SINK_DESCRIBED = "the compiled sink (read(2) until EOF)"


def warm_up(argvs: Sequence[Sequence[str]], inetd: Sequence[str]) -> None:
    """One untimed start of each Python program, to fill the bytecode cache."""
    for argv in argvs:
        time_to_listen(argv)
    inetd_rate(inetd, 1)
    time_to_exit([PYTHON, "-c", "pass"])


def parse_options(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--ours", default=OURS, help="this msmtpd's console script")
    parser.add_argument("--c-msmtpd", default=C_MSMTPD)
    parser.add_argument("--servers", default=",".join(SERVER_NAMES),
                        help=f"the servers of loads 1 to 3, comma-separated (default: all of "
                        f"{SERVER_NAMES}); ours always runs")
    parser.add_argument("--command-kind", choices=("script", "sink"), default="script",
                        help="the delivery command of every row: the /bin/sh script (default) or the "
                        "compiled sink (then no row 2s)")
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
    options.servers = [name.strip() for name in options.servers.split(",") if name.strip()]
    unknown = set(options.servers) - set(SERVER_NAMES)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}: choose among {SERVER_NAMES}")
    return options


def available_servers(options: argparse.Namespace) -> List[str]:
    """The servers asked for that are here, ours first; a note for the others."""
    names = ["ours"]
    if "C" in options.servers:
        if os.access(options.c_msmtpd, os.X_OK):
            names.append("C")
        else:
            print(f"note: {options.c_msmtpd} is not installed (apt-get install msmtp-mta); no C columns")
    if AIOSMTPD in options.servers:
        if importlib.util.find_spec("aiosmtpd") is not None:
            names.append(AIOSMTPD)
        else:
            print(f"note: aiosmtpd is not installed for {PYTHON} (pip install -e '.[test]'); "
                  "no aiosmtpd rows")
    return names


def server_argv(name: str, options: argparse.Namespace, command: str) -> List[str]:
    """How each server is started as a daemon with ``command`` (Target adds the address)."""
    if name == "ours":
        return [options.ours, f"--command={command}", "--max-sessions=16"]
    if name == "C":
        return [options.c_msmtpd, f"--command={command}"]
    return [PYTHON, AIOSMTPD_SERVER, f"--command={command}"]


def print_header(options: argparse.Namespace, names: List[str], command: str, sink: Optional[str]) -> None:
    """What this run measures with: the interpreter, the servers, the commands."""
    for note in interpreter_notes():
        print(note)
    shown = {"ours": f"ours ({options.ours})", "C": f"C ({options.c_msmtpd})",
             AIOSMTPD: f"aiosmtpd {aiosmtpd_version()} ({AIOSMTPD_SERVER})"}
    print(f"interpreter: {PYTHON} ({sys.version.split()[0]}); servers: "
          + ", ".join(shown[name] for name in names))
    described = SCRIPT_DESCRIBED if options.command_kind == "script" else SINK_DESCRIBED
    print(f"delivery command of every row: {command}, {described}"
          + (" (--command-kind=sink for the compiled sink)" if options.command_kind == "script" else ""))
    if sink is not None:
        print(f"row 2s: load 2 again with {sink}, {SINK_DESCRIBED}, as the figures before issue 22 "
              "were taken")


def aiosmtpd_version() -> str:
    try:
        return importlib.metadata.version("aiosmtpd")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def rotated(items: List[Target], round_number: int) -> List[Target]:
    """The servers in another order each round, so that none always goes first."""
    shift = round_number % len(items) if items else 0
    return items[shift:] + items[:shift]


def measure_floors(loads: List[Load], commands: Dict[str, str], quick: bool, load_samples: Samples) -> None:
    """One round of the command alone, for each load's message (once for each command and message)."""
    measured: Dict[Tuple[str, bytes], float] = {}
    for load in loads:
        pair = (commands[load.key], load.body)
        if pair not in measured:
            measured[pair] = command_floor_ms(pair[0], pair[1], quick)
        load_samples.setdefault((load.key, COMMAND_ALONE), []).append({"ms": measured[pair]})


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_options(argv)
    groups = set(options.only or GROUPS)
    rounds = 1 if options.quick else options.rounds
    check_interpreter(options.ours)
    names = available_servers(options)

    workdir = Path(tempfile.mkdtemp(prefix="msmtpd-bench-"))
    try:
        sink_command = build_discard(workdir)
        command = write_script_command(workdir) if options.command_kind == "script" else sink_command
        sink = sink_command if options.command_kind == "script" and "daemon" in groups else None
        print_header(options, names, command, sink)
        if not options.cold_bytecode:
            use_bytecode_cache(workdir / "pycache")
            warm_up([server_argv(name, options, command) for name in names if name != "C"],
                    [options.ours, "--inetd", f"--command={command}"])
        print("bytecode: " + ("as the environment has it" if options.cold_bytecode
                              else f"a private cache, warmed ({os.environ['PYTHONPYCACHEPREFIX']})"))
        start_times: Dict[str, List[float]] = {}
        if "start" in groups:
            servers = {name: server_argv(name, options, command)[:2] for name in names if name != AIOSMTPD}
            runs = options.start_runs or (START_RUNS_QUICK if options.quick else START_RUNS)
            start_times = start_to_listening(servers, runs)
        targets = [Target(name, server_argv(name, options, command)) for name in names]
        sink_targets = [Target(name, server_argv(name, options, sink)) for name in names] if sink else []
        inetd_targets = [("ours", [options.ours, "--inetd", f"--command={command}"])]
        if "C" in names:
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
        load_samples: Samples = {}
        tls_samples: TlsSamples = {}
        described = ""
        loads = daemon_loads(options.quick)
        extra = [sink_load(loads)] if sink else []
        commands = {load.key: command for load in loads}
        commands.update({load.key: sink_command for load in extra})
        if groups & {"daemon", "inetd"} or tls_target is not None:
            with multiprocessing.get_context("fork").Pool(16) as pool:
                for round_number in range(rounds):
                    if "daemon" in groups:
                        measure_floors(loads + extra, commands, options.quick, load_samples)
                        for target in rotated(targets, round_number):
                            run_daemon(pool, target, loads, samples, load_samples, counter)
                        for target in rotated(sink_targets, round_number):
                            run_daemon(pool, target, extra, samples, load_samples, counter)
                    if "inetd" in groups:
                        run_inetd(inetd_targets, 5 if options.quick else 40, samples)
                    if tls_target is not None and certificate is not None:
                        described = run_tls(pool, tls_target, certificate[0], tls_sessions, round_number,
                                            tls_samples)
        report_all(loads + extra, load_samples, commands, samples, rounds, counter, start_times,
                   options.quick)
        if tls_samples:
            report_tls(tls_samples, tls_sessions, described)
        report_aims(load_samples, samples, start_times)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report_all(loads: List[Load], load_samples: Samples, commands: Dict[str, str], samples: Samples,
               rounds: int, counter: Optional[Counter], start_times: Dict[str, List[float]],
               quick: bool) -> None:
    """The tables of loads 1 to 3 and 2s, of rows 4 to 6 and of row 7."""
    if load_samples:
        print()
        print(cpu_method(counter))
        report_loads(loads, load_samples, commands, quick)
    if samples:
        report(samples, rounds)
    if start_times:
        report_start(start_times)
