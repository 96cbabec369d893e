"""The Received header names an IPv6 client with RFC 5321's address
literal, ``[IPv6:::1]`` (section 4.1.3), not ``[::1]`` (issue 17, item 12): a real client on ::1 (the literals
themselves are in tests/unit)."""

from __future__ import annotations

import re
import smtplib
import socket
from pathlib import Path

from tests import helpers


def ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_a_client_on_ipv6_loopback_is_an_ipv6_address_literal(tmp_path: Path) -> None:
    if not socket.has_ipv6 or not ipv6_loopback_works():
        helpers.unavailable("no IPv6 loopback (::1) on this machine")
    maildir = tmp_path / "Maildir"
    with helpers.Server([f"--command={helpers.maildir_command(maildir)}", "--max-sessions=1"],
                        host="::1") as server:
        with smtplib.SMTP("::1", server.port, local_hostname="client.test", timeout=15) as smtp:
            smtp.sendmail("a@example.org", ["b@example.org"], "Subject: v6\r\n\r\nbody\r\n")
    mails = helpers.wait_for_mails(maildir, 1)
    assert len(mails) == 1
    received = [line for line in mails[0].split(b"\n") if line.startswith(b"Received: ")]
    assert len(received) == 1, mails[0]
    assert re.fullmatch(rb"Received: from client\.test \(\[IPv6:::1\]\)", received[0]), received
