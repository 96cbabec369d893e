"""AUTH PLAIN by the RFCs: an authorization identity other than the
login's own fails (RFC 4616 section 2) and counts as a failure; ``=``, the
empty initial response of RFC 4954 section 4, is answered as what it is.
Real daemons and smtplib, then the session in memory.
Here the real processes; the part in memory is in tests/unit/test_auth_plain.py."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

from msmtpd.smtp import replies
from tests import helpers
from tests.helpers import auth_plain


def test_an_authzid_of_another_user_is_535_and_counts_as_a_failure(tmp_path: Path) -> None:
    users = tmp_path / "users"
    log = tmp_path / "msmtpd.log"
    for user in ("alice", "bob"):
        helpers.htpasswd(users, user, f"{user}-pw", "-B", "-C", "4")
    args = [f"--auth-file={users}", "--command=cat >/dev/null", f"--log={log}", "--max-sessions=2"]
    with helpers.Server(args) as server:
        with smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=20) as smtp:
            smtp.ehlo()
            # alice's own password, but asking to act as bob: refused.
            started = time.monotonic()
            assert smtp.docmd("AUTH", f"PLAIN {auth_plain('alice', 'alice-pw', authzid='bob')}") == (
                535, replies.AUTH_OTHER_IDENTITY.text.encode())
            assert time.monotonic() - started < 0.9  # no failure before it: no delay
            assert smtp.docmd("MAIL", "FROM:<bob@example.org>")[0] == 530
            # Counted as a failure: the shared delay is on, in this session ...
            started = time.monotonic()
            assert smtp.docmd("AUTH", f"PLAIN {auth_plain('alice', 'alice-pw', authzid='alice')}")[0] == 235
            assert time.monotonic() - started >= 1.0
        with smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=20) as smtp:
            smtp.ehlo()  # ... and in the next one
            started = time.monotonic()
            assert smtp.docmd("AUTH", f"PLAIN {auth_plain('bob', 'bob-pw')}")[0] == 235
            assert time.monotonic() - started >= 1.0
        with smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=20) as smtp:
            smtp.ehlo()  # the third failure in a session closes it, as for a wrong password
            attempt = f"PLAIN {auth_plain('bob', 'bob-pw', authzid='alice')}"
            assert smtp.docmd("AUTH", attempt)[0] == 535
            assert smtp.docmd("AUTH", attempt)[0] == 535
            assert smtp.docmd("AUTH", attempt)[0] == 535
            assert smtp.getreply()[0] == 421
    text = helpers.log_text(log)
    assert "authentication failed for user alice: may not act as bob" in text
    assert "authenticated as bob" in text and "alice-pw" not in text


def test_auth_with_one_user_refuses_another_authzid_too(tmp_path: Path) -> None:
    args = ["--auth=mailer,echo s3cret", "--command=cat >/dev/null"]
    with helpers.Server(args) as server:
        with smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=20) as smtp:
            smtp.ehlo()
            assert smtp.docmd("AUTH", f"PLAIN {auth_plain('mailer', 's3cret', authzid='mailer')}")[0] == 235
        with smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=20) as smtp:
            smtp.ehlo()
            assert smtp.docmd("AUTH", f"PLAIN {auth_plain('mailer', 's3cret', authzid='root')}")[0] == 535


def test_an_empty_initial_response_is_answered_as_such(tmp_path: Path) -> None:
    args = ["--auth=mailer,echo s3cret", "--command=cat >/dev/null"]
    with helpers.Server(args) as server:
        with smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=20) as smtp:
            smtp.ehlo()
            code, text = smtp.docmd("AUTH", "PLAIN =")
            assert (code, text) == (501, replies.AUTH_PLAIN_EMPTY.text.encode())
            assert b"Empty response" in text and b"base64" not in text
            assert smtp.docmd("AUTH", f"PLAIN {auth_plain('mailer', 's3cret')}")[0] == 235
