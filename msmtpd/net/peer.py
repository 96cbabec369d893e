"""Who is calling, as the connection proves it (contract 12): an IP address
and port, or the credentials the kernel gives for the caller of a Unix
socket (``SO_PEERCRED``: pid, uid, gid).  The log, the Received header,
``--allow``, the remote-AUTH rule and the sender bindings all read this one
value, so a new way of knowing the peer (a proxy vouching for an address)
changes only how a Peer is made.
"""

from __future__ import annotations

import _socket  # not socket, which imports enum and selectors (some 3 ms of an --inetd session)
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

    from msmtpd.net.transports import Endpoint

# struct ucred (socket(7), SO_PEERCRED): pid_t pid, uid_t uid, gid_t gid, each 32 bits.
UCRED_FIELDS = 3
UCRED_FIELD_SIZE = 4  # unsigned: uid_t and gid_t
# An IPv4 client of a dual-stack (IPv6) socket, as the kernel names it.
_MAPPED_PREFIX = "::ffff:"


class Peer:
    """One session's peer.  ``address`` is the IP address ("" for a Unix
    socket or a pipe); ``uid`` is set for a Unix-socket caller only, with
    its ``pid``, ``gid`` and ``user`` (the name of the uid, None when the
    uid has no account)."""

    __slots__ = ("address", "port", "uid", "gid", "pid", "user")

    def __init__(self, address: str = "", port: Optional[int] = None, uid: Optional[int] = None,
                 gid: Optional[int] = None, pid: Optional[int] = None,
                 user: Optional[str] = None) -> None:
        self.address = address
        self.port = port
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.user = user

    @property
    def is_unix(self) -> bool:
        """A caller on a Unix socket, known by its credentials."""
        return self.uid is not None

    @property
    def name(self) -> str:
        """How the log names the peer: ``192.0.2.7``, or ``local user alice
        (uid 1000, pid 4242)``; "" when nothing is known (a pipe)."""
        if self.uid is None:
            return self.address
        who = f"user {self.user}" if self.user is not None else "user with no name"
        return f"local {who} (uid {self.uid}, pid {self.pid})"

    @property
    def address_literal(self) -> str:
        """What the Received header puts after the HELO name, in its
        parentheses: ``[192.0.2.7]``, ``uid 1000``, or ``[local]`` for a
        pipe; never a host address for a Unix-socket caller."""
        if self.uid is not None:
            return f"uid {self.uid}"
        return ip_literal(self.address) if self.address else "[local]"

    @property
    def is_local(self) -> bool:
        """On this machine: loopback, a Unix socket or a pipe (the remote
        AUTH rule of contract 9 spares these)."""
        if self.uid is not None or not self.address:
            return True
        import ipaddress  # a few ms: only for the AUTH rule

        try:
            address = ipaddress.ip_address(self.address.partition("%")[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        return address.is_loopback or (mapped is not None and mapped.is_loopback)

    def __repr__(self) -> str:
        return f"Peer({self.name or 'unknown'!r})"


def ip_literal(address: str) -> str:
    """An IP address as an RFC 5321 section 4.1.3 address literal:
    ``[192.0.2.1]``, ``[IPv6:2001:db8::1]``.  An IPv4-mapped address is the
    IPv4 client it stands for; an interface scope (``%eth0``) has no place
    in a literal and is left out."""
    if address.lower().startswith(_MAPPED_PREFIX) and "." in address:
        return f"[{address[len(_MAPPED_PREFIX):]}]"
    if ":" in address:
        return f"[IPv6:{address.partition('%')[0]}]"
    return f"[{address}]"


def unix_peer(pid: int, uid: int, gid: int) -> Peer:
    """A Unix-socket caller; its user is the name of its uid."""
    import pwd

    try:
        user: Optional[str] = pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        user = None
    return Peer(uid=uid, gid=gid, pid=pid, user=user)


def peer_of(endpoint: Endpoint) -> Peer:
    """The peer of a connected endpoint: the IP address and port of a TCP
    socket, the kernel's credentials of a Unix socket's caller, nothing for
    a pipe."""
    if not isinstance(endpoint, _socket.socket):
        return Peer()
    try:
        if endpoint.family == _socket.AF_UNIX:
            # Not array or struct: array imports collections (some 2 ms of an --inetd session).
            size = UCRED_FIELD_SIZE
            raw = endpoint.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, UCRED_FIELDS * size)
            pid, uid, gid = (int.from_bytes(raw[at:at + size], sys.byteorder)
                             for at in range(0, UCRED_FIELDS * size, size))
            return unix_peer(pid, uid, gid)
        address = endpoint.getpeername()
    except OSError:
        return Peer()
    if not isinstance(address, tuple):
        return Peer()
    return Peer(str(address[0]), int(address[1]))
