"""--senders: the senders each user may use, in a file htpasswd never
touches.  The file's format and the session asking it (in memory), then
real daemons: a password changed with the real ``htpasswd -bB`` and a
SIGHUP keep the binding, a user missing from the file may send as nobody,
the old third field and bad files are start-up errors, SIGHUP re-reads
the file or keeps the old one, with --auth and --inetd too.
Here the real processes; the part in memory is in tests/unit/test_senders.py."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
from pathlib import Path
from typing import Iterator, List, Sequence

import pytest

from msmtpd.smtp import replies
from tests import helpers
from tests.helpers import auth_plain
from tests.support.logged_daemon import LoggedDaemon

WAIT = 20.0
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}
REFUSED = b"5.7.1 Sender address not allowed for this user"


# -- the session asks it ---------------------------------------------------------




# -- real daemons -------------------------------------------------------------------


class Daemon(LoggedDaemon):
    """With a client that logs in and gives a sender."""

    def mail_from(self, user: str, password: str, sender: str) -> tuple[int, bytes]:
        """Log in as ``user`` and give ``sender``: MAIL's reply."""
        with smtplib.SMTP(self.server.host, self.server.port, local_hostname="client.test",
                          timeout=WAIT) as smtp:
            smtp.login(user, password)
            return smtp.mail(sender)


def users_file(directory: Path) -> Path:
    path = directory / "users"
    for user, password in PASSWORDS.items():
        helpers.htpasswd(path, user, password, "-B", "-C", "4")
    return path


@pytest.fixture
def files(tmp_path: Path) -> Iterator[List[Path]]:
    senders = tmp_path / "senders"
    senders.write_text(helpers.SENDERS)
    yield [users_file(tmp_path), senders]


def test_a_password_changed_by_htpasswd_keeps_the_binding_after_sighup(tmp_path: Path,
                                                                      files: List[Path]) -> None:
    users, senders = files
    with Daemon(tmp_path, [f"--auth-file={users}", f"--senders={senders}"]) as daemon:
        assert daemon.mail_from("alice", "alice-pw", "ceo@victim.example") == (553, REFUSED)
        assert daemon.mail_from("alice", "alice-pw", "alice@example.org")[0] == 250
        helpers.htpasswd(users, "alice", "new alice pw", "-B", "-C", "4")  # rewrites alice's line
        daemon.hup("users reloaded from")

        def new_password_works() -> bool:
            try:
                return daemon.mail_from("alice", "new alice pw", "alice@example.org")[0] == 250
            except smtplib.SMTPAuthenticationError:
                return False  # an old worker, still with the old password

        assert helpers.wait_until(new_password_works, WAIT)
        assert daemon.mail_from("alice", "new alice pw", "ceo@victim.example") == (553, REFUSED)
        assert daemon.mail_from("bob", "bob-pw", "someone@bob.example")[0] == 250
    log = helpers.log_text(daemon.log)
    assert "user alice may not send as <ceo@victim.example>" in log
    assert "keeping the old" not in log


def test_a_logged_in_user_missing_from_the_file_may_send_as_nobody(tmp_path: Path,
                                                                   files: List[Path]) -> None:
    users, senders = files
    helpers.htpasswd(users, "carol", "carol-pw", "-B", "-C", "4")
    with Daemon(tmp_path, [f"--auth-file={users}", f"--senders={senders}"]) as daemon:
        for sender in ("carol@example.org", "<>", "alice@example.org"):
            assert daemon.mail_from("carol", "carol-pw", sender) == (553, REFUSED), sender
        assert replies.SENDER_NOT_ALLOWED.encode() == b"553 " + REFUSED + b"\r\n"


def test_sighup_rereads_the_senders_or_keeps_the_old_ones(tmp_path: Path, files: List[Path]) -> None:
    users, senders = files
    with Daemon(tmp_path, [f"--auth-file={users}", f"--senders={senders}"]) as daemon:
        assert daemon.mail_from("alice", "alice-pw", "alice@example.net")[0] == 553
        senders.write_text(helpers.SENDERS + "alice: @example.net\n")  # alice twice: refused
        daemon.hup("keeping the old senders")
        line = next(line for line in helpers.log_text(daemon.log).splitlines()
                    if "keeping the old senders" in line)
        assert "error:" in line and "line 5: user 'alice' is already listed" in line, line
        assert daemon.mail_from("alice", "alice-pw", "alice@example.org")[0] == 250
        senders.write_text(helpers.SENDERS.replace("alice: alice@example.org", "alice: @example.net"))
        daemon.hup("senders of 2 users reloaded from")

        def rebound() -> bool:
            return daemon.mail_from("alice", "alice-pw", "alice@example.net")[0] == 250

        assert helpers.wait_until(rebound, WAIT)
        assert daemon.mail_from("alice", "alice-pw", "alice@example.org")[0] == 553


