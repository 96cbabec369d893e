"""The manual's DESCRIPTION tells how the pool really grows (issue 17,
item 13): from --spare-workers idle workers, on demand, up to
--max-sessions; it used to say that msmtpd starts --max-sessions workers."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import List

from tests import helpers

MAN_PAGE = Path(__file__).resolve().parent.parent / "msmtpd.1"


def section(name: str) -> str:
    """A section of the man page as plain words (roff requests and escapes removed)."""
    source = MAN_PAGE.read_text()
    start = source.index(f".SH {name}\n")
    end = source.index("\n.SH ", start + 1)
    words = []
    for line in source[start:end].splitlines()[1:]:
        if line.startswith("."):
            line = line.partition(" ")[2] if " " in line else ""
        words.append(line.replace("\\-", "-").replace("\\c", "").replace("\\&", ""))
    return re.sub(r"\s+", " ", " ".join(words))


def test_the_description_says_the_pool_grows_from_the_spare_workers() -> None:
    text = section("DESCRIPTION")
    assert "pool of --max-sessions worker" not in text, text
    assert "--spare-workers idle workers ready" in text, text
    assert "never more than --max-sessions" in text, text


def test_the_pool_grows_as_the_description_says() -> None:
    """Two idle workers, not eight; each session taken brings another."""
    with helpers.Server(["--max-sessions=8", "--command=cat >/dev/null; :"]) as server:
        assert helpers.wait_until(lambda: len(helpers.children(server.pid)) == 2)
        clients: List[socket.socket] = []
        try:
            for _ in range(3):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
                clients.append(sock)
                assert sock.recv(512).startswith(b"220 ")
            assert helpers.wait_until(lambda: len(helpers.children(server.pid)) == 5), \
                helpers.children(server.pid)
        finally:
            for sock in clients:
                sock.close()
