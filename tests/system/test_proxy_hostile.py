"""--proxy-protocol against hostile headers over real sockets: a daemon
that trusts 127.0.0.1 as its proxy, and raw clients that send truncated,
trickled, oversized, wrongly signed or lying headers, SMTP right behind a
header, nothing at all, or a header from an address that is not a proxy."""

from __future__ import annotations

import errno
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tests import helpers
from tests.helpers import WAIT
from tests.support.proxy_headers import PROXY_V2_LOCAL, v1, v2, v2_inet
from tests.support.tls_daemons import Certs, Daemon, run_daemons, stop_daemons

TIMEOUT = 2.0
SESSION = b"EHLO behind.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n" \
          b"DATA\r\nSubject: proxied\r\n\r\nhello\r\n.\r\nQUIT\r\n"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("proxy"), "proxy", ["--proxy-protocol=127.0.0.1/32"],
                    timeout=TIMEOUT)
    run_daemons(daemon)
    yield daemon
    stop_daemons([daemon])


def exchange(port: int, data: bytes, source: str = "127.0.0.1", trickle: bool = False) -> bytes:
    """Send ``data`` (octet by octet with ``trickle``), then read until msmtpd
    closes (a reset, when msmtpd closed on octets it left unread, is a close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT, source_address=(source, 0)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if trickle:
            for octet in data:
                sock.send(bytes([octet]))
                time.sleep(0.002)
        else:
            sock.sendall(data)
        received = b""
        try:
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(4096):
                received += chunk
        except OSError as exc:
            assert exc.errno in (errno.ECONNRESET, errno.ENOTCONN), exc
        return received


def served(daemon: Daemon, data: bytes, peer: str, received: str, trickle: bool = False,
           source: str = "127.0.0.1") -> None:
    """The session behind the header is answered in full, under the proxied
    peer, and the mail's Received header names it."""
    before = len(helpers.delivered(daemon.maildir))
    replies = exchange(daemon.port, data, source=source, trickle=trickle)
    assert replies.startswith(b"220 ") and replies.count(b"\r\n250 ") >= 4, replies
    assert replies.endswith(b"221 2.0.0 Bye\r\n") or b"\r\n221 " in replies, replies
    helpers.wait_for_mails(daemon.maildir, before + 1)
    newest = max(daemon.maildir.glob("new/*"), key=lambda path: path.stat().st_mtime_ns)
    header = helpers.received_headers(newest.read_bytes())[0]
    assert header.startswith(f"Received: from behind.example ({received})".encode()), header
    daemon.wait_log(f"session from {peer}")


@pytest.mark.parametrize("header, peer, received", [
    (v1("192.0.2.7"), "192.0.2.7", "[192.0.2.7]"),
    (v1("2001:db8::7", "::1"), "2001:db8::7", "[IPv6:2001:db8::7]"),
    (v2_inet("198.51.100.8"), "198.51.100.8", "[198.51.100.8]"),
    (v2_inet("2001:db8::8", tlvs=b"\x04\x00\x02ok"), "2001:db8::8", "[IPv6:2001:db8::8]"),
], ids=["v1-tcp4", "v1-tcp6", "v2-inet", "v2-inet6-with-tlv"])
def test_smtp_pipelined_right_behind_the_header_is_served_as_the_proxied_client(
        daemon: Daemon, header: bytes, peer: str, received: str) -> None:
    served(daemon, header + SESSION, peer, received)
    daemon.wait_log(f"127.0.0.1: PROXY v{1 if header.startswith(b'PROXY') else 2}: client {peer} port 40000")


@pytest.mark.parametrize("header", [v1("203.0.113.9"), v2_inet("203.0.113.9")], ids=["v1", "v2"])
def test_a_header_and_session_in_one_byte_writes_is_served(daemon: Daemon, header: bytes) -> None:
    served(daemon, header + SESSION, "203.0.113.9", "[203.0.113.9]", trickle=True)


@pytest.mark.parametrize("header", [v2(command=PROXY_V2_LOCAL), b"PROXY UNKNOWN\r\n"],
                         ids=["v2-local", "v1-unknown"])
def test_local_and_unknown_keep_the_connection_address(daemon: Daemon, header: bytes) -> None:
    served(daemon, header + SESSION, "127.0.0.1", "[127.0.0.1]")


