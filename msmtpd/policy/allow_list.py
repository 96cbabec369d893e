"""``--allow``: the client networks that may connect.

A client from anywhere else is greeted with 554 and the connection
closed (RFC 5321 section 3.1) before a session starts.  A client with no
IP address (a pipe, a Unix socket) matches no network, so an allow-list
refuses it.
"""

from __future__ import annotations

import ipaddress
from typing import List, Sequence, Union

from msmtpd.base.config import ConfigError

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def parse_network(text: str) -> Network:
    """``10.0.0.0/8``, ``2001:db8::/32``, or a plain address (a /32 or /128)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"invalid --allow '{text[:60]}': expected an IPv4 or IPv6 address"
                          " or network (10.0.0.0/8, fd00::/8)") from None


def addresses_of(peer: str) -> List[Address]:
    """The client's address, and the IPv4 one inside an IPv4-mapped IPv6
    address (``::ffff:10.0.0.1`` on a ``::`` socket); none for "" (a pipe
    or a Unix socket) or anything that is not an address."""
    try:
        address = ipaddress.ip_address(peer.partition("%")[0])  # fe80::1%eth0
    except ValueError:
        return []
    mapped = getattr(address, "ipv4_mapped", None)
    return [address] if mapped is None else [address, mapped]


class AllowList:
    """The networks of every --allow option."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self.networks: List[Network] = list(networks)

    def permits(self, peer: str) -> bool:
        return any(address in network for address in addresses_of(peer)
                   for network in self.networks if network.version == address.version)

    def __str__(self) -> str:
        return ", ".join(str(network) for network in self.networks)
