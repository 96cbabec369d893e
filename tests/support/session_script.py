"""A whole SMTP session in memory (no sockets): a scripted client, a
delivery that records the mails, and the replies parsed; shared by the
unit tests of the session and of what it asks (accounts, senders, AUTH)."""

from __future__ import annotations

import io
from typing import Any, Callable, List, NamedTuple, Optional, Sequence

from msmtpd.net.connection import in_memory
from msmtpd.net.peer import Peer
from msmtpd.smtp import replies
from msmtpd.smtp.message import Spool
from msmtpd.smtp.replies import Reply
from msmtpd.smtp.session import (
    Envelope,
    Session,
    Settings,
)

HOST = "mx.test"



Recv = Callable[[int], bytes]



class Mail(NamedTuple):
    sender: str
    recipients: List[str]
    data: bytes



class FakeDeliver:
    """Records every delivery and answers with queued replies (250 when none)."""

    def __init__(self, *answers: Reply) -> None:
        self.answers = list(answers)
        self.mails: List[Mail] = []

    def __call__(self, envelope: Envelope, spool: Spool) -> Reply:
        self.mails.append(Mail(envelope.sender, list(envelope.recipients), spool.read_all()))
        return self.answers.pop(0) if self.answers else replies.DELIVERED



class Result(NamedTuple):
    replies: List[Reply]
    quit: bool
    mails: List[Mail]
    raw: bytes

    @property
    def codes(self) -> List[int]:
        return [r.code for r in self.replies]



def parse_replies(raw: bytes) -> List[Reply]:
    """Split the writer's output into replies, joining multi-line ones."""
    out: List[Reply] = []
    pending: List[str] = []
    for line in raw.decode("utf-8").split("\r\n")[:-1]:
        code, sep, text = int(line[:3]), line[3], line[4:]
        pending.append(text)
        if sep == " ":
            out.append(Reply(code, "\n".join(pending)))
            pending = []
        else:
            assert sep == "-", line
    assert not pending, raw
    return out



def talk(script: bytes | Recv, settings: Optional[Settings] = None,
         deliver: Optional[FakeDeliver] = None, peer: Peer | str = "192.0.2.7") -> Result:
    """Run a whole session on ``script`` (bytes or a recv function)."""
    recv = io.BytesIO(script).read1 if isinstance(script, bytes) else script
    writer = io.BytesIO()
    deliver = deliver if deliver is not None else FakeDeliver()
    session = Session(in_memory(recv, writer), settings or Settings(hostname=HOST), deliver,
                      peer if isinstance(peer, Peer) else Peer(peer))
    ended_with_quit = session.run()
    raw = writer.getvalue()
    return Result(parse_replies(raw), ended_with_quit, deliver.mails, raw)



def lines(*commands: str) -> bytes:
    return "".join(c + "\r\n" for c in commands).encode("utf-8")



def transaction(body: str = "Subject: hi\r\n\r\nhello\r\n", sender: str = "<alice@example.org>",
                recipients: Sequence[str] = ("<bob@example.net>",), mail_params: str = "") -> List[str]:
    params = " " + mail_params if mail_params else ""
    return [f"MAIL FROM:{sender}{params}", *[f"RCPT TO:{r}" for r in recipients], "DATA", body + "."]


def converse(settings: Any, *lines: bytes | str, peer: Peer | str = "192.0.2.7") -> List[str]:
    """A whole session in memory (no sockets) on ``settings`` (a
    msmtpd.smtp.session.Settings): the reply lines, each ``CODE text``; every
    mail is answered as delivered."""
    script = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\r\n" for line in lines)
    writer = io.BytesIO()
    Session(in_memory(io.BytesIO(script).read1, writer), settings,
            lambda envelope, spool: replies.DELIVERED,
            peer if isinstance(peer, Peer) else Peer(peer)).run()
    return [line for line in writer.getvalue().decode("utf-8", "replace").split("\r\n")[:-1]
            if line[3:4] == " "]
