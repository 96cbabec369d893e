"""The manual's DESCRIPTION tells how the pool really grows (issue 17,
item 13): from --spare-workers idle workers, on demand, up to
--max-sessions: a real master holds to it (the text is in tests/unit)."""

from __future__ import annotations

import os
import socket
from typing import List

from tests import helpers


def test_the_pool_grows_as_the_description_says() -> None:
    """Two idle workers, not eight; each session taken brings another."""
    # The helper's own probe of the port is a session too, and brings a third
    # worker; a surplus worker leaves after a second here instead of a minute.
    env = dict(os.environ, MSMTPD_SURPLUS_IDLE_SECONDS="1")
    with helpers.Server(["--max-sessions=8", "--command=cat >/dev/null; :"], env=env) as server:
        assert helpers.wait_until(lambda: len(helpers.children(server.pid)) == 2, timeout=30), \
            helpers.children(server.pid)
        clients: List[socket.socket] = []
        try:
            for _ in range(3):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
                clients.append(sock)
                assert sock.recv(512).startswith(b"220 ")
            assert helpers.wait_until(lambda: len(helpers.children(server.pid)) == 5, timeout=30), \
                helpers.children(server.pid)
        finally:
            for sock in clients:
                sock.close()
