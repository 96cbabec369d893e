"""Loop detection on a real daemon: smtplib sends a mail with 50
Received: headers (delivered, msmtpd's own on top), one with 51 (554 5.4.6,
nothing delivered, logged), and one with 60 Received: lines in its body
(delivered); a raw client sends the 51 with BDAT."""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import Server, delivered, maildir_command, received_headers, wait_for_log, wait_for_mails
from tests.support.raw_smtp import start_session

WAIT = 15.0


def message(hops: int, body_hops: int = 0) -> bytes:
    header = b"".join(b"Received: from relay%d.test by relay%d.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
                      % (i, i + 1) for i in range(hops))
    body = b"".join(b"Received: from body%d.test\r\n" % i for i in range(body_hops))
    return header + b"Subject: hops\r\n\r\nbody\r\n" + body


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    log = tmp_path / "log"
    with Server([f"--command={maildir_command(tmp_path / 'mail')}", f"--log={log}"]) as running:
        yield running


def test_fifty_hops_pass_fifty_one_are_refused(server: Server, tmp_path: Path) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as smtp:
        smtp.sendmail("a@example.org", ["b@example.org"], message(50))
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("a@example.org", ["b@example.org"], message(51))
        assert refused.value.smtp_code == 554
        assert refused.value.smtp_error == b"5.4.6 Too many hops"
        smtp.sendmail("a@example.org", ["b@example.org"], message(0, body_hops=60))
    mails = wait_for_mails(tmp_path / "mail", 2)
    wait_for_log(tmp_path / "log", "more than 50 Received: headers")
    assert len(mails) == 2
    assert sorted(len(received_headers(m)) for m in mails) == [1, 51]


def test_bdat_with_fifty_one_hops_is_refused(server: Server, tmp_path: Path) -> None:
    mail = message(51)
    client = start_session(server.port, through_rcpt=True)
    try:
        half = len(mail) // 2
        assert client.command(b"BDAT %d\r\n" % half + mail[:half]).startswith(b"250 ")
        reply = client.command(b"BDAT %d LAST\r\n" % (len(mail) - half) + mail[half:])
        assert reply == b"554 5.4.6 Too many hops\r\n"
        assert client.command(b"QUIT\r\n").startswith(b"221")
    finally:
        client.close()
    wait_for_log(tmp_path / "log", "more than 50 Received: headers")
    assert delivered(tmp_path / "mail") == []
