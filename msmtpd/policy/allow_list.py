"""``--allow``: the client networks that may connect (each value is read
by ``msmtpd.base.config.parse_network``, with the other options).

A client from anywhere else is greeted with 554 and the connection
closed (RFC 5321 section 3.1) before a session starts.  A client with no
IP address (a pipe, a Unix socket) matches no network, so an allow-list
refuses it.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, List, Sequence, Union

if TYPE_CHECKING:
    from msmtpd.base.config import Network

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


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
