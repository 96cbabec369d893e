"""--queue-first-try with real processes: the session tries the stored mail
itself and answers what became of it (250 delivered, 554 refused, 250
queued with the reason); the runner takes over what is left, never a mail
a session is trying; a worker SIGKILLed or SIGTERMed mid-try; --inetd; 200
mails from 16 sessions at once, each answered truthfully."""

from __future__ import annotations

import os
import random
import signal
import smtplib
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

from tests.helpers import Server, kill_quietly, program, run_inetd, wait_until
from tests.support.queue_daemon import FAST, queued

# By the prefix of the last recipient: ok* delivers, perm* fails for good
# (exit 1), temp* fails with 75 on its first attempt, hang* hangs (with a
# child) on its first attempt; wait* waits on its first attempt while
# $dir/slow exists, then fails with 75.  Every attempt is counted per
# recipient; the command's parent (the worker or the runner) is written down.
COMMAND = """#!/bin/sh
dir={dir}
for last; do :; done
n=$(cat "$dir/count-$last" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$dir/count-$last"
echo $PPID > "$dir/parent-$last"
case $last in
    perm*) echo "no such user" >&2; exit 1 ;;
    temp*) if [ "$n" -eq 1 ]; then echo "relay unreachable" >&2; exit 75; fi ;;
    hang*) if [ "$n" -eq 1 ]; then sleep 60 & echo $! > "$dir/child-$last"; wait; fi ;;
    wait*) if [ "$n" -eq 1 ]; then touch "$dir/started-$last"
               while [ -e "$dir/slow" ]; do sleep 0.05; done; exit 75; fi ;;
esac
exec "{maildir}" "$dir/maildir" "$@"
"""


def command(tmp_path: Path) -> str:
    script = tmp_path / "deliver.sh"
    script.write_text(COMMAND.format(dir=tmp_path, maildir=program("msmtpd-maildir")))
    script.chmod(0o755)
    return f"{script} -f %F --"


def delivered_ids(tmp_path: Path) -> List[str]:
    """The Message-IDs msmtpd-maildir stored, one per delivered copy."""
    new = tmp_path / "maildir" / "new"
    found = []
    for path in new.iterdir() if new.is_dir() else []:
        for line in path.read_bytes().splitlines():
            if line.lower().startswith(b"message-id:"):
                found.append(line.split(b":", 1)[1].strip().decode())
    return found


def send(port: int, recipient: str, message_id: str = "<x@test>") -> Tuple[int, str]:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        client.ehlo("test.example")
        client.mail("sender@example.test")
        client.rcpt(recipient)
        try:
            code, text = client.data(f"Message-ID: {message_id}\r\nSubject: first\r\n\r\nhi\r\n")
        except smtplib.SMTPDataError as exc:
            code, text = exc.smtp_code, exc.smtp_error
    finally:
        client.close()  # no QUIT: a stopping server answers it 421
    return code, text.decode()


def envelope(queue: Path, mail_id: str) -> Dict[str, str]:
    return dict(line.split(": ", 1) for line in (queue / f"{mail_id}.env").read_text().splitlines())


def args(tmp_path: Path, seconds: float = 3) -> List[str]:
    return [f"--queue={tmp_path / 'queue'}", f"--queue-first-try={seconds:g}",
            f"--command={command(tmp_path)}", f"--log={tmp_path / 'log'}"]


