"""--rate-limit on a real daemon: 16 smtplib clients in parallel, each
sending several mails from one address, get exactly N accepted, the rest
450 4.7.1 at MAIL FROM with the time to wait (no data sent), logged; the
same under --daemon (the shared table survives detaching); a logged-in
user is counted as the user; --inetd refuses the option."""

from __future__ import annotations

import smtplib
import subprocess
import threading
from pathlib import Path
from typing import List

import pytest

from tests.helpers import (
    Server,
    auth_plain,
    delivered,
    htpasswd,
    maildir_command,
    program,
    wait_for_log,
    wait_for_mails,
)

WAIT = 30.0
SESSIONS = 16
MAILS_EACH = 4
LIMIT = 21


def send_in_parallel(port: int, login: tuple[str, str] | None = None) -> List[int]:
    """Every session's final codes, one per mail tried."""
    codes: List[int] = []
    lock = threading.Lock()
    start = threading.Barrier(SESSIONS)

    def client(n: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as smtp:
            if login is not None:
                smtp.ehlo()
                smtp.docmd("AUTH", "PLAIN " + auth_plain(*login))
            start.wait()
            for m in range(MAILS_EACH):
                try:
                    smtp.sendmail("a@example.org", ["b@example.org"],
                                  f"Subject: {n}-{m}\r\n\r\nmail {n}-{m}\r\n")
                    code = 250
                except smtplib.SMTPSenderRefused as refused:
                    assert refused.smtp_error.startswith(b"4.7.1 Rate limit of 21 mails per 1h reached;")
                    code = refused.smtp_code
                with lock:
                    codes.append(code)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    return codes


@pytest.mark.parametrize("daemon", [False, True])
def test_sixteen_parallel_sessions_get_exactly_n_mails_accepted(tmp_path: Path, daemon: bool) -> None:
    log = tmp_path / "log"
    args = [f"--command={maildir_command(tmp_path / 'mail')}", f"--log={log}",
            f"--max-sessions={SESSIONS}", f"--spare-workers={SESSIONS}", f"--rate-limit={LIMIT}/1h"]
    if daemon:
        args += ["--daemon", f"--pidfile={tmp_path / 'pid'}"]
    with Server(args) as server:
        try:
            codes = send_in_parallel(server.port)
            assert len(codes) == SESSIONS * MAILS_EACH
            assert codes.count(250) == LIMIT and codes.count(450) == len(codes) - LIMIT
            assert len(wait_for_mails(tmp_path / "mail", LIMIT)) == LIMIT
            wait_for_log(log, "over --rate-limit (21 per 1h)")
        finally:
            if daemon:
                subprocess.run(["kill", (tmp_path / "pid").read_text().strip()], check=False)
    assert len(delivered(tmp_path / "mail")) == LIMIT


def test_a_logged_in_user_is_counted_as_the_user(tmp_path: Path) -> None:
    htpasswd(tmp_path / "users", "alice", "secret", "-B")
    with Server([f"--command={maildir_command(tmp_path / 'mail')}", f"--auth-file={tmp_path / 'users'}",
                 f"--max-sessions={SESSIONS}", "--rate-limit=2/1h"]) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as smtp:
            smtp.login("alice", "secret")
            smtp.sendmail("a@example.org", ["b@example.org"], "Subject: 1\r\n\r\none\r\n")
            smtp.sendmail("a@example.org", ["b@example.org"], "Subject: 2\r\n\r\ntwo\r\n")
            code, text = smtp.docmd("MAIL", "FROM:<a@example.org>")
            assert code == 450 and b"try again in " in text
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as smtp:  # another login, same user
            smtp.login("alice", "secret")
            assert smtp.docmd("MAIL", "FROM:<a@example.org>")[0] == 450
    assert len(delivered(tmp_path / "mail")) == 2


def test_inetd_refuses_the_option() -> None:
    done = subprocess.run([program("msmtpd"), "--inetd", "--rate-limit=5/1m"], input=b"",
                          capture_output=True, timeout=WAIT)
    assert done.returncode == 3
    assert done.stderr.count(b"\n") == 1 and b"--rate-limit" in done.stderr
