"""--queue-rate on a real daemon: a burst of mails is accepted at once and
handed to the command at most N per PERIOD in any window, measured from the
command's own start times; --queue-list shows the mails waiting for the
rate; a restart in the middle keeps the pace (the start times are in DIR);
without --queue it is a usage error."""

from __future__ import annotations

import smtplib
import subprocess
import time
from pathlib import Path
from typing import List

from tests.helpers import Server, delivered, program, run_inetd, wait_until

RATE, PERIOD = 5, 2.0
# The runner paces the starts it records; the command's own clock sees them
# a few milliseconds later, unevenly (a thread, a fork, a shell): the
# windows measured here are this much shorter than PERIOD.
JITTER = 0.25
WAIT = 30.0
# Writes its start time, then stores the mail.
COMMAND = """#!/bin/sh
date +%s.%N >> {starts}
exec "{maildir}" "{maildir_dir}" "$@"
"""


def deliver_command(tmp_path: Path) -> str:
    script = tmp_path / "deliver.sh"
    script.write_text(COMMAND.format(starts=tmp_path / "starts", maildir=program("msmtpd-maildir"),
                                     maildir_dir=tmp_path / "mail"))
    script.chmod(0o755)
    return f"{script} -f %F --"


def starts(tmp_path: Path) -> List[float]:
    path = tmp_path / "starts"
    return sorted(float(line) for line in path.read_text().split()) if path.exists() else []


def busiest_window(times: List[float]) -> int:
    """The most command starts in any window of PERIOD (less the jitter)."""
    return max((sum(1 for t in times if first <= t < first + PERIOD - JITTER) for first in times),
               default=0)


def burst(port: int, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as smtp:
        for n in range(count):
            smtp.sendmail("a@example.org", [f"b{n}@example.org"], f"Subject: {n}\r\n\r\nmail {n}\r\n")


def daemon(tmp_path: Path) -> Server:
    return Server([f"--queue={tmp_path / 'queue'}", f"--command={deliver_command(tmp_path)}",
                   f"--queue-rate={RATE}/{PERIOD:g}s", f"--log={tmp_path / 'log'}"])


def queue_list(tmp_path: Path) -> str:
    return subprocess.run([program("msmtpd"), f"--queue={tmp_path / 'queue'}", "--queue-list"],
                          capture_output=True, text=True, timeout=WAIT, check=True).stdout


def test_a_burst_is_delivered_at_the_rate_and_listed_as_waiting(tmp_path: Path) -> None:
    mails = 3 * RATE
    with daemon(tmp_path) as server:
        began = time.time()
        burst(server.port, mails)
        accepted = time.time() - began
        wait_until(lambda: len(starts(tmp_path)) >= RATE, WAIT, "the first window's deliveries")
        listing = queue_list(tmp_path)
        assert listing.count("waiting for the rate") >= mails - 2 * RATE, listing
        wait_until(lambda: len(delivered(tmp_path / "mail")) == mails, WAIT, "every mail")
    times = starts(tmp_path)
    assert accepted < PERIOD  # the burst is accepted at once ...
    assert busiest_window(times) == RATE  # ... and delivered at the rate
    assert times[-1] - times[0] >= 2 * PERIOD - JITTER
    assert "waiting for the rate" not in queue_list(tmp_path)


def test_a_restart_in_the_middle_keeps_the_pace(tmp_path: Path) -> None:
    mails = 2 * RATE
    with daemon(tmp_path) as server:
        burst(server.port, mails)
        wait_until(lambda: len(starts(tmp_path)) >= RATE, WAIT, "the first window's deliveries")
    with daemon(tmp_path):  # at once, inside the first window
        wait_until(lambda: len(delivered(tmp_path / "mail")) == mails, WAIT, "every mail")
    times = starts(tmp_path)
    assert len(times) == mails
    assert busiest_window(times) == RATE


def test_a_flush_without_a_daemon_keeps_the_rate(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    args = [f"--queue={queue}", f"--command={deliver_command(tmp_path)}"]
    mail = b"MAIL FROM:<s@example.test>\r\nRCPT TO:<a@example.test>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\n"
    session = run_inetd(args, b"EHLO x\r\n" + mail * (RATE + 2) + b"QUIT\r\n")
    assert session.stdout.count(b"queued as") == RATE + 2
    flush = subprocess.run([program("msmtpd"), *args, "--queue-flush", "--queue-rate=5/1h"],
                           capture_output=True, text=True, timeout=WAIT)
    assert flush.returncode == 75, flush.stderr
    assert len(delivered(tmp_path / "mail")) == RATE
    listing = queue_list(tmp_path)  # the rate comes from DIR/.rate
    assert listing.count("next try: waiting for the rate") == 2, listing
    again = subprocess.run([program("msmtpd"), *args, "--queue-flush", "--queue-rate=5/1h"],
                           capture_output=True, text=True, timeout=WAIT)
    assert again.returncode == 75 and len(delivered(tmp_path / "mail")) == RATE


def test_queue_rate_needs_queue() -> None:
    done = subprocess.run([program("msmtpd"), "--queue-rate=5/1m"], capture_output=True, timeout=WAIT)
    assert done.returncode == 3 and b"--queue-rate needs --queue" in done.stderr
