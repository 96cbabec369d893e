"""PROXY protocol headers for the tests, as a proxy would send them
(HAProxy's specification, sections 2.1 and 2.2)."""

from __future__ import annotations

import socket
import struct

from msmtpd.net.proxy_header import V2_SIGNATURE

PROXY_V2_LOCAL, PROXY_V2_PROXY = 0x20, 0x21
INET_STREAM, INET6_STREAM = 0x11, 0x21


def v1(source: str, destination: str = "127.0.0.1", source_port: int = 40000,
       destination_port: int = 25) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {destination} {source_port} {destination_port}\r\n".encode()


def v2(command: int = PROXY_V2_PROXY, family: int = INET_STREAM, body: bytes = b"",
       length: int = -1) -> bytes:
    """A v2 header around ``body``; ``length`` other than -1 lies about its size."""
    return V2_SIGNATURE + struct.pack("!BBH", command, family, len(body) if length < 0 else length) + body


def v2_inet(source: str, destination: str = "", source_port: int = 40000,
            destination_port: int = 25, tlvs: bytes = b"") -> bytes:
    """A v2 PROXY header for a TCP client over IPv4 or IPv6 (by ``source``)."""
    six = ":" in source
    family = socket.AF_INET6 if six else socket.AF_INET
    destination = destination or ("::1" if six else "127.0.0.1")
    body = (socket.inet_pton(family, source) + socket.inet_pton(family, destination)
            + struct.pack("!HH", source_port, destination_port) + tlvs)
    return v2(family=INET6_STREAM if six else INET_STREAM, body=body)
