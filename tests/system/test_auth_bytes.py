"""Passwords are bytes: a client's password matches when it sends exactly
the bytes stored, never after decoding with replacement characters made
two different passwords one.  Real daemons, real AUTH PLAIN with smtplib:
--auth-file with hashes the real ``htpasswd -bB`` made of Latin-1 and
UTF-8 passwords, and --auth with a passwordeval that prints Latin-1."""

from __future__ import annotations

import base64
import smtplib
from pathlib import Path
from typing import List, Sequence, Tuple

from tests import helpers

LATIN1 = b"caf\xe9"  # "café" in Latin-1: not UTF-8
REPLACED = "caf\ufffd".encode()  # what decoding LATIN1 with replacement made of it
OTHER = b"caf\xff"  # another byte that decoding used to turn into the same U+FFFD


def auth_plain(server: helpers.Server, attempts: Sequence[Tuple[bytes, bytes]]) -> List[int]:
    """Each (user, password) in a session of its own: AUTH PLAIN's reply code."""
    codes = []
    for user, password in attempts:
        with smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=20) as smtp:
            smtp.ehlo()
            token = base64.b64encode(b"\0" + user + b"\0" + password).decode()
            codes.append(smtp.docmd("AUTH", f"PLAIN {token}")[0])
    return codes


def test_auth_file_compares_the_bytes_the_client_sent(tmp_path: Path) -> None:
    users = tmp_path / "users"
    helpers.htpasswd(users, "latin", LATIN1, "-B", "-C", "4")
    helpers.htpasswd(users, "utf8", REPLACED, "-B", "-C", "4")
    with helpers.Server([f"--auth-file={users}", "--command=cat >/dev/null"]) as server:
        # The successes first: after a failure every answer is a second late.
        assert auth_plain(server, [(b"latin", LATIN1), (b"utf8", REPLACED)]) == [235, 235]
        assert auth_plain(server, [(b"utf8", LATIN1), (b"utf8", OTHER), (b"latin", OTHER),
                                   (b"latin", REPLACED)]) == [535] * 4


def test_auth_compares_the_bytes_of_its_one_password(tmp_path: Path) -> None:
    """passwordeval's first line is the password, byte for byte."""
    args = ["--auth=mailer,printf 'caf\\351\\n'", "--command=cat >/dev/null"]
    with helpers.Server(args) as server:
        assert auth_plain(server, [(b"mailer", LATIN1)]) == [235]
        assert auth_plain(server, [(b"mailer", OTHER), (b"mailer", REPLACED)]) == [535, 535]
    args = ["--auth=mailer,printf 'caf\\357\\277\\275\\n'", "--command=cat >/dev/null"]
    with helpers.Server(args) as server:
        assert auth_plain(server, [(b"mailer", REPLACED)]) == [235]
        assert auth_plain(server, [(b"mailer", LATIN1), (b"mailer", OTHER)]) == [535, 535]
