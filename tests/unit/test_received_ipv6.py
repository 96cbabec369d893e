"""The Received header names an IPv6 client with RFC 5321's address
literal, ``[IPv6:::1]`` (section 4.1.3), not ``[::1]`` (issue 17, item 12):
the literals; a client on ::1 is in tests/system."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("peer, literal", [
    ("192.0.2.7", "[192.0.2.7]"),
    ("::1", "[IPv6:::1]"),
    ("2001:db8::25", "[IPv6:2001:db8::25]"),
    # An IPv4 client of a dual-stack socket is an IPv4 client.
    ("::ffff:192.0.2.7", "[192.0.2.7]"),
    ("::FFFF:192.0.2.7", "[192.0.2.7]"),
    # A zone (interface scope) is no part of RFC 5321's IPv6-addr.
    ("fe80::1%eth0", "[IPv6:fe80::1]"),
])
def test_address_literals(peer: str, literal: str) -> None:
    from msmtpd.net.peer import ip_literal as address_literal

    assert address_literal(peer) == literal
