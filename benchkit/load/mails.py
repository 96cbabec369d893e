"""The mails of a load run: each with a Message-ID and a body of its own,
the attempts at sending it and their outcomes, and what goes on the wire."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

SENDER = "load@example.test"
# Outcomes of one attempt at sending a mail.
ACKED = "acked"  # the final reply was 250
REFUSED = "refused"  # a 4xx/5xx reply to MAIL, RCPT, DATA or the final dot
UNKNOWN = "unknown"  # the final dot was sent, no reply came: RFC 1047
UNSENT = "unsent"  # the connection broke before the final dot was sent


@dataclass
class Attempt:
    number: int
    outcome: str = UNSENT
    code: int = 0
    seconds: float = 0.0


@dataclass
class Mail:
    index: int
    message_id: str
    recipient: str
    body: bytes  # as stored: LF line endings, dot-unstuffed
    attempts: List[Attempt] = field(default_factory=list)

    def headers(self, attempt: int, date: str) -> bytes:
        return (f"From: Load <{SENDER}>\nTo: <{self.recipient}>\nDate: {date}\n"
                f"Subject: load mail {self.index}\nMessage-ID: {self.message_id}\n"
                f"X-Load-Attempt: {attempt}\n").encode()

    @property
    def acked(self) -> bool:
        return any(a.outcome == ACKED for a in self.attempts)


def make_body(index: int, run: str, size: int) -> bytes:
    """A body of about ``size`` bytes that says which mail it belongs to; one
    line starts with a dot, to check dot-stuffing both ways."""
    lines = [f"Mail {index} of load run {run}.", ".a line that starts with a dot", ""]
    length = sum(len(line) + 1 for line in lines)
    number = 0
    while length < size:
        line = f"{index:08d}-{number:06d} " + "abcdefghijklmnopqrstuvwxyz0123456789" * 2
        lines.append(line)
        length += len(line) + 1
        number += 1
    return ("\n".join(lines) + "\n").encode()


def wire(headers: bytes, body: bytes) -> bytes:
    """The DATA payload: CRLF line endings, dot-stuffed, with the final dot."""
    out = []
    for line in (headers + b"\n" + body).split(b"\n")[:-1]:
        out.append((b"." + line if line.startswith(b".") else line) + b"\r\n")
    out.append(b".\r\n")
    return b"".join(out)
