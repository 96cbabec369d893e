"""The PROXY protocol header (--proxy-protocol): the pure parser on a hostile
corpus, and the intake on in-memory streams (exactly to the header's end,
never an octet of SMTP behind it)."""

from __future__ import annotations

import io
from typing import List

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msmtpd.net.connection import in_memory
from msmtpd.net.proxy_header import (
    V1_MAX_LENGTH,
    Needed,
    ProxyHeader,
    ProxyHeaderError,
    parse,
)
from msmtpd.net.proxy_intake import read_proxy_header
from tests.support.proxy_headers import v2, v2_inet

V1_TCP4 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n"
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
# The longest v1 line of section 2.1: exactly 107 octets.
V1_LONGEST = (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
              .replace(b"f...f", b"ffff:ffff:ffff:ffff:ffff:ffff"))


def inet4(tlvs: bytes = b"") -> bytes:
    return v2_inet("192.0.2.7", "198.51.100.1", tlvs=tlvs)


def inet6() -> bytes:
    return v2_inet("2001:db8::7", "2001:db8::1")


def complete(data: bytes) -> ProxyHeader:
    parsed = parse(data)
    assert isinstance(parsed, ProxyHeader), parsed
    return parsed


@pytest.mark.parametrize("header, source", [
    (V1_TCP4, "192.0.2.7"), (V1_TCP6, "2001:db8::7"), (inet4(), "192.0.2.7"),
    (inet6(), "2001:db8::7"), (inet4(tlvs=b"\x04\x00\x03abc"), "192.0.2.7"),
])
def test_a_header_names_the_client_and_its_port(header: bytes, source: str) -> None:
    parsed = complete(header + b"EHLO x\r\n")
    assert (parsed.source, parsed.source_port, parsed.destination_port) == (source, 40000, 25)
    assert parsed.length == len(header)  # not an octet of SMTP taken as header


@pytest.mark.parametrize("header", [V1_UNKNOWN, V1_LONGEST, b"PROXY UNKNOWN 1.2.3.4 x y z\r\n",
                                    v2(command=0x20), v2(command=0x20, family=0x11, body=b"\x00" * 5),
                                    v2(family=0x00), v2(family=0x31, body=b"\x00" * 216)])
def test_local_unknown_and_addressless_families_keep_the_connection_address(header: bytes) -> None:
    parsed = complete(header + b"QUIT\r\n")
    assert parsed.source is None and parsed.length == len(header)
    assert "kept" in parsed.describe()


