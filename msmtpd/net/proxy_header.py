"""The PROXY protocol header (HAProxy's specification, versions 1 and 2),
parsed from bytes: no socket, no clock, nothing but the octets.

A trusted load balancer (``--proxy-protocol``) sends one header before the
first octet of SMTP, saying which client it accepted.  :func:`parse` looks
at what has arrived so far and says one of three things: the header is
complete (and how long it is, so that not one octet of SMTP behind it is
taken as header), how many more octets it needs at least (so that the
reader never asks for an octet past the header's end), or that the octets
cannot begin a valid header (:class:`ProxyHeaderError`).

Version 1 is a text line, ``PROXY TCP4|TCP6 SRC DST SPORT DPORT`` or
``PROXY UNKNOWN ...``, ending in CRLF, at most 107 octets (section 2.1).
Version 2 is binary: a 12-octet signature, the version and command, the
family and transport, a 2-octet length, then the addresses and TLVs
(section 2.2).  TLVs are skipped.  ``LOCAL`` (v2, the proxy's own health
checks), ``UNKNOWN`` (v1) and the families that carry no IP address (v2
``AF_UNSPEC``, ``AF_UNIX``) keep the real connection's address: the header
then has no :attr:`ProxyHeader.source`.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple, Optional, Tuple, Union

# Section 2.1: "a 107-byte buffer ... is enough" for the longest v1 line
# ("PROXY UNKNOWN" plus two full IPv6 addresses and ports, with CRLF).
V1_MAX_LENGTH = 107
V1_PREFIX = b"PROXY "
# Section 2.2: the v2 signature, then 4 octets (version/command,
# family/transport, the length of what follows, network order).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_PREFIX_LENGTH = 16
# The shortest header of either version: "PROXY UNKNOWN\r\n" (15 octets);
# reading this much first never takes an octet past any header.
FIRST_READ = 15
# Section 2.2: the high nibble of the 13th octet is the version (2), the
# low one the command.
V2_VERSION = 0x2
V2_LOCAL, V2_PROXY = 0x0, 0x1
# Section 2.2: families (high nibble of the 14th octet) and transports.
AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX = 0x0, 0x1, 0x2, 0x3
TRANSPORT_UNSPEC, TRANSPORT_STREAM = 0x0, 0x1
# Section 2.2: the address block of each family: two addresses, two ports
# (AF_UNIX: two 108-octet paths).
V2_ADDRESS_LENGTH = {AF_INET: 12, AF_INET6: 36, AF_UNIX: 216}
# Section 2.1: a port is a decimal number from 0 to 65535 (at most 5 digits).
MAX_PORT = 65535


class ProxyHeaderError(ValueError):
    """The octets are not a valid PROXY protocol header; ``str()`` says why."""


class ProxyHeader(NamedTuple):
    """What the proxy vouches for.  ``source`` is None when the real
    connection's address stays the client's (LOCAL, UNKNOWN, no IP family)."""

    version: int
    source: Optional[str] = None
    source_port: Optional[int] = None
    destination: Optional[str] = None
    destination_port: Optional[int] = None
    length: int = 0  # octets of the header, CRLF or TLVs included

    def describe(self) -> str:
        """For the log: what the header said, in a few words."""
        if self.source is None:
            kind = "LOCAL" if self.version == 2 else "UNKNOWN"
            return f"PROXY v{self.version} {kind}: the connection's own address is kept"
        return (f"PROXY v{self.version}: client {self.source} port {self.source_port},"
                f" to {self.destination} port {self.destination_port}")


class Needed(NamedTuple):
    """The header is not complete: at least ``octets`` more must arrive."""

    octets: int


Parsed = Union[ProxyHeader, Needed]


def parse(data: bytes) -> Parsed:
    """The header at the start of ``data``, or how many octets it still
    needs at least; raises ProxyHeaderError as soon as ``data`` cannot
    begin one.  Octets after the header's end are not looked at."""
    if not data:
        return Needed(FIRST_READ)
    if data[:1] == V1_PREFIX[:1]:
        return _parse_v1(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data)
    raise ProxyHeaderError("no PROXY protocol header")


# -- version 1 -------------------------------------------------------------

