"""--auth-file with real processes: a users file written by the real
``htpasswd -B``, users logging in with smtplib, swaks and curl, senders
bound to users (--senders), SIGHUP re-reading the file, and broken files.
More of --senders: tests/unit/test_senders.py and tests/system/test_senders.py."""

from __future__ import annotations

import base64
import os
import signal
import smtplib
import subprocess
from pathlib import Path
from typing import Iterator, List, Sequence

import pytest

from tests import helpers
from tests.support.tls_daemons import WAIT, Daemon, message, run_daemons, stop_daemons
from tests.support.users_file import PASSWORDS, users_file

SENDERS = ("# who may send as whom\n"
           "alice: alice@example.org, @example.com\n"
           "bob: bob@example.org,@bob.example\n")





def senders_file(directory: Path) -> Path:
    path = directory / "senders"
    path.write_text(SENDERS)
    return path


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    started = Daemon(tmp_path, "users", [f"--auth-file={users_file(tmp_path)}",
                                         f"--senders={senders_file(tmp_path)}"])
    run_daemons(started)
    try:
        yield started
    finally:
        stop_daemons([started])


def send_as(daemon: Daemon, user: str, sender: str, password: str = "") -> None:
    with smtplib.SMTP(daemon.host, daemon.port, local_hostname="client.test", timeout=WAIT) as smtp:
        smtp.login(user, password or PASSWORDS[user])
        assert smtp.sendmail(sender, ["dest@example.net"], message(f"from {user}", sender)) == {}


def test_htpasswd_users_log_in_with_smtplib_and_mail_is_delivered(daemon: Daemon) -> None:
    send_as(daemon, "alice", "anyone@example.com")  # a whole domain
    send_as(daemon, "bob", "bob@example.org")
    assert len(helpers.wait_for_mails(daemon.maildir, 2)) == 2
    log = daemon.log_text()
    assert "authenticated as alice" in log and "authenticated as bob" in log
    assert not any(password in log for password in PASSWORDS.values())


def test_a_wrong_password_is_535_and_logged_without_it(daemon: Daemon) -> None:
    with smtplib.SMTP(daemon.host, daemon.port, local_hostname="client.test", timeout=WAIT) as smtp:
        smtp.ehlo()
        token = base64.b64encode(b"\0alice\0not-the-password").decode()
        assert smtp.docmd("AUTH", f"PLAIN {token}") == (535, b"5.7.8 Authentication credentials invalid")
        assert smtp.docmd("MAIL", "FROM:<alice@example.org>")[0] == 530
        token = base64.b64encode(b"\0nobody\0alice secret 1").decode()
        assert smtp.docmd("AUTH", f"PLAIN {token}")[0] == 535  # a user who is not in the file
    daemon.wait_log("authentication failed for user nobody")
    log = daemon.log_text()
    assert "authentication failed for user alice" in log
    assert "not-the-password" not in log and "alice secret 1" not in log


def test_a_sender_outside_the_users_list_is_553(daemon: Daemon) -> None:
    with smtplib.SMTP(daemon.host, daemon.port, local_hostname="client.test", timeout=WAIT) as smtp:
        smtp.login("bob", PASSWORDS["bob"])
        assert smtp.mail("alice@example.org") == (553, b"5.7.1 Sender address not allowed for this user")
        assert smtp.mail("Bob@example.org")[0] == 553  # the local part is exact
        assert smtp.mail("someone@BOB.example")[0] == 250  # a whole domain, any case
        smtp.rset()
        assert smtp.mail("<>")[0] == 553
    daemon.wait_log("user bob may not send as <alice@example.org>")
    assert helpers.delivered(daemon.maildir) == []


def swaks(daemon: Daemon, user: str, sender: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helpers.tool("swaks"), "--server", f"{daemon.host}:{daemon.port}", "--auth", "LOGIN",
         "--auth-user", user, "--auth-password", PASSWORDS[user], "--from", sender,
         "--to", "dest@example.net", "--body", "sent by swaks", "--timeout", "10"],
        capture_output=True, text=True, timeout=WAIT)


def test_swaks_logs_in_and_is_held_to_the_senders_of_its_user(daemon: Daemon) -> None:
    refused = swaks(daemon, "bob", "mallory@example.org")
    assert refused.returncode != 0
    assert "<** 553 5.7.1 Sender address not allowed for this user" in refused.stdout, refused.stdout
    allowed = swaks(daemon, "bob", "bob@example.org")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "<-  235 2.7.0 Authentication successful" in allowed.stdout
    mails = helpers.wait_for_mails(daemon.maildir, 1)
    assert len(mails) == 1 and mails[0].startswith(b"Return-Path: <bob@example.org>\n")


def curl(daemon: Daemon, user: str, sender: str, upload: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [helpers.tool("curl"), "-sS", "--max-time", "10", f"smtp://{daemon.host}:{daemon.port}",
         "--user", f"{user}:{PASSWORDS[user]}", "--mail-from", sender,
         "--mail-rcpt", "dest@example.net", "--upload-file", str(upload)],
        capture_output=True, timeout=WAIT)


