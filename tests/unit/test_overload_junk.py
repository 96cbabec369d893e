"""Sessions that hold the pool with junk (issue 17, item 8), in memory:
junk keeps the overload clock running and progress restarts it; the real
pool is in tests/system."""

from __future__ import annotations

import io
from typing import List, Sequence

from msmtpd.net.connection import Connection, MemoryTransport
from msmtpd.smtp.message import Spool
from msmtpd.smtp.replies import Reply
from msmtpd.smtp.session import Envelope, Session, Settings
from tests.helpers import Clock

# -- which commands restart the overload clock (no sockets) ------------------------




def refuse_delivery(envelope: Envelope, spool: Spool) -> Reply:
    raise AssertionError("nothing is delivered here")


def unproductive_after(commands: Sequence[bytes], answered_at: float = 5.0) -> List[float]:
    """Each command answered ``answered_at`` seconds after the previous
    reply; how long without progress the session is once each reply is out."""
    clock = Clock(1000.0)
    connection = Connection(MemoryTransport(lambda size: b"", io.BytesIO()), None, clock=clock)
    session = Session(connection, Settings(hostname="mx.test"), refuse_delivery)
    seen = []
    for line in commands:
        clock.now += answered_at
        reply = session.handle_line(line + b"\r\n")
        if reply is not None:
            session.reply(reply)
        connection.flush()
        seen.append(connection.unproductive_seconds)
    return seen


def test_junk_keeps_the_clock_running_and_progress_restarts_it() -> None:
    seen = unproductive_after([
        b"EHLO client.test",          # the first greeting: progress
        b"NOOP", b"RSET", b"HELP", b"VRFY x", b"EXPN x",
        b"EHLO client.test",          # a greeting again: no progress
        b"MAIL FROM:<broken",         # refused (501)
        b"RCPT TO:<b@example.org>",   # refused (503: no MAIL)
        b"MAIL FROM:<a@example.org>",  # accepted: progress
        b"NOOP",
        b"RCPT TO:<b@example.org>",   # accepted: progress
        b"RCPT TO:<-x@example.org>",  # refused
    ])
    assert seen == [0, 5, 10, 15, 20, 25, 30, 35, 40, 0, 5, 0, 5], seen