@pytest.mark.parametrize("data, reason", [
    (b"", "closed before sending a PROXY header"),
    (b"EHLO sneaky.example\r\nQUIT\r\n", "no PROXY protocol header"),
    (v1("192.0.2.7")[:20], "closed after 20 octets"),
    (v2_inet("192.0.2.7")[:20], "closed after 20 octets"),
    (b"PROXY TCP4 " + b"1" * 200 + b"\r\n", "longer than 107 octets"),
    (b"\r\n\r\n\x00\r\nQUIT\r" + b"\x21\x11\x00\x0c" + b"\x00" * 12 + b"QUIT\r\n", "wrong v2 signature"),
    (v2(body=b"\x00" * 4) + b"QUIT\r\n", "too short for its addresses"),
    (v2(body=b"\x00" * 12, length=4000) + b"QUIT\r\n", "closed after"),  # a length past what comes
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 99999 25\r\nQUIT\r\n", "invalid port"),
], ids=["nothing", "plain-smtp", "v1-truncated", "v2-truncated", "v1-oversized", "wrong-signature",
        "v2-short-length", "v2-long-length", "v1-bad-port"])
def test_a_bad_header_closes_without_a_greeting_and_logs_one_line(
        daemon: Daemon, data: bytes, reason: str) -> None:
    before = daemon.count("closed without a greeting")
    assert exchange(daemon.port, data) == b""
    daemon.wait_log("closed without a greeting", before + 1)
    lines = [line for line in daemon.log_text().splitlines() if "closed without a greeting" in line]
    assert reason in lines[-1], lines[-1]
    assert "Traceback" not in daemon.log_text()


def test_a_header_trickled_too_slowly_or_never_is_closed_at_the_timeout(daemon: Daemon) -> None:
    for first in (b"", b"PROXY TCP4 192.0.2"):
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=WAIT) as sock:
            sock.sendall(first)
            started = time.monotonic()
            received: Optional[bytes] = sock.recv(4096)
            elapsed = time.monotonic() - started
        assert received == b"" and TIMEOUT - 0.5 <= elapsed <= TIMEOUT + 2, (received, elapsed)
    daemon.wait_log("no complete PROXY header within 2 s (18 octets came)")


def test_a_proxy_line_from_an_address_not_listed_is_an_unknown_command(daemon: Daemon) -> None:
    replies = exchange(daemon.port, v1("192.0.2.66") + b"QUIT\r\n", source="127.0.0.2")
    assert replies.startswith(b"220 "), replies
    assert b"\r\n500 5.5.2 Command not recognised\r\n221 " in replies, replies
    daemon.wait_log("session from 127.0.0.2")
    assert "192.0.2.66" not in daemon.log_text()


def test_a_client_not_listed_is_plain_smtp(daemon: Daemon) -> None:
    served(daemon, SESSION, "127.0.0.3", "[127.0.0.3]", source="127.0.0.3")


def test_allow_judges_the_proxied_client_and_admits_the_proxy_itself(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, "allowed", ["--proxy-protocol=127.0.0.1", "--allow=192.0.2.0/24"],
                    timeout=TIMEOUT)
    run_daemons(daemon)
    try:
        served(daemon, v1("192.0.2.7") + SESSION, "192.0.2.7", "[192.0.2.7]")
        assert exchange(daemon.port, v2_inet("198.51.100.8") + SESSION) == \
            b"554 5.7.1 Access denied\r\n"
        daemon.wait_log("refused 198.51.100.8: not in --allow")
        # The proxy's own health check (LOCAL) keeps its address, which is listed.
        served(daemon, v2(command=PROXY_V2_LOCAL) + SESSION, "127.0.0.1", "[127.0.0.1]")
        # A client that reaches msmtpd directly, not through the proxy, is judged as itself.
        assert exchange(daemon.port, SESSION, source="127.0.0.2") == b"554 5.7.1 Access denied\r\n"
    finally:
        stop_daemons([daemon])


def test_the_remote_auth_rule_judges_the_proxied_client(tmp_path: Path, certs: Certs) -> None:
    """With a certificate, AUTH in clear text is for loopback clients alone:
    a client the proxy names from afar gets 538, the proxy's LOCAL check
    (its own loopback address) may authenticate."""
    daemon = Daemon(tmp_path, "auth", ["--proxy-protocol=127.0.0.1", "--auth=relay,echo secret",
                                       f"--tls-cert={certs.cert}", f"--tls-key={certs.key}"],
                    timeout=TIMEOUT)
    run_daemons(daemon)
    auth = f"EHLO x\r\nAUTH PLAIN {helpers.auth_plain('relay', 'secret')}\r\nQUIT\r\n".encode()
    try:
        far = exchange(daemon.port, v1("192.0.2.7") + auth)
        assert b"\r\n538 5.7.11 " in far and b"\r\n235 " not in far, far
        near = exchange(daemon.port, v2(command=PROXY_V2_LOCAL) + auth)
        assert b"\r\n235 " in near, near
    finally:
        stop_daemons([daemon])
