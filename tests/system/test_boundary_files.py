"""The privilege boundary for the log and pid files (issue 17, item 3).

The master is root; with ``--user=nobody`` the log may lie in a directory
nobody writes, and so may the pid file.  Acting as nobody (``setpriv``),
the tests plant a symlink, a FIFO, a file of nobody's or a hard link where
root will open the file, at start-up or at the next SIGHUP, and check that
a root-only victim file keeps its owner, mode and content, and that the
start is refused with one line and exit status 3 (or, at SIGHUP, the log
goes on in the file already open and says why)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import pytest

from tests import helpers

WAIT = 15.0
SECRET = b"root's own secret\n"


class Place(NamedTuple):
    """``writes``: a directory nobody owns, under ``base``, which nobody cannot
    write; ``victim``: a root-only file in ``base``."""

    base: Path
    writes: Path
    victim: Path


@pytest.fixture
def place() -> Iterator[Place]:
    helpers.need_root("needs root to act as root and as nobody")
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="msmtpd-boundary-"))
    base.chmod(0o755)
    writes = base / "writes"
    writes.mkdir()
    os.chown(writes, nobody.pw_uid, nobody.pw_gid)
    victim = base / "victim"
    victim.write_bytes(SECRET)
    victim.chmod(0o600)
    try:
        yield Place(base, writes, victim)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def as_nobody(script: str) -> None:
    """Run a shell script as nobody, without root's groups."""
    done = subprocess.run([helpers.tool("setpriv"), "--reuid=nobody", "--regid=nogroup",
                           "--clear-groups", "sh", "-ec", script],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr


def assert_untouched(victim: Path) -> None:
    info = victim.lstat()
    assert (info.st_uid, info.st_gid) == (0, 0), f"the victim now belongs to {info.st_uid}"
    assert stat.S_IMODE(info.st_mode) == 0o600, oct(info.st_mode)
    assert victim.read_bytes() == SECRET, victim.read_bytes()[:300]


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def ehlo(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        reader = sock.makefile("rb")
        greeting = reader.readline()
        sock.sendall(b"EHLO client.test\r\nQUIT\r\n")
        return greeting + reader.read()


def start(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """A start that must fail: at most WAIT seconds, then it is stopped."""
    process = subprocess.Popen([helpers.program("msmtpd"), f"--port={helpers.free_port()}",
                                "--interface=127.0.0.1", "--command=cat >/dev/null; :", *args],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        process.terminate()
        out, err = process.communicate()
        err += "\n(still running: the start was not refused)"
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("msmtpd: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


# -- the log file -----------------------------------------------------------------


PLANTS = {
    "symlink": "ln -s {victim} {path}",
    "fifo": "mkfifo {path}",
}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_log_replaced_before_sighup_is_neither_followed_nor_handed_over(
        place: Place, plant: str) -> None:
    """nobody replaces its log by a symlink to a root-only file (or by a
    FIFO, on which an open for writing would hang root); at SIGHUP root
    neither writes to the victim nor chowns it, and keeps logging to the
    file it had open, saying why."""
    log = place.writes / "msmtpd.log"
    with helpers.Server(["--user=nobody", f"--log={log}", "--max-sessions=1",
                         "--command=cat >/dev/null; :"]) as server:
        assert helpers.wait_until(lambda: "listening on" in text(log), WAIT)
        assert log.stat().st_uid == pwd.getpwnam("nobody").pw_uid
        kept = place.writes / "msmtpd.log.taken"
        as_nobody(f"mv {log} {kept}; " + PLANTS[plant].format(victim=place.victim, path=log))
        os.kill(server.pid, signal.SIGHUP)
        assert helpers.wait_until(lambda: "reopening the log" in kept.read_text(), WAIT)
        time.sleep(0.5)  # the reopen, the hand-over and the workers' reopen
        assert_untouched(place.victim)
        assert helpers.wait_until(lambda: "cannot reopen the log file" in kept.read_text(), WAIT), \
            kept.read_text()
        line = next(x for x in kept.read_text().splitlines() if "cannot reopen" in x)
        assert ("symbolic link" if plant == "symlink" else "not a regular file") in line, line
        assert ehlo(server.port).startswith(b"220 ")  # still serving, still logging
        assert helpers.wait_until(lambda: kept.read_text().count("session from") >= 1, WAIT)
        assert_untouched(place.victim)
        if plant == "symlink":
            assert log.is_symlink()


def test_a_log_symlink_at_start_is_refused(place: Place) -> None:
    log = place.writes / "msmtpd.log"
    as_nobody(f"ln -s {place.victim} {log}")
    refused(start(["--user=nobody", f"--log={log}"]), "symbolic link", str(log))
    assert_untouched(place.victim)


def test_a_hard_link_to_a_root_only_file_is_not_used_as_the_log(place: Place) -> None:
    """Where fs.protected_hardlinks is off, nobody may link a root-only file
    into its directory; root then must neither append to it nor hand it over.
    (Here root makes the link, as such a machine would let nobody do.)"""
    log = place.writes / "msmtpd.log"
    os.link(place.victim, log)
    refused(start(["--user=nobody", f"--log={log}"]), "hard links", str(log))
    assert_untouched(place.victim)


def test_a_log_root_created_is_handed_to_the_user_and_reopened_after_rotation(place: Place) -> None:
    """What must keep working: root creates the log in nobody's directory,
    hands it over, and after a rotation (rename, SIGHUP) does it again."""
    nobody = pwd.getpwnam("nobody")
    log = place.writes / "msmtpd.log"
    with helpers.Server(["--user=nobody", f"--log={log}", "--max-sessions=1",
                         "--command=cat >/dev/null; :"]) as server:
        assert helpers.wait_until(lambda: "listening on" in text(log), WAIT)
        log.rename(place.writes / "msmtpd.log.1")
        os.kill(server.pid, signal.SIGHUP)
        assert helpers.wait_until(lambda: log.exists() and log.stat().st_uid == nobody.pw_uid, WAIT)
        assert ehlo(server.port).startswith(b"220 ")
        assert helpers.wait_until(lambda: "session from" in log.read_text(), WAIT), log.read_text()
        info = log.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == \
            (nobody.pw_uid, nobody.pw_gid, 0o644)


# -- the pid file -----------------------------------------------------------------


PID_PLANTS = {
    "symlink": ("ln -s {victim} {path}", ["symbolic link"]),
    "fifo": ("mkfifo {path}", ["not a regular file"]),
    "nobody's file": ("echo 1 > {path}", ["belongs to uid", "not to root"]),
}


@pytest.mark.parametrize("plant", sorted(PID_PLANTS))
def test_a_pid_file_planted_by_the_user_is_refused_at_start(place: Place, plant: str) -> None:
    """A symlink at the --pidfile path would make root truncate its target
    and write a PID into it; a FIFO or a file of nobody's is no stale pid
    file of root's either."""
    path = place.writes / "msmtpd.pid"
    script, words = PID_PLANTS[plant]
    as_nobody(script.format(victim=place.victim, path=path))
    before = path.lstat()
    result = start(["--user=nobody", f"--pidfile={path}", "--daemon"])
    refused(result, str(path), *words)
    assert_untouched(place.victim)
    after = path.lstat()
    assert (after.st_ino, after.st_uid, after.st_mtime_ns) == \
        (before.st_ino, before.st_uid, before.st_mtime_ns)


def test_a_stale_pid_file_of_roots_is_taken_over_and_removed_on_exit(place: Place) -> None:
    """A pid file left by a master killed with SIGKILL (root's own, one
    link) is still taken over, and removed at the end."""
    path = place.base / "msmtpd.pid"
    path.write_text("999999\n")
    with helpers.Server([f"--pidfile={path}", "--command=cat >/dev/null; :"]) as server:
        assert helpers.wait_until(lambda: path.read_text() == f"{server.pid}\n", WAIT)
    assert not path.exists()


def test_a_pid_file_replaced_while_running_is_not_removed_on_exit(place: Place) -> None:
    """At exit root removes the pid file only if the name still is its own
    file, not what nobody put in its place."""
    path = place.writes / "msmtpd.pid"
    with helpers.Server([f"--pidfile={path}", "--user=nobody", "--command=cat >/dev/null; :"]) as server:
        assert helpers.wait_until(lambda: path.exists() and path.read_text() == f"{server.pid}\n",
                                  WAIT)
        as_nobody(f"rm -f {path}; echo planted > {path}")
    assert path.read_text() == "planted\n"

