"""The envelope of a queued mail (``ID.env``): ``key: value`` lines a person
can read, with every value escaped (``\\\\`` and ``\\xNN``) so that no client
string can forge a line.  Kept apart from the store so that reading and
writing the format is one small module."""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Sequence

SHA256_HEX_LENGTH = 64


def encode_value(value: str) -> str:
    """Backslash and every control character escaped: one value, one line."""
    out = []
    for char in value:
        if char == "\\":
            out.append("\\\\")
        elif ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 or char in "\u2028\u2029":
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


def decode_value(text: str) -> str:
    out = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and text[index + 1:index + 2] == "\\":
            out.append("\\")
            index += 2
        elif char == "\\" and text[index + 1:index + 2] in ("x", "u"):
            width = 2 if text[index + 1] == "x" else 4
            try:
                out.append(chr(int(text[index + 2:index + 2 + width], 16)))
            except ValueError:
                out.append(char)
                index += 1
                continue
            index += 2 + width
        else:
            out.append(char)
            index += 1
    return "".join(out)


def iso_time(when: float) -> str:
    """UTC as ISO 8601, to the millisecond: what a person reads in the envelope."""
    whole = int(when)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{int((when - whole) * 1000):03d}Z"


# What reading an envelope imports on first use (time.strptime's module and
# calendar): a queue process hands these to privileges.drop.
QUEUE_LATE_MODULES = ("calendar", "_strptime")


def parse_iso_time(text: str) -> float:
    import calendar

    seconds, _, fraction = text.rstrip("Z").partition(".")
    try:
        whole = calendar.timegm(time.strptime(seconds, "%Y-%m-%dT%H:%M:%S"))
        return whole + (int(fraction) / 10 ** len(fraction) if fraction.isdigit() else 0.0)
    except ValueError:
        return 0.0


def new_id() -> str:
    """Sortable by arrival (UTC time to the microsecond), unique (pid and
    random bits), safe as a file name; nothing from the client."""
    now = time.time()
    micro = int(now * 1_000_000) % 1_000_000
    return f"{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}{micro:06d}-{os.getpid()}-{os.urandom(3).hex()}"


def is_id(name: str) -> bool:
    return bool(name) and not name.startswith(".") and all(c.isalnum() or c == "-" for c in name)


class QueuedEnvelope:
    """What the queue knows of one mail besides its message."""

    def __init__(self, sender: str, recipients: Sequence[str], arrived: float, client: str,
                 size: int = 0) -> None:
        self.sender = sender
        self.recipients = list(recipients)
        self.arrived = arrived
        self.client = client
        self.size = size
        self.attempts = 0
        self.next_try = arrived
        self.last_try = 0.0
        self.last_error = ""
        self.failed = ""  # the reason, once in failed/
        # What ID.msg held when it was stored (its octets on disk, and their
        # SHA-256 in hex); None in envelopes of older versions: not checked.
        self.message_size: Optional[int] = None
        self.message_sha256: Optional[str] = None

    def render(self, mail_id: str) -> bytes:
        lines = [f"id: {mail_id}", f"sender: {encode_value(self.sender)}"]
        lines += [f"recipient: {encode_value(r)}" for r in self.recipients]
        lines += [f"arrived: {iso_time(self.arrived)}", f"client: {encode_value(self.client)}",
                  f"size: {self.size}"]
        if self.message_sha256 is not None:
            lines += [f"message-size: {self.message_size}",
                      f"message-sha256: {self.message_sha256}"]
        lines += [f"attempts: {self.attempts}",
                  f"next-try: {iso_time(self.next_try)}",
                  f"last-try: {iso_time(self.last_try) if self.last_try else ''}",
                  f"last-error: {encode_value(self.last_error)}"]
        if self.failed:
            lines.append(f"failed: {encode_value(self.failed)}")
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")

    @classmethod
    def parse(cls, data: bytes) -> QueuedEnvelope:
        fields: Dict[str, str] = {}
        recipients: List[str] = []
        for line in data.decode("utf-8", "surrogateescape").splitlines():
            key, _, value = line.partition(": ")
            if key == "recipient":
                recipients.append(decode_value(value))
            else:
                fields[key] = value
        if "sender" not in fields or not recipients:
            raise ValueError("envelope without sender or recipients")
        envelope = cls(decode_value(fields["sender"]), recipients,
                       parse_iso_time(fields.get("arrived", "")), decode_value(fields.get("client", "")),
                       int(fields.get("size", "0") or 0))
        envelope.attempts = int(fields.get("attempts", "0") or 0)
        envelope.next_try = parse_iso_time(fields.get("next-try", "")) or envelope.arrived
        envelope.last_try = parse_iso_time(fields.get("last-try", ""))
        envelope.last_error = decode_value(fields.get("last-error", ""))
        envelope.failed = decode_value(fields.get("failed", ""))
        if "message-sha256" in fields:
            digest = fields["message-sha256"]
            if len(digest) != SHA256_HEX_LENGTH or digest.strip("0123456789abcdef"):
                raise ValueError("envelope with a malformed message-sha256")
            size = fields.get("message-size", "")
            if not size.isdigit():
                raise ValueError("envelope with a malformed message-size")
            envelope.message_sha256, envelope.message_size = digest, int(size)
        return envelope
