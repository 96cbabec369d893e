"""The exactly-once check: the files the run added to the store, once no
delivery command writes to it any more, classified against what the
clients saw."""

from __future__ import annotations

import collections
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

from benchkit.load.mails import ACKED, REFUSED, UNKNOWN, Mail


def store_files(maildir: Path) -> Dict[str, Path]:
    found: Dict[str, Path] = {}
    for sub in ("new", "cur"):
        try:
            with os.scandir(maildir / sub) as entries:
                for entry in entries:
                    if entry.is_file():
                        found[f"{sub}/{entry.name}"] = Path(entry.path)
        except FileNotFoundError:
            pass
    return found


def store_busy(maildir: Path) -> bool:
    """Does a delivery command still write to ``maildir``?  (A command whose
    worker was killed runs on unsupervised; wait for it before counting.)"""
    needle = os.fsencode(str(maildir))
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in command and b"--command" not in command:  # not msmtpd itself
            return True
    return False


def settle(maildir: Path, until: float) -> Tuple[bool, int]:
    """Wait until no delivery command writes to the store; returns whether it
    settled and how many times a straggler was seen still running."""
    seen = 0
    quiet_since = None
    while time.monotonic() < until:
        if store_busy(maildir):
            seen += 1
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 0.5:
            return True, seen
        time.sleep(0.05)
    return False, seen


HEADER = re.compile(rb"^([A-Za-z-]+):[ \t]*(.*?)\r?$", re.MULTILINE)


@dataclass
class Verdict:
    files: int = 0
    lost: List[str] = field(default_factory=list)  # attempt acked, nothing arrived
    duplicated: List[str] = field(default_factory=list)  # one attempt arrived twice or more
    window: List[str] = field(default_factory=list)  # no reply came, yet arrived (RFC 1047)
    window_repeats: List[str] = field(default_factory=list)  # Message-IDs stored twice thereby
    refused_delivered: List[str] = field(default_factory=list)  # answered 4xx/5xx, yet arrived
    premature: List[str] = field(default_factory=list)  # final dot never sent, yet arrived
    unexpected: List[str] = field(default_factory=list)  # arrived, never sent
    corrupt: List[str] = field(default_factory=list)  # arrived, but not as sent
    delivered_once: int = 0  # acked attempts stored exactly once

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.refused_delivered or self.premature
                    or self.unexpected or self.corrupt)


def cut_before_headers(data: bytes) -> bool:
    """Is this what a store writes when the mail ended before the sender's
    headers: the envelope lines and, at most, the start of msmtpd's own
    ``Received:`` header?"""
    lines = data.split(b"\n")
    while lines and lines[0].startswith((b"Return-Path:", b"Delivered-To:")):
        lines.pop(0)
    rest = b"\n".join(lines)
    return not rest or rest.startswith(b"Received:") or b"Received:".startswith(rest)


def verify(mails: List[Mail], files: Dict[str, Path], date: str) -> Verdict:
    verdict = Verdict(files=len(files))
    by_id = {mail.message_id: mail for mail in mails}
    by_recipient = {mail.recipient.encode(): mail for mail in mails}
    copies: Dict[Tuple[int, int], int] = collections.Counter()
    for name, path in sorted(files.items()):
        try:
            data = path.read_bytes()
        except OSError:
            verdict.unexpected.append(f"{name} (unreadable)")
            continue
        head, blank, body = data.partition(b"\n\n")
        fields: Dict[bytes, List[bytes]] = collections.defaultdict(list)
        for match in HEADER.finditer(head):
            fields[match.group(1).lower()].append(match.group(2))
        ids = fields.get(b"message-id", [])
        numbers = fields.get(b"x-load-attempt", [])
        recipients = fields.get(b"delivered-to")
        mail = by_id.get(ids[0].decode("ascii", "replace")) if len(ids) == 1 else None
        number = int(numbers[0]) if len(numbers) == 1 and numbers[0].isdigit() else 0
        if mail is None and not ids and recipients is not None and len(recipients) == 1 \
                and cut_before_headers(data):
            # Cut before its own headers: the envelope still tells whose it is.
            mail = by_recipient.get(recipients[0])
        if mail is None:
            verdict.unexpected.append(f"{name} ({b', '.join(ids).decode('ascii', 'replace') or 'no id'})")
            continue
        if not 1 <= number <= len(mail.attempts):
            verdict.corrupt.append(f"{mail.message_id} attempt unknown ({name}, {len(data)} bytes, "
                                   f"{len(body)} of {len(mail.body)} body bytes)")
            continue
        copies[mail.index, number] += 1
        intact = (blank and body == mail.body and (head + b"\n").endswith(mail.headers(number, date))
                  and (recipients is None or recipients == [mail.recipient.encode()]))
        if not intact:
            verdict.corrupt.append(f"{mail.message_id} attempt {number} ({name}, {len(data)} bytes, "
                                   f"{len(body)} of {len(mail.body)} body bytes)")
    for mail in mails:
        stored = 0
        for attempt in mail.attempts:
            count = copies.get((mail.index, attempt.number), 0)
            stored += count
            label = f"{mail.message_id} attempt {attempt.number}"
            if count > 1:
                verdict.duplicated.append(f"{label} ({count} copies)")
            if attempt.outcome == ACKED:
                if count == 0:
                    verdict.lost.append(label)
                elif count == 1:
                    verdict.delivered_once += 1
            elif count and attempt.outcome == UNKNOWN:
                verdict.window.append(label)
            elif count and attempt.outcome == REFUSED:
                verdict.refused_delivered.append(f"{label} (answered {attempt.code})")
            elif count:
                verdict.premature.append(label)
        if stored > 1 and mail.acked and not any(
                copies.get((mail.index, a.number), 0) > 1 for a in mail.attempts):
            verdict.window_repeats.append(mail.message_id)
    return verdict
