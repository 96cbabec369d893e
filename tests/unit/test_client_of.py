"""Service.client_of on Peers, in memory (issue 19): the one place where
the PROXY protocol and the Unix socket meet.  A listed proxy's header
names the client (address and port) and becomes the connection's peer; a
LOCAL header keeps the proxy; a Unix-socket caller is never a proxy, so
not a byte is read as a header even when every address is listed."""

from __future__ import annotations

import io

from msmtpd.commands.cli import parse_args
from msmtpd.net.connection import Connection, in_memory
from msmtpd.net.peer import Peer
from msmtpd.server.service import Service, prepare
from tests.support.proxy_headers import PROXY_V2_LOCAL, v1, v2, v2_inet
from tests.support.session_script import lines

PROXY = Peer("10.0.0.5", 51000)
ALICE = Peer(uid=1000, gid=1000, pid=4242, user="alice")
SMTP = lines("EHLO client.test", "QUIT")


def service(*proxies: str) -> Service:
    return prepare(parse_args(["--log=none", *(f"--proxy-protocol={cidr}" for cidr in proxies)]))


def wire(data: bytes, peer: Peer) -> Connection:
    connection = in_memory(io.BytesIO(data).read1, io.BytesIO())
    connection.peer = peer
    return connection


def test_a_listed_proxys_header_names_the_client_with_its_port() -> None:
    connection = wire(v1("192.0.2.7", source_port=4711) + SMTP, PROXY)
    client = service("10.0.0.0/8").client_of(connection, PROXY)
    assert client is not None and connection.peer is client
    assert (client.address, client.port, client.is_unix) == ("192.0.2.7", 4711, False)
    assert client.address_literal == "[192.0.2.7]" and not client.is_local


def test_a_local_header_keeps_the_proxy_as_the_peer() -> None:
    connection = wire(v2(command=PROXY_V2_LOCAL) + SMTP, PROXY)
    assert service("10.0.0.0/8").client_of(connection, PROXY) is PROXY


def test_a_unix_caller_is_never_read_as_a_proxy() -> None:
    connection = wire(v2_inet("192.0.2.7") + SMTP, ALICE)
    assert service("0.0.0.0/0", "::/0").client_of(connection, ALICE) is ALICE
    assert connection.buffered == b""  # nothing read: the session gets every byte


def test_an_unlisted_peer_is_its_own_client() -> None:
    peer = Peer("192.0.2.99", 40000)
    assert service("10.0.0.0/8").client_of(wire(v1("198.51.100.1"), peer), peer) is peer
    assert service().client_of(wire(SMTP, peer), peer) is peer


def test_a_bad_header_from_a_listed_proxy_gets_no_session() -> None:
    assert service("10.0.0.0/8").client_of(wire(SMTP, PROXY), PROXY) is None
