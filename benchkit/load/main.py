"""Load msmtpd and check that every acknowledged mail arrived exactly once.

The tool sends N mails over C concurrent SMTP sessions (M mails per session),
each mail with a Message-ID of its own, and measures throughput and latency.
Then it reads the store the delivery command wrote to and classifies every
stored file against what the clients saw:

* an attempt answered 250 must have arrived exactly once (else *lost* or
  *duplicated*);
* an attempt whose reply never came (the connection dropped after the final
  dot) may have arrived: that is the RFC 1047 window, counted on its own;
* an attempt refused with 4xx/5xx, or cut before its final dot was sent, must
  not have arrived;
* nothing else may arrive, and what arrives must be what was sent.

With ``--start`` the tool runs its own msmtpd (the console script next to this
Python, never a shim or the C msmtpd), delivering into a temporary Maildir,
and ``--kill-workers RATE`` SIGKILLs random workers of it while the load runs.
Clients treat a dropped connection or a non-250 reply as "not acknowledged"
and, with ``--retries``, send the mail again with the same Message-ID (an
``X-Load-Attempt`` header tells the attempts apart in the store).

Exit status: 0 when nothing was lost, duplicated, unexpected, damaged or
delivered against a refusal; 1 otherwise; 2 for a usage or start-up error.

With ``--queue`` the started msmtpd runs with ``--queue`` and a delivery
command that defers (exit 75) ``--fail-rate`` of its attempts (default
half): every mail answered 250 must still arrive exactly once, after the
runner's retries (shortened by MSMTPD_QUEUE_RETRY_SECONDS); the tool waits
until the queue is empty before it counts.

``load.py --store DIR [--fail-rate R] [-f SENDER] [--] RECIPIENT...`` is the tool's own tiny
delivery command (Maildir layout, like msmtpd-maildir but with a much
cheaper start: it imports nothing but os and sys).

Examples::

    scripts/load.py --start --mails 2000 --concurrency 32 --max-sessions 16
    scripts/load.py --start --mails 300 --kill-workers 2 --retries 2 --json
    scripts/load.py --start --queue --mails 2000 --concurrency 32 --fail-rate 0.5
    scripts/load.py --host 127.0.0.1 --port 2525 --maildir ~/msmtpd-mail --mails 100
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from benchkit.load.killer import KillStats, killer, workers_of
from benchkit.load.mails import ACKED, Mail, make_body
from benchkit.load.senders import Load
from benchkit.load.server import BIN, SCRIPT, StartedServer, delivery_command, drain
from benchkit.load.summary import percentiles, summary
from benchkit.load.verification import settle, store_files, verify

# A path that goes into the delivery command line verbatim: no blanks and
# nothing a shell would read.
SAFE_PATH = re.compile(r"^[\w./+@:,-]+$")


def parse(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="load.py", description="Send mails to msmtpd concurrently and check that every mail "
        "answered 250 was delivered exactly once.")
    parser.add_argument("--mails", "-n", type=int, default=1000, help="mails to send (default 1000)")
    parser.add_argument("--concurrency", "-c", type=int, default=16,
                        help="concurrent SMTP sessions (default 16)")
    parser.add_argument("--per-session", "-m", type=int, default=1,
                        help="mails per session (default 1)")
    parser.add_argument("--size", type=int, default=1024,
                        help="approximate body size in bytes (default 1024)")
    parser.add_argument("--retries", type=int, default=0,
                        help="send a mail not answered 250 again, with the same Message-ID, "
                        "up to this many times (default 0)")
    parser.add_argument("--host", default="127.0.0.1", help="msmtpd to load (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=25, help="its port (default 25)")
    parser.add_argument("--maildir", type=Path,
                        help="the Maildir a running msmtpd delivers to (needed without --start)")
    parser.add_argument("--start", action="store_true",
                        help="start an msmtpd of our own on a free port, delivering into a temporary Maildir")
    parser.add_argument("--msmtpd", default=str(BIN / "msmtpd"),
                        help="the msmtpd to start (default: the console script next to this Python)")
    parser.add_argument("--max-sessions", type=int, default=16, help="--max-sessions of the started msmtpd")
    parser.add_argument("--store-with", choices=("self", "maildir"), default="self",
                        help="delivery command of the started msmtpd: this script's --store "
                        "(default, fast start) or msmtpd-maildir")
    parser.add_argument("--kill-workers", type=float, default=0.0, metavar="RATE",
                        help="SIGKILL a random worker of the started msmtpd RATE times per second")
    parser.add_argument("--kill-target", choices=("any", "delivering"), default="any",
                        help="which workers --kill-workers picks from (default any)")
    parser.add_argument("--seed", type=int, help="seed for choosing the workers to kill")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="timeout of every socket operation, in seconds (default 30)")
    parser.add_argument("--deadline", type=float, default=300.0,
                        help="stop everything after this many seconds (default 300)")
    parser.add_argument("--queue", action="store_true",
                        help="the started msmtpd stores and forwards (--queue); wait until its "
                        "queue is empty before counting")
    parser.add_argument("--fail-rate", type=float, default=0.5,
                        help="with --queue: share of delivery attempts deferred with 75 (default 0.5)")
    parser.add_argument("--queue-workers", type=int, default=4,
                        help="with --queue: --queue-workers of the started msmtpd (default 4)")
    parser.add_argument("--queue-retry", type=float, default=0.1,
                        help="with --queue: first retry delay in seconds (default 0.1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON report on stdout (the summary goes to stderr)")
    options = parser.parse_args(argv)
    if options.mails < 1 or options.concurrency < 1 or options.per_session < 1 or options.retries < 0:
        parser.error("--mails, --concurrency and --per-session must be positive, --retries not negative")
    if options.size < 0 or options.timeout <= 0 or options.deadline <= 0 or options.kill_workers < 0:
        parser.error("--size, --timeout, --deadline and --kill-workers must be positive")
    if not options.start and options.maildir is None:
        parser.error("give --start, or --maildir with the store of the running msmtpd")
    if options.queue and (not options.start or options.store_with != "self"):
        parser.error("--queue needs --start with the tool's own store")
    if not 0 <= options.fail_rate < 1 or options.queue_workers < 1 or options.queue_retry <= 0:
        parser.error("--fail-rate must be from 0 to under 1, --queue-workers and --queue-retry positive")
    if options.kill_workers and not options.start:
        parser.error("--kill-workers needs --start (it kills workers of the msmtpd it started)")
    if options.start:
        if not os.access(options.msmtpd, os.X_OK):
            parser.error(f"{options.msmtpd} is not an executable msmtpd")
        for path in (options.msmtpd, sys.executable, str(SCRIPT), str(BIN / "msmtpd-maildir")):
            if not SAFE_PATH.match(path):
                parser.error(f"{path}: a path with blanks or shell characters cannot go into --command")
    return options


def run(options: argparse.Namespace) -> Dict[str, Any]:
    begun = time.monotonic()
    deadline = begun + options.deadline
    run_id = f"{os.getpid()}.{random.getrandbits(32):08x}"
    workdir: Optional[Path] = None
    server: Optional[StartedServer] = None
    stop = threading.Event()
    kill_stats = KillStats()
    report: Dict[str, Any] = {"stopped": ""}
    try:
        if options.start:
            workdir = Path(tempfile.mkdtemp(prefix="msmtpd-load-"))
            maildir = workdir / "maildir"
            for sub in ("tmp", "new", "cur"):
                (maildir / sub).mkdir(parents=True)
            server = StartedServer(options, workdir, delivery_command(options, maildir))
            server.wait_ready(min(30.0, max(1.0, deadline - time.monotonic())))
            options.port = server.port
            options.host = "127.0.0.1"
        else:
            maildir = options.maildir.expanduser().resolve()
        before = set(store_files(maildir))
        mails = [Mail(index, f"<load.{run_id}.{index}@msmtpd.test>", f"mail{index}@example.test",
                      make_body(index, run_id, options.size)) for index in range(options.mails)]
        load = Load(options, mails, stop)
        killer_thread = None
        if options.kill_workers and server is not None:
            killer_thread = threading.Thread(
                target=killer, name="killer", daemon=True,
                args=(server.process.pid, options.kill_workers, options.kill_target,
                      random.Random(options.seed), stop, kill_stats))
        started = time.monotonic()
        threads = load.run()
        if killer_thread is not None:
            killer_thread.start()
        while any(thread.is_alive() for thread in threads):
            if time.monotonic() > deadline:
                report["stopped"] = f"deadline of {options.deadline:g} s reached"
                break
            if server is not None and server.process.poll() is not None:
                report["stopped"] = f"msmtpd exited with status {server.process.returncode}"
                break
            if load.gave_up:
                report["stopped"] = load.gave_up
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        stop.set()
        load.registry.cut_all()
        for thread in threads:
            thread.join(max(0.1, min(options.timeout, deadline + 5 - time.monotonic())))
        if killer_thread is not None:
            killer_thread.join(5)
        if server is not None and options.queue:
            report["queue"] = drain(server, deadline)
            if report["queue"]["left"]:
                report["stopped"] = report["stopped"] or "the queue did not empty before the deadline"
        report["server"] = {"started": server is not None, "max_sessions": options.max_sessions}
        if server is not None:
            report["server"]["workers_at_end"] = len(workers_of(server.process.pid))
            report["server"]["exit_status"] = server.stop(max(5.0, deadline - time.monotonic()))
        settled, stragglers = settle(maildir, max(time.monotonic() + 2, deadline))
        if not settled:
            report["stopped"] = report["stopped"] or "the store did not settle before the deadline"
        files = {name: path for name, path in store_files(maildir).items() if name not in before}
        verdict = verify(mails, files, load.date)
        acked = sum(mail.acked for mail in mails)
        never = sum(not mail.attempts for mail in mails)
        problems = [f"{kind}: {item}" for kind in ("lost", "duplicated", "refused_delivered", "premature",
                                                   "unexpected", "corrupt")
                    for item in getattr(verdict, kind)[:10]]
        report.update({
            "run": run_id,
            "concurrency": options.concurrency,
            "per_session": options.per_session,
            "retries": options.retries,
            "size": options.size,
            "store": options.store_with if server is not None else str(maildir),
            "mails": {"total": len(mails), "acknowledged": acked,
                      "not_acknowledged": len(mails) - acked - never, "never_sent": never,
                      "attempts": sum(len(m.attempts) for m in mails)},
            "sessions": load.sessions,
            "session_failures": load.session_failures,
            "seconds": round(elapsed, 3),
            "throughput": round(acked / elapsed, 2) if elapsed > 0 else 0.0,
            "latency_ms": {
                "mail": percentiles([a.seconds for m in mails for a in m.attempts if a.outcome == ACKED]),
                "session": percentiles(load.session_seconds),
            },
            "kills": {"rate": options.kill_workers, "target": options.kill_target, "done": kill_stats.kills,
                      "while_delivering": kill_stats.while_delivering, "missed": kill_stats.missed},
            "stragglers": stragglers,
            "verdict": {
                "files": verdict.files, "delivered_once": verdict.delivered_once,
                "lost": len(verdict.lost), "duplicated": len(verdict.duplicated),
                "refused_delivered": len(verdict.refused_delivered), "premature": len(verdict.premature),
                "unexpected": len(verdict.unexpected), "corrupt": len(verdict.corrupt),
                "window": len(verdict.window), "window_repeats": len(verdict.window_repeats),
            },
            "window": verdict.window[:50],
            "problems": problems,
            "ok": verdict.ok,
        })
        return report
    finally:
        stop.set()
        if server is not None:
            server.stop()
        if workdir is not None:
            if options.keep:
                report["kept"] = str(workdir)
            else:
                shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    options = parse(argv)

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the clean-up

    signal.signal(signal.SIGTERM, terminate)
    try:
        report = run(options)
    except RuntimeError as exc:
        sys.stderr.write(f"load.py: {exc}\n")
        return 2
    text = summary(report)
    if options.json:
        sys.stderr.write(text + "\n")
        print(json.dumps(report, indent=2))
    else:
        print(text)
    return 0 if report["ok"] else 1