def test_curl_logs_in_and_is_held_to_the_senders_of_its_user(daemon: Daemon, tmp_path: Path) -> None:
    upload = tmp_path / "mail.eml"
    upload.write_bytes(b"Subject: via curl\r\n\r\nhello\r\n")
    refused = curl(daemon, "bob", "alice@example.org", upload)
    assert refused.returncode != 0 and b"553" in refused.stderr, refused.stderr
    allowed = curl(daemon, "bob", "bob@bob.example", upload)
    assert allowed.returncode == 0, allowed.stderr
    assert len(helpers.wait_for_mails(daemon.maildir, 1)) == 1


def can_log_in(daemon: Daemon, user: str) -> bool:
    with smtplib.SMTP(daemon.host, daemon.port, local_hostname="client.test", timeout=WAIT) as smtp:
        smtp.ehlo()
        token = base64.b64encode(f"\0{user}\0{PASSWORDS[user]}".encode()).decode()
        return smtp.docmd("AUTH", f"PLAIN {token}")[0] == 235


def test_sighup_reads_a_new_user_and_keeps_the_old_ones_when_the_file_breaks(tmp_path: Path) -> None:
    users = users_file(tmp_path)
    daemon = Daemon(tmp_path, "reload", [f"--auth-file={users}"])
    run_daemons(daemon)
    try:
        assert not can_log_in(daemon, "carol")
        helpers.htpasswd(users, "carol", PASSWORDS["carol"], "-B")
        os.kill(daemon.pid, signal.SIGHUP)
        daemon.wait_log("3 users reloaded from")
        assert helpers.wait_until(lambda: can_log_in(daemon, "carol"), WAIT)
        # A broken file on SIGHUP: logged, and the users loaded before stay.
        with users.open("a") as file:
            file.write("dave:plain-text-password\n")
        os.kill(daemon.pid, signal.SIGHUP)
        daemon.wait_log("keeping the old users")
        line = next(line for line in daemon.log_text().splitlines() if "keeping the old users" in line)
        assert "line 6" in line and "plain-text password" in line and "error:" in line, line
        assert "plain-text-password" not in line
        assert can_log_in(daemon, "carol") and can_log_in(daemon, "alice")
    finally:
        stop_daemons([daemon])


def start_up(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helpers.program("msmtpd"), f"--port={helpers.free_port()}", *args],
                          capture_output=True, text=True, timeout=WAIT, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("flags, complaint", [
    (["-p"], "a plain-text password"), (["-m"], "an MD5 hash (htpasswd -m)"),
    (["-s"], "a SHA-1 hash (htpasswd -s)")])
def test_a_broken_file_at_start_up_is_one_line_and_exit_3(tmp_path: Path, flags: List[str],
                                                          complaint: str) -> None:
    users = users_file(tmp_path)
    helpers.htpasswd(users, "carol", PASSWORDS["carol"], *flags)
    for args in ([f"--auth-file={users}"], ["--inetd", f"--auth-file={users}"]):
        done = start_up(args)
        assert done.returncode == 3, done
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert f"line 5: user 'carol' has {complaint}" in done.stderr, done.stderr


def test_auth_and_auth_file_together_is_a_usage_error(tmp_path: Path) -> None:
    done = start_up(["--auth=alice,echo pw", f"--auth-file={users_file(tmp_path)}"])
    assert done.returncode == 3
    assert done.stderr == "msmtpd: --auth and --auth-file cannot be combined\n"
    missing = start_up([f"--auth-file={tmp_path / 'absent'}"])
    assert missing.returncode == 3 and "cannot read --auth-file" in missing.stderr


def test_inetd_session_with_an_auth_file(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    token = base64.b64encode(f"\0bob\0{PASSWORDS['bob']}".encode()).decode()
    conversation = (f"EHLO client.test\r\nMAIL FROM:<bob@example.org>\r\nAUTH PLAIN {token}\r\n"
                    "MAIL FROM:<eve@example.org>\r\nMAIL FROM:<bob@example.org>\r\n"
                    "RCPT TO:<dest@example.net>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    done = helpers.run_inetd([f"--auth-file={users_file(tmp_path)}", f"--senders={senders_file(tmp_path)}",
                              f"--command={helpers.maildir_command(maildir)}"],
                             conversation.encode())
    codes = [line[:3] for line in done.stdout.decode().split("\r\n") if line[3:4] == " "]
    assert codes == ["220", "250", "530", "235", "553", "250", "250", "354", "250", "221"], done.stdout
    assert done.returncode == 0
    assert len(helpers.delivered(maildir)) == 1


def test_a_root_only_file_with_user_nobody_is_read_by_the_master_also_on_sighup(tmp_path: Path) -> None:
    helpers.need_root()
    users = users_file(tmp_path)
    os.chown(users, 0, 0)
    users.chmod(0o600)
    daemon = Daemon(tmp_path, "nobody", [f"--auth-file={users}", "--user=nobody"],
                    command="cat >/dev/null; :", max_sessions=2)
    run_daemons(daemon)
    try:
        send_as(daemon, "alice", "alice@example.org")
        daemon.wait_log("delivered, exit status 0")
        helpers.htpasswd(users, "carol", PASSWORDS["carol"], "-B")
        os.kill(daemon.pid, signal.SIGHUP)
        daemon.wait_log("3 users reloaded from")
        assert helpers.wait_until(lambda: can_log_in(daemon, "carol"), WAIT)
    finally:
        stop_daemons([daemon])
    assert "keeping the old users" not in daemon.log_text()