def test_the_one_user_of_auth_is_bound_too(tmp_path: Path) -> None:
    senders = tmp_path / "senders"
    senders.write_text("mailer: me@example.org\n")
    with Daemon(tmp_path, ["--auth=mailer,echo s3cret", f"--senders={senders}"]) as daemon:
        assert daemon.mail_from("mailer", "s3cret", "me@example.org")[0] == 250
        assert daemon.mail_from("mailer", "s3cret", "you@example.org") == (553, REFUSED)


def test_a_relative_path_is_read_again_by_a_daemon_in_another_directory(tmp_path: Path,
                                                                        files: List[Path]) -> None:
    """--daemon changes to /: the path given relative at start must still name the file."""
    users, senders = files
    pidfile = tmp_path / "msmtpd.pid"
    log = tmp_path / "msmtpd.log"
    port = helpers.free_port()
    done = subprocess.run([helpers.program("msmtpd"), f"--port={port}", "--daemon",
                           f"--pidfile={pidfile}", f"--log={log}", "--command=cat >/dev/null",
                           f"--auth-file={users}", "--senders", "senders"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, signal.SIGHUP)
        helpers.wait_for_log(log, f"senders of 2 users reloaded from {senders}")
        assert "keeping the old senders" not in helpers.log_text(log)
    finally:
        os.kill(pid, signal.SIGTERM)
        assert helpers.wait_until(lambda: not pidfile.exists(), WAIT)


def start_up(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helpers.program("msmtpd"), f"--port={helpers.free_port()}", *args],
                          capture_output=True, text=True, timeout=WAIT, stdin=subprocess.DEVNULL)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 3, done
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stderr


def test_the_old_third_field_is_a_start_up_error_naming_senders(tmp_path: Path,
                                                                files: List[Path]) -> None:
    users, senders = files
    lines = users.read_text().splitlines()
    users.write_text("# users\n" + "\n".join(
        f"{line}:bob@example.org" if line.startswith("bob:") else line for line in lines) + "\n")
    for args in ([f"--auth-file={users}"], [f"--auth-file={users}", f"--senders={senders}"],
                 ["--inetd", f"--auth-file={users}"]):
        message = one_line(start_up(args))
        assert f"invalid --auth-file {users} line 3: user 'bob' has a third field" in message
        assert "--senders" in message


@pytest.mark.parametrize("content, complaint", [
    ("bob: bob@example.org\nalice alice@example.org\n", "line 2: expected user:"),
    ("# none\n", "no users in it"),
])
def test_a_bad_senders_file_at_start_is_one_line_and_exit_3(tmp_path: Path, files: List[Path],
                                                            content: str, complaint: str) -> None:
    users, senders = files
    senders.write_text(content)
    for args in ([f"--auth-file={users}", f"--senders={senders}"],
                 ["--inetd", "--auth=mailer,echo pw", f"--senders={senders}"]):
        message = one_line(start_up(args))
        assert f"invalid --senders {senders}" in message and complaint in message, message
    missing = one_line(start_up([f"--auth-file={users}", f"--senders={tmp_path / 'absent'}"]))
    assert "cannot read --senders" in missing
    alone = one_line(start_up([f"--senders={senders}"]))
    assert alone == "msmtpd: --senders needs --auth, --auth-file or --unix-login\n"


def test_inetd_holds_a_user_to_the_senders(tmp_path: Path, files: List[Path]) -> None:
    users, senders = files
    maildir = tmp_path / "Maildir"
    conversation = (f"EHLO client.test\r\nAUTH PLAIN {auth_plain('bob', 'bob-pw')}\r\n"
                    "MAIL FROM:<eve@example.org>\r\nMAIL FROM:<bob@example.org>\r\n"
                    "RCPT TO:<dest@example.net>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    done = helpers.run_inetd([f"--auth-file={users}", f"--senders={senders}",
                              f"--command={helpers.maildir_command(maildir)}"], conversation.encode())
    codes = [line[:3] for line in done.stdout.decode().split("\r\n") if line[3:4] == " "]
    assert codes == ["220", "250", "235", "553", "250", "250", "354", "250", "221"], done.stdout
    assert len(helpers.delivered(maildir)) == 1


def test_a_root_only_senders_file_is_read_by_the_master_also_on_sighup(tmp_path: Path,
                                                                       files: List[Path]) -> None:
    helpers.need_root()
    users, senders = files
    for path in (users, senders):
        os.chown(path, 0, 0)
        path.chmod(0o600)
    with Daemon(tmp_path, [f"--auth-file={users}", f"--senders={senders}", "--user=nobody"],
                user=True) as daemon:
        assert daemon.mail_from("bob", "bob-pw", "alice@example.org")[0] == 553
        senders.write_text(helpers.SENDERS + "carol: carol@example.org\n")
        daemon.hup("senders of 3 users reloaded from")
        assert daemon.mail_from("bob", "bob-pw", "bob@example.org")[0] == 250
    assert "keeping the old senders" not in helpers.log_text(daemon.log)
