"""--queue with real processes: a daemon (master, workers, queue runner),
--inetd sessions, --queue-list and --queue-flush, real delivery commands
(shell scripts around msmtpd-maildir) that fail on purpose, SIGKILL of
the whole process tree, a full spool directory.  Back-off is shortened
through MSMTPD_QUEUE_RETRY_SECONDS (for tests only, not an option)."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

from tests.helpers import (
    Server,
    children,
    delivered,
    descendants,
    kill_quietly,
    need_root,
    program,
    run_inetd,
    unavailable,
    wait_until,
)
from tests.support.queue_daemon import FAST, command, queued, send


def queue_cli(directory: Path, *args: str, env: Optional[Dict[str, str]] = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([program("msmtpd"), f"--queue={directory}", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)




def envelope(directory: Path, mail_id: str, failed: bool = False) -> Dict[str, str]:
    path = (directory / "failed" if failed else directory) / f"{mail_id}.env"
    fields = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, value)
    return fields


def count(tmp_path: Path, recipient: str) -> int:
    path = tmp_path / f"count-{recipient}"
    return int(path.read_text()) if path.exists() else 0


def test_a_mail_deferred_twice_arrives_once_after_retries(tmp_path: Path) -> None:
    queue, log = tmp_path / "queue", tmp_path / "log"
    with Server([f"--queue={queue}", f"--command={command(tmp_path, fails=2)}", f"--log={log}"],
                env=FAST) as server:
        reply = send(server.port, ["one@example.test"])
        assert "queued as" in reply
        mail_id = reply.rsplit(" ", 1)[1]
        assert wait_until(lambda: delivered(tmp_path / "maildir"), timeout=20)
        assert wait_until(lambda: not queued(queue), timeout=10)
        time.sleep(0.5)  # a wrongly repeated delivery would show now
        assert server.stop() == 0
    mails = delivered(tmp_path / "maildir")
    assert len(mails) == 1 and b"Subject: queued" in mails[0]
    assert mails[0].index(b"Received: from") < mails[0].index(b"Subject: queued")
    assert count(tmp_path, "one@example.test") == 3
    text = log.read_text()
    assert f"queued {mail_id}: mail from <sender@example.test> to <one@example.test>" in text
    assert text.count(f"queue {mail_id}: attempt ") == 3
    assert "451 not delivered, command exit status 75 (EX_TEMPFAIL)" in text
    assert f"queue {mail_id}: delivered after 3 attempts" in text
    # One line when queued, one per attempt, one for the outcome.
    assert len([line for line in text.splitlines() if mail_id in line]) == 5
    # Back-off: the first retry after the (shortened) first delay, then doubled.
    assert f"queue {mail_id}: attempt 1: " in text.split("; next try in 0.2 s")[0]
    assert f"queue {mail_id}: attempt 2: " in text.split("; next try in 0.4 s")[0]


def test_69_is_retried_and_1_moves_to_failed_at_once(tmp_path: Path) -> None:
    queue, log = tmp_path / "queue", tmp_path / "log"
    with Server([f"--queue={queue}", f"--command={command(tmp_path)}", f"--log={log}"],
                env=FAST) as server:
        send(server.port, ["perm@example.test"])
        send(server.port, ["temp@example.test"])
        assert wait_until(lambda: len(queued(queue, failed=True)) == 1, timeout=10)
        assert wait_until(lambda: count(tmp_path, "temp@example.test") >= 3, timeout=20)
        listing = queue_cli(queue, "--queue-list")
        assert server.stop() == 0
    assert count(tmp_path, "perm@example.test") == 1
    failed_id = queued(queue, failed=True)[0]
    fields = envelope(queue, failed_id, failed=True)
    assert fields["recipient"] == "perm@example.test"
    assert fields["failed"] == "permanent failure: command exit status 1"
    assert "no such user" in fields["last-error"]
    [temp_id] = queued(queue)
    assert envelope(queue, temp_id)["recipient"] == "temp@example.test"
    assert int(envelope(queue, temp_id)["attempts"]) >= 3
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert len(lines) == 2
    [temp_line] = [line for line in lines if line.startswith(temp_id)]
    assert " queued " in temp_line and "<temp@example.test>" in temp_line
    assert "<sender@example.test>" in temp_line and "EX_UNAVAILABLE" in temp_line
    [perm_line] = [line for line in lines if line.startswith(failed_id)]
    assert " failed " in perm_line and "permanent failure" in perm_line
    assert f"queue {failed_id}: moved to failed/ after 1 attempt" in log.read_text()
    assert delivered(tmp_path / "maildir") == []


def test_a_mail_past_the_queue_lifetime_moves_to_failed(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    with Server([f"--queue={queue}", f"--command={command(tmp_path, fails=1000)}",
                 "--queue-lifetime=1"], env=FAST) as server:
        send(server.port, ["late@example.test"])
        assert wait_until(lambda: queued(queue, failed=True), timeout=20)
        assert server.stop() == 0
    [mail_id] = queued(queue, failed=True)
    assert queued(queue) == []
    assert "queue lifetime of 1 s" in envelope(queue, mail_id, failed=True)["failed"]
    assert count(tmp_path, "late@example.test") >= 2


def test_a_new_mail_is_tried_at_once_also_from_an_inetd_session(tmp_path: Path) -> None:
    """The runner sleeps up to a minute between scans; a session's wake-up
    (the FIFO in DIR) must bring it at once, from a worker or --inetd."""
    queue = tmp_path / "queue"
    args = [f"--queue={queue}", f"--command={command(tmp_path)}"]
    with Server(args) as server:
        time.sleep(0.5)  # the runner is waiting
        send(server.port, ["first@example.test"])
        assert wait_until(lambda: len(delivered(tmp_path / "maildir")) == 1, timeout=10)
        session = run_inetd(args, b"EHLO x\r\nMAIL FROM:<s@example.test>\r\n"
                                  b"RCPT TO:<second@example.test>\r\nDATA\r\nSubject: i\r\n\r\nx\r\n"
                                  b".\r\nQUIT\r\n")
        assert b"250 2.0.0 OK, queued as " in session.stdout
        assert wait_until(lambda: len(delivered(tmp_path / "maildir")) == 2, timeout=10)
        assert server.stop() == 0


def test_inetd_queues_and_flush_delivers_without_a_daemon(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    (tmp_path / "broken").touch()
    script = tmp_path / "gate.sh"
    script.write_text(f"#!/bin/sh\n[ -e {tmp_path}/broken ] && exit 75\n"
                      f"exec {program('msmtpd-maildir')} {tmp_path}/maildir \"$@\"\n")
    script.chmod(0o755)
    args = [f"--queue={queue}", f"--command={script} -f %F --"]
    conversation = (b"EHLO x\r\nMAIL FROM:<s@example.test>\r\nRCPT TO:<a@example.test>\r\n"
                    b"RCPT TO:<b@example.test>\r\nDATA\r\nSubject: one\r\n\r\n..dot\r\n.\r\n"
                    b"MAIL FROM:<s@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n"
                    b"Subject: two\r\n\r\nx\r\n.\r\nQUIT\r\n")
    session = run_inetd(args, conversation)
    assert session.stdout.count(b"250 2.0.0 OK, queued as ") == 2
    assert session.returncode == 0
    assert len(queued(queue)) == 2 and delivered(tmp_path / "maildir") == []
    assert stat_mode(queue) == 0o700
    listing = queue_cli(queue, "--queue-list", *args[1:])
    assert listing.returncode == 0
    assert len(listing.stdout.splitlines()) == 2
    assert "<a@example.test>, <b@example.test>" in listing.stdout and "attempts 0" in listing.stdout
    flush = queue_cli(queue, "--queue-flush", *args[1:])
    assert flush.returncode == 75, flush.stderr
    assert all(envelope(queue, i)["attempts"] == "1" for i in queued(queue))
    (tmp_path / "broken").unlink()
    flush = queue_cli(queue, "--queue-flush", *args[1:])
    assert flush.returncode == 0, flush.stderr
    mails = delivered(tmp_path / "maildir")
    assert len(mails) == 2
    assert any(b"\n.dot\n" in mail for mail in mails)
    assert queue_cli(queue, "--queue-list").stdout == "Mail queue is empty\n"


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_flush_asks_the_running_daemon(tmp_path: Path) -> None:
    queue, log = tmp_path / "queue", tmp_path / "log"
    (tmp_path / "broken").touch()
    script = tmp_path / "gate.sh"
    script.write_text(f"#!/bin/sh\n[ -e {tmp_path}/broken ] && exit 75\n"
                      f"exec {program('msmtpd-maildir')} {tmp_path}/maildir \"$@\"\n")
    script.chmod(0o755)
    slow = dict(os.environ, MSMTPD_QUEUE_RETRY_SECONDS="3600")
    args = [f"--queue={queue}", f"--command={script} -f %F --"]
    with Server([*args, f"--log={log}"], env=slow) as server:
        mail_id = send(server.port, ["a@example.test"]).rsplit(" ", 1)[1]
        assert wait_until(lambda: "attempt 1:" in log.read_text(), timeout=10)
        assert queue_cli(queue, "--queue-flush", *args[1:]).returncode == 75
        assert len(queued(queue)) == 1 and delivered(tmp_path / "maildir") == []
        (tmp_path / "broken").unlink()
        flush = queue_cli(queue, "--queue-flush", *args[1:])
        assert flush.returncode == 0, flush.stderr
        assert len(delivered(tmp_path / "maildir")) == 1
        text = log.read_text()
        assert "trying all 1 queued mails now" in text
        # The daemon delivered it (its runner's pid), not the flush process.
        runner = int((queue / ".runner").read_text())
        assert f"msmtpd[{runner}] info: queue {mail_id}: attempt 3: " in text
        assert f"msmtpd[{runner}] error: queue {mail_id}: attempt 2: " in text
        # SIGUSR1 to the master: retry now as well.
        (tmp_path / "broken").touch()
        send(server.port, ["b@example.test"])
        assert wait_until(lambda: text_count(log, "attempt 1:") == 2, timeout=10)
        (tmp_path / "broken").unlink()
        os.kill(server.pid, signal.SIGUSR1)
        assert wait_until(lambda: len(delivered(tmp_path / "maildir")) == 2, timeout=10)
        assert server.stop() == 0


def text_count(path: Path, needle: str) -> int:
    return path.read_text().count(needle)




def test_sigkill_of_the_whole_tree_mid_delivery_loses_nothing(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    (tmp_path / "slow").touch()
    args = [f"--queue={queue}", f"--command={command(tmp_path)}", "--queue-workers=1"]
    server = Server(args, env=FAST).start()
    try:
        for index in range(3):
            send(server.port, [f"m{index}@example.test"])
        assert wait_until(lambda: list(tmp_path.glob("started-*")), timeout=10)
        tree = [server.pid, *descendants(server.pid)]
        for pid in tree:
            kill_quietly(pid, signal.SIGKILL)
        server.process.wait()  # type: ignore[union-attr]
    finally:
        server.stop()
    assert len(queued(queue)) == 3  # the one being delivered too
    assert not [name for name in os.listdir(queue) if name.startswith(".tmp-")]
    (tmp_path / "slow").unlink()
    for leftover in tmp_path.glob("busy-*"):
        leftover.rmdir()
    with Server(args, env=FAST) as again:
        assert wait_until(lambda: not queued(queue), timeout=20)
        assert again.stop() == 0
    mails = delivered(tmp_path / "maildir")
    for index in range(3):
        copies = [m for m in mails if f"m{index}@example.test".encode() in m]
        assert 1 <= len(copies) <= 2
    assert len(mails) <= 4  # only the interrupted one may come twice


def test_two_daemons_on_one_directory_never_deliver_a_mail_twice(tmp_path: Path) -> None:
    queue, log = tmp_path / "queue", tmp_path / "log"
    args = [f"--queue={queue}", f"--command={command(tmp_path, pause=0.05)}", f"--log={log}",
            "--queue-workers=4"]
    with Server(args, env=FAST) as first, Server(args, env=FAST) as second:
        for index in range(30):
            send((first if index % 2 else second).port, [f"r{index}@example.test"])
        assert wait_until(lambda: len(delivered(tmp_path / "maildir")) >= 30, timeout=30)
        time.sleep(0.5)
        assert first.stop() == 0 and second.stop() == 0
    assert not (tmp_path / "overlap").exists()
    assert len(delivered(tmp_path / "maildir")) == 30
    assert all(count(tmp_path, f"r{i}@example.test") == 1 for i in range(30))
    assert queued(queue) == []
    assert "served by another runner as well" in log.read_text()


def test_a_full_spool_answers_451_and_the_daemon_keeps_serving(tmp_path: Path) -> None:
    need_root("mounting a small tmpfs needs root")
    queue = tmp_path / "queue"
    queue.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(queue)],
                           capture_output=True)
    if mount.returncode != 0:
        unavailable(f"cannot mount a tmpfs: {mount.stderr.decode().strip()}")
    try:
        (tmp_path / "slow").touch()  # the small mail stays queued: the queue is what we look at
        with Server([f"--queue={queue}", f"--command={command(tmp_path)}"], env=FAST) as server:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
                client.ehlo("test.example")
                client.mail("sender@example.test")
                client.rcpt("big@example.test")
                code, text = client.data(b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n" * 1
                                         + (b"y" * 998 + b"\r\n") * 400)
                assert code == 451, text
                assert text.startswith(b"4.3.0 Cannot queue the message: No space left on device")
                assert sorted(os.listdir(queue)) in (["failed"], [".runner", ".wake", "failed"])
                code, _ = client.mail("sender@example.test")
                assert code == 250  # the session goes on
                client.rcpt("small@example.test")
                code, text = client.data("Subject: small\r\n\r\nfits\r\n")
                assert code == 250, text
            assert len(queued(queue)) == 1
            (tmp_path / "slow").unlink()
            assert wait_until(lambda: len(delivered(tmp_path / "maildir")) == 1, timeout=10)
            assert server.stop() == 0
    finally:
        subprocess.run(["umount", str(queue)], check=False)


def runner_of(master: int) -> Optional[int]:
    runners = [pid for pid in children(master) if "queue runner" in cmdline_of(pid)]
    assert len(runners) <= 1
    return runners[0] if runners else None


def commands_running(tmp_path: Path) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and str(tmp_path / "deliver.sh") in cmdline_of(int(entry)):
                found.append(int(entry))
        except OSError:
            pass
    return found


def cmdline_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_killed_runner_is_replaced_and_its_command_ended(tmp_path: Path) -> None:
    queue, log = tmp_path / "queue", tmp_path / "log"
    (tmp_path / "slow").touch()
    with Server([f"--queue={queue}", f"--command={command(tmp_path)}", f"--log={log}"],
                env=FAST) as server:
        send(server.port, ["hang@example.test"])
        assert wait_until(lambda: (tmp_path / "started-hang@example.test").exists(), timeout=10)
        first = runner_of(server.pid)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        # The master ends the orphaned command before a new runner may take the mail.
        assert wait_until(lambda: not commands_running(tmp_path), timeout=10)
        assert wait_until(lambda: runner_of(server.pid) not in (None, first), timeout=10)
        (tmp_path / "slow").unlink()
        (tmp_path / "busy-hang@example.test").rmdir()
        assert wait_until(lambda: not queued(queue), timeout=20)
        assert server.stop() == 0
    assert len(delivered(tmp_path / "maildir")) == 1
    text = log.read_text()
    assert "queue runner ended (signal 9); replacing it" in text
    assert "its queue runner died" in text


def test_sigterm_kills_a_delivery_past_the_grace_time_and_keeps_the_mail(tmp_path: Path) -> None:
    queue, log = tmp_path / "queue", tmp_path / "log"
    (tmp_path / "slow").touch()
    with Server([f"--queue={queue}", f"--command={command(tmp_path)}", f"--log={log}",
                 "--timeout=1"], env=FAST) as server:
        send(server.port, ["hang@example.test"])
        assert wait_until(lambda: (tmp_path / "started-hang@example.test").exists(), timeout=10)
        assert server.stop() == 0
    assert commands_running(tmp_path) == []
    [mail_id] = queued(queue)
    fields = envelope(queue, mail_id)
    assert fields["attempts"] == "1"
    assert "delivery interrupted: msmtpd is stopping" in fields["last-error"]
    assert delivered(tmp_path / "maildir") == []


def test_sighup_makes_the_runner_reopen_the_log(tmp_path: Path) -> None:
    queue, log = tmp_path / "queue", tmp_path / "log"
    with Server([f"--queue={queue}", f"--command={command(tmp_path)}", f"--log={log}"]) as server:
        assert wait_until(lambda: log.exists() and "queue runner" in log.read_text(), timeout=10)
        log.rename(tmp_path / "log.1")
        os.kill(server.pid, signal.SIGHUP)
        assert wait_until(log.exists, timeout=10)
        time.sleep(0.5)  # the runner has had its SIGHUP
        mail_id = send(server.port, ["rotated@example.test"]).rsplit(" ", 1)[1]
        assert wait_until(lambda: f"queue {mail_id}: delivered" in log.read_text(), timeout=10)
        assert server.stop() == 0
    assert mail_id not in (tmp_path / "log.1").read_text()


def test_the_queue_directory_is_made_for_the_sessions_user(tmp_path: Path) -> None:
    need_root("needs root to run the session as nobody")
    import pwd
    import shutil
    import tempfile

    nobody = pwd.getpwnam("nobody")
    shared = Path(tempfile.mkdtemp(prefix="msmtpd-queue-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        queue = shared / "queue"
        session = run_inetd([f"--queue={queue}", "--user=nobody", "--command=/bin/true"],
                            b"EHLO x\r\nMAIL FROM:<s@example.test>\r\nRCPT TO:<a@example.test>\r\n"
                            b"DATA\r\nx\r\n.\r\nQUIT\r\n")
        assert b"250 2.0.0 OK, queued as " in session.stdout, session.stdout
        assert queue.stat().st_uid == nobody.pw_uid and stat_mode(queue) == 0o700
        [mail_id] = queued(queue)
        assert (queue / f"{mail_id}.msg").stat().st_uid == nobody.pw_uid
    finally:
        shutil.rmtree(shared, ignore_errors=True)