def _parse_v1(data: bytes) -> Parsed:
    head = data[:len(V1_PREFIX)]
    if head != V1_PREFIX[:len(head)]:
        raise ProxyHeaderError("no PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        bare_lf = data.find(b"\n", 0, V1_MAX_LENGTH)
        stray_cr = data.find(b"\r", 0, min(len(data) - 1, V1_MAX_LENGTH))
        if bare_lf >= 0 or stray_cr >= 0:
            raise ProxyHeaderError("v1 header not ended by CRLF")
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"v1 header longer than {V1_MAX_LENGTH} octets")
        # Without a CR yet, the line ends two octets later at the soonest.
        return Needed(1 if data.endswith(b"\r") else 2)
    return _v1_fields(data[:end], end + 2)


def _v1_fields(line: bytes, length: int) -> ProxyHeader:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("v1 header not ASCII") from None
    fields = text.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(1, length=length)  # section 2.1: the rest is ignored
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("v1 header malformed: expected"
                               " 'PROXY TCP4|TCP6 SOURCE DESTINATION SPORT DPORT'")
    version = 4 if fields[1] == "TCP4" else 6
    source, destination = (_v1_address(field, version) for field in fields[2:4])
    source_port, destination_port = (_v1_port(field) for field in fields[4:6])
    return ProxyHeader(1, source, source_port, destination, destination_port, length)


def _v1_address(text: str, version: int) -> str:
    if "%" in text:  # a scope (fe80::1%eth0) is no address the proxy can mean
        raise ProxyHeaderError(f"v1 header: invalid address {text[:45]!r}")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"v1 header: invalid address {text[:45]!r}") from None
    if address.version != version:
        raise ProxyHeaderError(f"v1 header: {text!r} is not an IPv{version} address")
    return str(address)


def _v1_port(text: str) -> int:
    # Section 2.1: decimal, no sign, no leading zero (but "0" itself).
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or (len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"v1 header: invalid port {text[:8]!r}")
    port = int(text)
    if port > MAX_PORT:
        raise ProxyHeaderError(f"v1 header: invalid port {text!r}")
    return port


# -- version 2 -------------------------------------------------------------

def _parse_v2(data: bytes) -> Parsed:
    head = data[:len(V2_SIGNATURE)]
    if head != V2_SIGNATURE[:len(head)]:
        raise ProxyHeaderError("wrong v2 signature")
    if len(data) < V2_PREFIX_LENGTH:
        return Needed(V2_PREFIX_LENGTH - len(data))
    version_command, family_transport, length = struct.unpack_from("!BBH", data, 12)
    version, command = version_command >> 4, version_command & 0xF
    family, transport = family_transport >> 4, family_transport & 0xF
    if version != V2_VERSION:
        raise ProxyHeaderError(f"v2 header: unknown version {version}")
    if command not in (V2_LOCAL, V2_PROXY):
        raise ProxyHeaderError(f"v2 header: unknown command {command}")
    total = V2_PREFIX_LENGTH + length
    if command == V2_LOCAL:  # section 2.2: whatever follows is ignored
        return Needed(total - len(data)) if len(data) < total else ProxyHeader(2, length=total)
    if family not in (AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX):
        raise ProxyHeaderError(f"v2 header: unknown address family {family}")
    if transport not in (TRANSPORT_UNSPEC, TRANSPORT_STREAM) or (
            transport == TRANSPORT_UNSPEC) != (family == AF_UNSPEC):
        raise ProxyHeaderError("v2 header: not a stream connection")
    if length < V2_ADDRESS_LENGTH.get(family, 0):
        raise ProxyHeaderError(f"v2 header: length {length} too short for its addresses")
    if len(data) < total:
        return Needed(total - len(data))
    if family not in (AF_INET, AF_INET6):
        return ProxyHeader(2, length=total)  # no IP address: the connection's stays
    return _v2_addresses(data, family, total)


def _v2_addresses(data: bytes, family: int, total: int) -> ProxyHeader:
    size = 4 if family == AF_INET else 16
    start = V2_PREFIX_LENGTH
    source, destination = (_v2_address(data[at:at + size])
                           for at in (start, start + size))
    ports: Tuple[int, int] = struct.unpack_from("!HH", data, start + 2 * size)
    return ProxyHeader(2, source, ports[0], destination, ports[1], total)


def _v2_address(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))
