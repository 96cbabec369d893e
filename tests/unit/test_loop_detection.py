"""Loop detection on in-memory streams: more than MAX_RECEIVED_HEADERS
``Received:`` fields in the header section get 554 5.4.6 after the final
dot (DATA and BDAT), nothing delivered; Received lines in the body, or
split across chunks anywhere, are counted right."""

from __future__ import annotations

from typing import Callable, List, Tuple

import pytest

from msmtpd.smtp import replies
from msmtpd.smtp.message import MAX_RECEIVED_HEADERS, HopCounter
from tests.support.session_script import FakeDeliver, Result, lines, talk

ENVELOPE = ("EHLO client.test", "MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>")


def message(hops: int, body_hops: int = 0, field: bytes = b"Received") -> bytes:
    header = b"".join(field + b": from relay%d.test by relay%d.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
                      % (i, i + 1) for i in range(hops))
    body = b"".join(b"Received: from body%d\r\n" % i for i in range(body_hops))
    return header + b"Subject: hops\r\n\r\nbody\r\n" + body


def counted(data: bytes, cuts: List[int]) -> int:
    counter = HopCounter()
    start = 0
    for cut in [*cuts, len(data)]:
        counter.feed(data[start:cut])
        start = cut
    return counter.count


@pytest.mark.parametrize("cuts", [[], [1], [9, 10, 11], list(range(1, 400))])
def test_fields_split_anywhere_are_counted_once(cuts: List[int]) -> None:
    data = message(7).replace(b"\r\n", b"\n")
    assert counted(data, cuts) == 7


def test_only_the_header_section_counts() -> None:
    data = message(3, body_hops=60).replace(b"\r\n", b"\n")
    assert counted(data, []) == 3
    assert counted(data, list(range(1, len(data)))) == 3
    # no header at all: the body starts at once
    assert counted(b"\nReceived: x\nReceived: y\n", []) == 0


def test_field_names_are_case_insensitive_and_continuations_do_not_count() -> None:
    data = b"RECEIVED: a\nreceived: b\n Received: folded\nX-Received: c\nReceived : d\n\n"
    assert counted(data, []) == 2


def data_session(mail: bytes) -> Tuple[Result, FakeDeliver]:
    deliver = FakeDeliver()
    result = talk(lines(*ENVELOPE, "DATA") + mail + b".\r\nQUIT\r\n", deliver=deliver)
    return result, deliver


def bdat_session(mail: bytes, size: int) -> Tuple[Result, FakeDeliver]:
    deliver = FakeDeliver()
    chunks = [mail[i:i + size] for i in range(0, len(mail), size)]
    wire = b"".join(b"BDAT %d%s\r\n" % (len(c), b" LAST" if i == len(chunks) - 1 else b"") + c
                    for i, c in enumerate(chunks))
    result = talk(lines(*ENVELOPE) + wire + b"QUIT\r\n", deliver=deliver)
    return result, deliver


@pytest.mark.parametrize("send", [data_session, lambda m: bdat_session(m, 7),
                                  lambda m: bdat_session(m, 1 << 20)])
def test_one_hop_too_many_is_refused_and_not_delivered(
        send: Callable[[bytes], Tuple[Result, FakeDeliver]]) -> None:
    result, deliver = send(message(MAX_RECEIVED_HEADERS + 1))
    assert replies.TOO_MANY_HOPS in result.replies
    assert result.replies[-2] == replies.TOO_MANY_HOPS
    assert deliver.mails == []
    result, deliver = send(message(MAX_RECEIVED_HEADERS, body_hops=60))
    assert result.replies[-2] == replies.DELIVERED
    assert len(deliver.mails) == 1
