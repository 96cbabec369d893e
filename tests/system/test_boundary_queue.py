"""The queue seen by root next to an unprivileged --user (issue 17, items 1
and 2): files nobody planted in a queue directory nobody owns are never
followed, waited on, read as mail, delivered or removed; root delivers
nothing as root from such a directory; DIR is checked at start; and
--queue-flush signals no pid it read from DIR.

Everything runs as root with --user=nobody, in a directory nobody owns
under a parent nobody cannot write; what nobody does is done as nobody
(setpriv)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from tests import helpers

NOBODY = pwd.getpwnam("nobody")
CONVERSATION = (b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
                b"DATA\r\nSubject: legit\r\n\r\nhello\r\n.\r\nQUIT\r\n")
# Delivers by writing the uid it runs as, then the mail, into a file of OUT.
RECORD = """#!/bin/sh
file=$(mktemp {out}/mail.XXXXXX)
{{ id -u; cat; }} > "$file"
"""
PLANTED_ID = "20200101000000000000-1-aaaaaa"
FIFO_ID = "20200101000000000001-1-bbbbbb"


@pytest.fixture(autouse=True)
def root() -> None:
    helpers.need_root("the privilege boundary is root's: run as root")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A root-owned 0755 directory nobody can enter but not write."""
    path = Path(tempfile.mkdtemp(prefix="msmtpd-boundary-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_nobody(script: str, **kwargs: object) -> subprocess.Popen[str]:
    """``sh -c script`` as nobody:nogroup, without supplementary groups."""
    return subprocess.Popen([helpers.tool("setpriv"), f"--reuid={NOBODY.pw_uid}",
                             f"--regid={NOBODY.pw_gid}", "--clear-groups", "sh", "-c", script],
                            text=True, **kwargs)  # type: ignore[call-overload]


def nobody_runs(script: str) -> None:
    process = as_nobody(script, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, (out, err)


def nobody_queue(shared: Path) -> Path:
    """What `install -d -m 0700 -o nobody -g nogroup DIR` makes."""
    queue = shared / "queue"
    queue.mkdir(mode=0o700)
    os.chown(queue, NOBODY.pw_uid, NOBODY.pw_gid)
    return queue


def recorder(shared: Path) -> Path:
    out = shared / "out"
    out.mkdir()
    out.chmod(0o777)
    script = shared / "record.sh"
    script.write_text(RECORD.format(out=out))
    script.chmod(0o755)
    return script


def recorded(shared: Path) -> List[str]:
    return [p.read_text(errors="replace") for p in sorted((shared / "out").glob("mail.*"))]


def msmtpd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helpers.program("msmtpd"), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def plant(queue: Path, secret: Path, fifo: bool = True) -> None:
    """As nobody: an envelope for attacker@evil.example beside a message
    that is a symbolic link to root's secret; an envelope that is a FIFO."""
    envelope = (f"id: {PLANTED_ID}\nsender: attacker@evil.example\nrecipient: attacker@evil.example\n"
                "arrived: 2020-01-01T00:00:00.000Z\nclient: x\nsize: 1\nattempts: 0\n"
                "next-try: 2020-01-01T00:00:00.000Z\nlast-try: \nlast-error: \n")
    nobody_runs(f"cd {queue} && printf '%s' '{envelope}' > {PLANTED_ID}.env"
                f" && ln -s {secret} {PLANTED_ID}.msg"
                + (f" && mkfifo {FIFO_ID}.env && echo mail > {FIFO_ID}.msg" if fifo else ""))


def queue_with_planted_files(shared: Path, tmp_path: Path, fifo: bool) -> Tuple[Path, Path]:
    """A nobody-owned queue holding one mail nobody sent through msmtpd,
    and the planted files; and root's secret file."""
    queue = nobody_queue(shared)
    secret = tmp_path / "secret"  # root's, in a directory nobody cannot enter
    secret.write_text("TOP SECRET\n")
    secret.chmod(0o600)
    stored = helpers.run_inetd([f"--queue={queue}", "--user=nobody"], CONVERSATION)
    assert b"queued as" in stored.stdout, stored.stderr
    plant(queue, secret, fifo)
    return queue, secret


def test_roots_queue_list_neither_follows_nor_waits_on_planted_files(shared: Path,
                                                                    tmp_path: Path) -> None:
    queue, secret = queue_with_planted_files(shared, tmp_path, fifo=True)
    try:
        listing = msmtpd(f"--queue={queue}", "--queue-list", timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("--queue-list hangs on a FIFO named ID.env")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert (f"{PLANTED_ID} queued refused: {PLANTED_ID}.msg is a symbolic link;"
            " never read, delivered or removed") in lines, lines
    assert (f"{FIFO_ID} queued refused: {FIFO_ID}.env is a FIFO, not a regular file;"
            " never read, delivered or removed") in lines, lines
    assert sum(" queued age " in line for line in lines) == 1, lines  # the legit mail


def test_roots_flush_delivers_as_the_queues_owner_and_never_a_planted_file(
        shared: Path, tmp_path: Path) -> None:
    queue, secret = queue_with_planted_files(shared, tmp_path, fifo=False)
    log, command = tmp_path / "flush.log", recorder(shared)
    flush = msmtpd(f"--queue={queue}", "--queue-flush", f"--command={command}", f"--log={log}",
                   timeout=60)
    mails = recorded(shared)
    assert not any("TOP SECRET" in mail for mail in mails), mails
    # The legit mail is delivered, as the queue's owner: root never delivers from it.
    assert [mail.split("\n", 1)[0] for mail in mails] == [str(NOBODY.pw_uid)], mails
    assert "Subject: legit" in mails[0]
    assert flush.returncode == 75, flush.stderr  # the refused mail stays queued
    text = log.read_text()
    assert text.count(f"queue {PLANTED_ID}: refused: {PLANTED_ID}.msg is a symbolic link;") == 1
    # Never removed, never moved: nobody's files are where nobody put them.
    assert os.readlink(queue / f"{PLANTED_ID}.msg") == str(secret)
    assert (queue / f"{PLANTED_ID}.env").exists()
    assert secret.read_text() == "TOP SECRET\n" and secret.stat().st_uid == 0
    # A FIFO planted as an envelope holds up no flush.
    nobody_runs(f"mkfifo {queue}/{FIFO_ID}.env && echo x > {queue}/{FIFO_ID}.msg")
    try:
        again = msmtpd(f"--queue={queue}", "--queue-flush", f"--command={command}",
                       f"--log={log}", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("--queue-flush hangs on a FIFO named ID.env")
    assert again.returncode == 75
    assert log.read_text().count(f"queue {FIFO_ID}: refused: {FIFO_ID}.env is a FIFO") == 1
    assert (queue / f"{FIFO_ID}.env").is_fifo()


def test_the_runner_as_nobody_reports_planted_files_once_and_goes_on(shared: Path,
                                                                     tmp_path: Path) -> None:
    queue = nobody_queue(shared)
    secret = tmp_path / "secret"
    secret.write_text("TOP SECRET\n")
    plant(queue, secret)
    log = tmp_path / "daemon.log"
    with helpers.Server([f"--queue={queue}", "--user=nobody", f"--command={recorder(shared)}",
                         f"--log={log}"]) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
            client.sendmail("a@example.org", ["b@example.org"], "Subject: legit\r\n\r\nhi\r\n")
        assert helpers.wait_until(lambda: len(recorded(shared)) == 1, timeout=20), log.read_text()
        time.sleep(1.5)  # a second look at the planted mails would show now
        assert server.stop() == 0
    text = log.read_text()
    assert text.count(f"queue {PLANTED_ID}: refused: {PLANTED_ID}.msg is a symbolic link") == 1
    assert text.count(f"queue {FIFO_ID}: refused: {FIFO_ID}.env is a FIFO") == 1, text
    assert not any("TOP SECRET" in mail for mail in recorded(shared))
    assert (queue / f"{PLANTED_ID}.msg").is_symlink() and (queue / f"{FIFO_ID}.env").is_fifo()


def bad_directory(shared: Path, kind: str) -> Path:
    """A queue directory that must be refused at start, as ``kind`` says."""
    queue = shared / "queue"
    if kind == "symlink":
        target = nobody_queue(shared).rename(shared / "real")
        queue.symlink_to(target)
    elif kind == "file":
        queue.write_text("")
    elif kind == "group-writable":
        nobody_queue(shared).chmod(0o770)
    elif kind == "someone else's":
        queue.mkdir(mode=0o700)
        os.chown(queue, 1, 1)  # daemon: neither root nor --user
    elif kind == "root's, before --user":
        queue.mkdir(mode=0o700)  # an earlier run without --user made it
        (queue / "failed").mkdir(mode=0o700)
    return queue


REFUSALS = {
    "symlink": "is a symbolic link",
    "file": "is a regular file, not a directory",
    "group-writable": "is writable by group or others (mode 0770)",
    "someone else's": "is owned by daemon (uid 1), not by root or --user nobody",
    "root's, before --user": "--user nobody cannot write queue directory",
}


@pytest.mark.parametrize("kind", sorted(REFUSALS))
@pytest.mark.parametrize("mode", ["daemon", "inetd", "list", "flush"])
def test_a_queue_directory_not_to_trust_is_refused_at_start(shared: Path, kind: str,
                                                            mode: str) -> None:
    queue = bad_directory(shared, kind)
    args = [f"--queue={queue}", "--user=nobody", "--command=/bin/true"]
    args += {"daemon": [f"--port={helpers.free_port()}", "--interface=127.0.0.1"],
             "inetd": ["--inetd"], "list": ["--queue-list"], "flush": ["--queue-flush"]}[mode]
    try:
        result = msmtpd(*args, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"msmtpd {mode} started on a queue directory that {REFUSALS[kind]}")
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert REFUSALS[kind] in result.stderr, result.stderr
    assert result.stderr.startswith("msmtpd: ") and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("mode", ["daemon", "inetd"])
def test_root_serves_no_queue_of_nobody_without_user(shared: Path, mode: str) -> None:
    queue = nobody_queue(shared)
    args = [f"--queue={queue}", "--command=/bin/true"]
    args += ["--inetd"] if mode == "inetd" else [f"--port={helpers.free_port()}"]
    try:
        result = msmtpd(*args, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("root's daemon serves a queue nobody owns, as root")
    assert result.returncode == 3
    assert "is owned by nobody (uid 65534), not by root or the user msmtpd runs as" in result.stderr


def test_flush_signals_no_pid_from_the_queue_directory(shared: Path, tmp_path: Path) -> None:
    queue = nobody_queue(shared)
    victim = subprocess.Popen(["sleep", "300"])  # a process of our own, root's
    holder = as_nobody(f"exec flock {queue}/.runner sh -c 'echo {victim.pid} > {queue}/.runner;"
                       " sleep 300'")
    try:
        assert helpers.wait_until(lambda: (queue / ".runner").exists() and (
            queue / ".runner").read_text().strip() == str(victim.pid), timeout=10)
        flush = msmtpd(f"--queue={queue}", "--queue-flush", "--command=/bin/true", timeout=60)
        time.sleep(0.5)
        assert victim.poll() is None, f"the victim died: status {victim.returncode}"
        assert flush.returncode == 0, flush.stderr  # nothing queued: done here, as nobody
    finally:
        for process in (victim, holder):
            process.kill()
            process.wait()


FAIL_UNTIL = """#!/bin/sh
[ -e {gate} ] && exit 75
exec {record} "$@"
"""


def test_roots_flush_wakes_the_runner_of_nobody_through_the_fifo(shared: Path,
                                                                 tmp_path: Path) -> None:
    queue = nobody_queue(shared)
    gate = shared / "gate"
    gate.touch()
    script = shared / "gated.sh"
    script.write_text(FAIL_UNTIL.format(gate=gate, record=recorder(shared)))
    script.chmod(0o755)
    log = tmp_path / "daemon.log"
    slow = dict(os.environ, MSMTPD_QUEUE_RETRY_SECONDS="3600")
    with helpers.Server([f"--queue={queue}", "--user=nobody", f"--command={script}",
                         f"--log={log}"], env=slow) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
            client.sendmail("a@example.org", ["b@example.org"], "Subject: later\r\n\r\nhi\r\n")
        assert helpers.wait_until(lambda: "attempt 1:" in log.read_text(), timeout=10)
        gate.unlink()
        flush = msmtpd(f"--queue={queue}", "--queue-flush", timeout=60)  # root, no --user
        assert flush.returncode == 0, flush.stderr
        assert "trying all 1 queued mails now (--queue-flush)" in log.read_text()
        [mail] = recorded(shared)
        assert mail.startswith(f"{NOBODY.pw_uid}\n")  # by the daemon's runner, as nobody
        os.kill(server.pid, signal.SIGUSR1)  # the master's own signal still works
        assert helpers.wait_until(lambda: "(SIGUSR1)" in log.read_text(), timeout=10)
        assert server.stop() == 0