def test_success_and_permanent_failure_are_answered_and_leave_the_queue(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    with Server(args(tmp_path), env=FAST) as server:
        assert send(server.port, "ok@example.test", "<ok@t>") == (
            250, "2.0.0 OK, mail was handed to the delivery command")
        code, text = send(server.port, "perm@example.test", "<perm@t>")
        assert (code, text) == (554, "5.3.0 Delivery failed: command exit status 1")
        assert not queued(queue) and not queued(queue, failed=True)
        time.sleep(0.5)  # a runner that took them too would show now
    assert delivered_ids(tmp_path) == ["<ok@t>"]
    assert (tmp_path / "count-ok@example.test").read_text().strip() == "1"
    assert (tmp_path / "count-perm@example.test").read_text().strip() == "1"
    log = (tmp_path / "log").read_text()
    assert ": delivered on first try: exit status 0" in log
    assert ": refused on first try: mail from <sender@example.test>: command exit status 1" in log
    assert "stderr: no such user" in log


def test_a_temporary_failure_is_queued_with_its_reason_and_the_runner_delivers(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    slow = dict(FAST, MSMTPD_QUEUE_RETRY_SECONDS="2")
    with Server(args(tmp_path), env=slow) as server:
        code, text = send(server.port, "temp@example.test", "<temp@t>")
        assert code == 250
        assert text.startswith("2.0.0 OK, queued as ")
        assert text.endswith("; first try: command exit status 75 (EX_TEMPFAIL); will retry")
        mail_id = text.split()[4].rstrip(";")
        fields = envelope(queue, mail_id)
        assert fields["attempts"] == "1"
        assert fields["last-error"] == "command exit status 75 (EX_TEMPFAIL); relay unreachable"
        assert delivered_ids(tmp_path) == []
        assert wait_until(lambda: not queued(queue), timeout=20)
    assert delivered_ids(tmp_path) == ["<temp@t>"]
    log = (tmp_path / "log").read_text()
    assert f"queue {mail_id}: queued after first try: command exit status 75" in log
    assert f"queue {mail_id}: attempt 2: " in log


def test_a_hanging_command_is_killed_at_the_deadline_and_the_runner_waits(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    with Server(args(tmp_path, seconds=2), env=FAST) as server:
        replies: List[Tuple[int, str]] = []
        sender = threading.Thread(target=lambda: replies.append(send(server.port, "hang@example.test")))
        started = time.monotonic()
        sender.start()
        assert wait_until(lambda: (tmp_path / "child-hang@example.test").exists(), timeout=10)
        os.kill(server.pid, signal.SIGUSR1)  # the runner tries every mail now: not this one
        sender.join(20)
        took = time.monotonic() - started
        assert replies and replies[0][0] == 250, replies
        assert "queued as" in replies[0][1] and "first try: command timed out after 2 s" in replies[0][1]
        assert 1.5 < took < 6
        child = int((tmp_path / "child-hang@example.test").read_text())
        assert wait_until(lambda: not Path(f"/proc/{child}").exists(), timeout=5)
        mail_id = replies[0][1].split()[4].rstrip(";")
        assert wait_until(lambda: not queued(queue), timeout=20)
    assert (tmp_path / "count-hang@example.test").read_text().strip() == "2"
    log = (tmp_path / "log").read_text()
    assert f"queue {mail_id}: attempt 1: " not in log  # the locked mail was skipped, not counted
    assert f"queue {mail_id}: attempt 2: " in log
    assert len(delivered_ids(tmp_path)) == 1


def test_a_worker_killed_mid_try_leaves_the_mail_to_the_runner(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    (tmp_path / "slow").touch()
    with Server(args(tmp_path, seconds=30), env=FAST) as server:
        sender = threading.Thread(target=lambda: _send_expecting_loss(server.port), daemon=True)
        sender.start()
        assert wait_until(lambda: (tmp_path / "started-wait@example.test").exists(), timeout=10)
        worker = int((tmp_path / "parent-wait@example.test").read_text())
        assert worker in _children(server.pid)
        kill_quietly(worker, signal.SIGKILL)
        sender.join(10)
        assert len(queued(queue)) == 1  # stored, not answered, not lost
        (tmp_path / "slow").unlink()  # the orphaned command ends, and its lock with it
        assert wait_until(lambda: not queued(queue), timeout=20)
    assert delivered_ids(tmp_path) == ["<kill@t>"]
    assert (tmp_path / "count-wait@example.test").read_text().strip() == "2"


def _send_expecting_loss(port: int) -> None:
    try:
        send(port, "wait@example.test", "<kill@t>")
    except (smtplib.SMTPException, OSError):
        pass


def _children(pid: int) -> List[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_sigterm_mid_try_queues_the_mail_after_the_grace_time(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    (tmp_path / "slow").touch()
    server = Server([*args(tmp_path, seconds=30), "--timeout=1"], env=FAST).start()
    try:
        replies: List[Tuple[int, str]] = []
        sender = threading.Thread(target=lambda: replies.append(
            send(server.port, "wait@example.test", "<term@t>")))
        sender.start()
        assert wait_until(lambda: (tmp_path / "started-wait@example.test").exists(), timeout=10)
        assert server.stop() == 0
        sender.join(10)
    finally:
        server.stop()
    assert replies and replies[0][0] == 250, replies
    assert "queued as" in replies[0][1] and "first try: delivery interrupted" in replies[0][1]
    (mail_id,) = queued(queue)
    assert envelope(queue, mail_id)["attempts"] == "1"
    assert delivered_ids(tmp_path) == []
    (tmp_path / "slow").unlink()
    with Server(args(tmp_path), env=FAST):
        assert wait_until(lambda: not queued(queue), timeout=20)
    assert delivered_ids(tmp_path) == ["<term@t>"]


def test_inetd_answers_what_its_first_try_found(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    conversation = (b"HELO x\r\nMAIL FROM:<s@example.test>\r\nRCPT TO:<ok@example.test>\r\n"
                    b"DATA\r\nMessage-ID: <inetd@t>\r\n\r\nhi\r\n.\r\n"
                    b"MAIL FROM:<s@example.test>\r\nRCPT TO:<perm@example.test>\r\n"
                    b"DATA\r\nMessage-ID: <refused@t>\r\n\r\nhi\r\n.\r\n"
                    b"MAIL FROM:<s@example.test>\r\nRCPT TO:<temp@example.test>\r\n"
                    b"DATA\r\nMessage-ID: <later@t>\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    result = run_inetd(args(tmp_path), conversation)
    out = result.stdout.decode()
    assert "250 2.0.0 OK, mail was handed to the delivery command\r\n" in out
    assert "554 5.3.0 Delivery failed: command exit status 1\r\n" in out
    assert "first try: command exit status 75 (EX_TEMPFAIL); will retry\r\n" in out
    assert delivered_ids(tmp_path) == ["<inetd@t>"]
    assert len(queued(queue)) == 1 and not queued(queue, failed=True)


def test_200_mails_from_16_sessions_are_each_answered_truthfully(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    answers: Dict[str, int] = {}
    lock = threading.Lock()

    def session(number: int) -> None:
        chooser = random.Random(number)
        with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as client:
            client.ehlo("test.example")
            for index in range(number, 200, 16):
                kind = chooser.choice(["ok", "perm", "temp"])
                message_id = f"<m{index}@t>"
                client.mail("sender@example.test")
                client.rcpt(f"{kind}{index}@example.test")
                try:
                    code, _ = client.data(f"Message-ID: {message_id}\r\n\r\nhi\r\n")
                except smtplib.SMTPDataError as exc:
                    code = exc.smtp_code
                with lock:
                    answers[message_id] = code

    with Server([*args(tmp_path, seconds=10), "--max-sessions=16"], env=FAST) as server:
        threads = [threading.Thread(target=session, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(answers) == 200
        assert wait_until(lambda: not queued(queue), timeout=60)
        time.sleep(0.5)
    copies = delivered_ids(tmp_path)
    assert set(answers.values()) <= {250, 554}
    for message_id, code in answers.items():
        assert copies.count(message_id) == (1 if code == 250 else 0), (message_id, code)
    assert not queued(queue, failed=True)
    assert 554 in answers.values() and 250 in answers.values()