@pytest.mark.parametrize("data, reason", [
    (b"EHLO client\r\n", "no PROXY protocol header"),
    (b"PROXZ TCP4", "no PROXY protocol header"),
    (b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x0c", "wrong v2 signature"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\n", "CRLF"),
    (b"PROXY TCP4 192.0.2.7\r198.51.100.1 40000 25\r\n", "CRLF"),
    (b"PROXY " + b"1" * 120, "longer than 107"),
    (V1_LONGEST[:-2] + b" \r\n", "longer than 107"),
    (b"PROXY TCP5 192.0.2.7 198.51.100.1 40000 25\r\n", "malformed"),
    (b"PROXY TCP4 192.0.2.7  198.51.100.1 40000 25\r\n", "malformed"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 40000\r\n", "malformed"),
    (b"PROXY TCP4 2001:db8::7 198.51.100.1 40000 25\r\n", "not an IPv4"),
    (b"PROXY TCP6 192.0.2.7 2001:db8::1 40000 25\r\n", "not an IPv6"),
    (b"PROXY TCP4 192.0.2.256 198.51.100.1 40000 25\r\n", "invalid address"),
    (b"PROXY TCP6 fe80::1%eth0 2001:db8::1 40000 25\r\n", "invalid address"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n", "invalid port"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 040000 25\r\n", "invalid port"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 25\r\n", "invalid port"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 \xd9\xa1 25\r\n", "not ASCII"),
    (v2(command=0x11), "unknown version 1"),
    (v2(command=0x22), "unknown command 2"),
    (v2(family=0x41, body=b"\x00" * 12), "unknown address family"),
    (v2(family=0x12, body=b"\x00" * 12), "not a stream"),
    (v2(family=0x11, body=b"\x00" * 11), "too short"),  # a bogus length
    (v2(family=0x21, body=b"\x00" * 12), "too short"),
])
def test_a_hostile_header_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        for end in range(1, len(data) + 1):  # however it was split, never accepted
            parse(data[:end])


def test_needed_never_reaches_past_the_header_end() -> None:
    """Reading what parse asks for, octet counts included, ends exactly at
    the header: the reader can never take SMTP behind it."""
    for header in (V1_TCP4, V1_TCP6, V1_UNKNOWN, V1_LONGEST, inet4(), inet6(), v2(command=0x20)):
        have = b""
        while True:
            parsed = parse(have)
            if isinstance(parsed, ProxyHeader):
                break
            assert isinstance(parsed, Needed) and 0 < parsed.octets <= len(header) - len(have)
            have = header[:len(have) + parsed.octets]
        assert have == header


def test_a_bogus_long_v2_length_waits_for_its_octets() -> None:
    assert parse(v2(length=0xFFFF, body=inet4()[16:])) == Needed(0xFFFF - 12)


@given(st.binary(max_size=200))
def test_any_octets_give_an_answer_never_a_crash(data: bytes) -> None:
    try:
        parsed = parse(data)
    except ProxyHeaderError:
        return
    if isinstance(parsed, Needed):
        assert parsed.octets > 0
    else:
        assert parsed.length <= min(len(data), max(V1_MAX_LENGTH, 16 + 0xFFFF))


@given(st.binary(max_size=120))
def test_anything_after_the_v1_prefix_is_a_header_an_error_or_a_wait(tail: bytes) -> None:
    try:
        parsed = parse(b"PROXY " + tail)
    except ProxyHeaderError:
        return
    assert isinstance(parsed, (Needed, ProxyHeader))


# -- the intake, on in-memory streams -------------------------------------------

class Trickle:
    """A client that sends its octets in given pieces; records every size asked."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)
        self.asked: List[int] = []

    def __call__(self, size: int) -> bytes:
        self.asked.append(size)
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        if len(piece) > size:
            self.pieces.insert(0, piece[size:])
            piece = piece[:size]
        return piece


@pytest.mark.parametrize("header", [V1_TCP4, V1_TCP6, V1_UNKNOWN, inet4(), inet6(), v2(command=0x20)])
def test_the_intake_reads_exactly_to_the_header_end_even_byte_by_byte(header: bytes) -> None:
    smtp = b"EHLO client\r\nMAIL FROM:<a@b>\r\n"
    for pieces in ([header + smtp], [bytes([octet]) for octet in header + smtp]):
        client = Trickle(*pieces)
        connection = in_memory(client, io.BytesIO(), timeout=5)
        assert read_proxy_header(connection).length == len(header)
        assert connection.buffered == b""  # nothing of SMTP read along with it
        assert b"".join(client.pieces) == smtp  # never asked for an octet past the header
        assert connection.readline(512) == b"EHLO client\r\n"


@pytest.mark.parametrize("pieces, reason", [
    ([], "closed before sending"),
    ([V1_TCP4[:20]], "closed after 20 octets"),
    ([inet4()[:14]], "closed after 14 octets"),
    ([v2(length=40, body=b"\x00" * 12)], "closed after 28 octets"),
    ([b"EHLO me\r\n"], "no PROXY protocol header"),
])
def test_the_intake_refuses_a_missing_or_truncated_header(pieces: List[bytes], reason: str) -> None:
    connection = in_memory(Trickle(*pieces), io.BytesIO(), timeout=5)
    with pytest.raises(ProxyHeaderError, match=reason):
        read_proxy_header(connection)
