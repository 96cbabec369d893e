"""A queue on a full disk (issue 17, item 9): an attempt whose outcome
cannot be recorded (the envelope cannot be rewritten, the mail cannot move
to failed/) backs off like a deferral, doubling, with one log line per
back-off, instead of running the command again every second or so."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from tests import helpers

# Counts its runs (a time stamp per line, in a file named after the last
# recipient, outside the full disk), then fails: permanently (exit 1) for
# perm@..., temporarily (exit 75) for temp@...
COMMAND = """#!/bin/sh
for last; do :; done
date +%s.%N >> {runs}/"$last"
cat > /dev/null
case $last in perm*) exit 1 ;; esac
exit 75
"""
WATCH_SECONDS = 15.0
FIRST_RETRY = "1"


@pytest.fixture
def full_queue(tmp_path: Path) -> Iterator[Path]:
    """A queue directory on a 1 MiB tmpfs this test mounts (and unmounts)."""
    helpers.need_root("mounting a small tmpfs needs root")
    queue = tmp_path / "queue"
    queue.mkdir(mode=0o700)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(queue)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        helpers.unavailable(f"cannot mount a tmpfs: {mount.stderr.strip()}")
    try:
        yield queue
    finally:
        subprocess.run(["umount", str(queue)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the disk is full; it is removed to make room."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def runs(directory: Path, recipient: str) -> List[float]:
    path = directory / recipient
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def doubling(times: List[float]) -> bool:
    gaps = [b - a for a, b in zip(times, times[1:])]
    return all(later >= 1.6 * earlier for earlier, later in zip(gaps, gaps[1:]))


def test_a_full_disk_backs_off_doubling_and_logs_once_per_back_off(full_queue: Path,
                                                                     tmp_path: Path) -> None:
    counted = tmp_path / "runs"
    counted.mkdir()
    script = tmp_path / "fail.sh"
    script.write_text(COMMAND.format(runs=counted))
    script.chmod(0o755)
    args = [f"--queue={full_queue}", f"--command={script} -f %F --"]
    ids = {}
    for recipient in ("perm@example.test", "temp@example.test"):
        stored = helpers.run_inetd(args, b"EHLO x\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<"
                                   + recipient.encode() + b">\r\nDATA\r\nSubject: s\r\n\r\nx\r\n"
                                   b".\r\nQUIT\r\n")
        assert b"queued as" in stored.stdout, stored.stderr
        ids[recipient] = stored.stdout.split(b"queued as ")[1].split(b"\r\n")[0].decode()
    # A daemon ran on DIR before: its runner lock file is there, with a pid.
    lock = os.open(full_queue / ".runner", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(lock, b"1\n")
    os.close(lock)
    filler = fill(full_queue)
    log = tmp_path / "log"
    env = dict(os.environ, MSMTPD_QUEUE_RETRY_SECONDS=FIRST_RETRY)
    with helpers.Server([*args, f"--log={log}"], env=env) as server:
        time.sleep(WATCH_SECONDS)
        perm, temp = runs(counted, "perm@example.test"), runs(counted, "temp@example.test")
        text = log.read_text()
        # With room again, the permanent failure reaches failed/ at the next try.
        filler.unlink()
        os.kill(server.pid, signal.SIGUSR1)
        assert helpers.wait_until(lambda: (full_queue / "failed" / f"{ids['perm@example.test']}.env")
                                  .exists(), timeout=10), log.read_text()
        assert server.stop() == 0
    # The attempts whose outcome was lost count all the same.
    failed = (full_queue / "failed" / f"{ids['perm@example.test']}.env").read_text()
    assert f"attempts: {len(runs(counted, 'perm@example.test'))}\n" in failed, failed
    # 1 s, then 2, 4, 8: at most 5 runs in 15 s (not one every second or so).
    for times in (perm, temp):
        assert 3 <= len(times) <= 5, (perm, temp, text)
        assert doubling(times), times
    perm_id, temp_id = ids["perm@example.test"], ids["temp@example.test"]
    cannot_move = text.count(f"queue {perm_id}: cannot move it to failed/")
    cannot_record = text.count(f"queue {temp_id}: cannot record the attempt")
    assert cannot_move in (len(perm), len(perm) - 1), text
    assert cannot_record in (len(temp), len(temp) - 1), text
    assert "No space left on device; next try in " in text
    # One line for the attempt, one for what could not be recorded: no more.
    for mail_id, times in ((perm_id, perm), (temp_id, temp)):
        lines = [line for line in text.splitlines() if mail_id in line]
        assert len(lines) <= 2 * len(times), lines
