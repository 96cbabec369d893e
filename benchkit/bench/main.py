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
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from benchkit.bench.cpu import usable_counter
from benchkit.bench.daemon_loads import daemon_loads, run_daemon
from benchkit.bench.inetd import inetd_rate, run_inetd
from benchkit.bench.programs import (
    C_MSMTPD,
    FLOOR,
    OURS,
    PYTHON,
    build_discard,
    check_interpreter,
    use_bytecode_cache,
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

GROUPS = {"daemon": "rows 1, 2, 3, 5 and 6", "inetd": "row 4", "start": "row 7",
          "tls": "row 8, STARTTLS beside plain text (ours only)"}


def warm_up(ours: Sequence[str], inetd: Sequence[str]) -> None:
    """One untimed start of each Python program, to fill the bytecode cache."""
    time_to_listen(ours)
    inetd_rate(inetd, 1)
    time_to_exit([PYTHON, "-c", "pass"])


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
