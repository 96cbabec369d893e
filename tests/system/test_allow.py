"""--allow with real processes: a client in a network namespace (IPv4 and
IPv6) that is allowed or refused, the loopback address of the host, the
start-up warning for an open relay, and --inetd on a socket and a pipe."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from tests import helpers
from tests.support.inetd import TinyInetd
from tests.support.netns import (
    HOST_ADDRESS,
    HOST_ADDRESS6,
    PEER_ADDRESS,
    PEER_ADDRESS6,
    inside,
    veth_namespace,
)
from tests.support.tls_daemons import WAIT, Daemon, run_daemons, stop_daemons

DENIED = b"554 5.7.1 Access denied\r\n"

# Runs in the namespace: pipelines a whole session and prints every byte
# msmtpd sent back, until it closed the connection.
RAW_CLIENT = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
with socket.create_connection((host, port), timeout=10) as sock:
    sock.sendall(b"EHLO far.example\r\nMAIL FROM:<far@example.org>\r\nRCPT TO:<near@example.org>\r\n"
                 b"DATA\r\nSubject: from afar\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    received = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
sys.stdout.buffer.write(received)
"""


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    with veth_namespace("a") as name:
        yield name


def session_from(namespace: str, host: str, port: int) -> bytes:
    done = subprocess.run(inside(namespace, sys.executable, "-c", RAW_CLIENT, host, str(port)),
                          capture_output=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def session_here(host: str, port: int) -> bytes:
    """The same session from this machine, whose address on the link is HOST_ADDRESS(6)."""
    done = subprocess.run([sys.executable, "-c", RAW_CLIENT, host, str(port)],
                          capture_output=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def two_stack_daemon(directory: Path, name: str, args: Sequence[str]) -> Daemon:
    return Daemon(directory, name, [f"--interface={HOST_ADDRESS}", f"--interface={HOST_ADDRESS6}",
                                    *args], host=HOST_ADDRESS)


def test_allowed_peers_are_served_and_others_get_554_and_nothing_else(
        namespace: str, tmp_path: Path) -> None:
    daemon = two_stack_daemon(tmp_path, "allow", [f"--allow={PEER_ADDRESS}",
                                                  f"--allow={PEER_ADDRESS6}/128"])
    run_daemons(daemon)
    try:
        for host in (HOST_ADDRESS, HOST_ADDRESS6):
            served = session_from(namespace, host, daemon.port)
            assert served.startswith(b"220 ") and b"\r\n221 " in served, served
            # This machine's own end of the link is not in the list.
            assert session_here(host, daemon.port) == DENIED
        assert len(helpers.wait_for_mails(daemon.maildir, 2)) == 2
        daemon.wait_log(f"refused {HOST_ADDRESS6}: not in --allow")
        log = daemon.log_text()
        assert f"refused {HOST_ADDRESS}: not in --allow" in log
        assert f"session from {PEER_ADDRESS}" in log and f"session from {PEER_ADDRESS6}" in log
        assert "anyone who can reach" not in log
    finally:
        stop_daemons([daemon])


def test_a_network_allows_its_addresses_and_refuses_the_rest(namespace: str, tmp_path: Path) -> None:
    prefix6 = HOST_ADDRESS6.rsplit(":", 2)[0] + "::/64"
    daemon = two_stack_daemon(tmp_path, "networks", ["--allow=10.0.0.0/8", f"--allow={prefix6}"])
    run_daemons(daemon)
    try:
        assert session_from(namespace, HOST_ADDRESS, daemon.port) == DENIED
        served = session_from(namespace, HOST_ADDRESS6, daemon.port)
        assert b"\r\n250 2.0.0 OK" in served, served
        assert len(helpers.wait_for_mails(daemon.maildir, 1)) == 1
    finally:
        stop_daemons([daemon])


def test_an_open_address_without_auth_or_allow_is_warned_about_once(namespace: str,
                                                                   tmp_path: Path) -> None:
    open_relay = Daemon(tmp_path, "open", [], host=HOST_ADDRESS)
    restricted = Daemon(tmp_path, "restricted", [f"--allow={PEER_ADDRESS}"], host=HOST_ADDRESS)
    loopback = Daemon(tmp_path, "loopback", [])
    run_daemons(open_relay, restricted, loopback)
    try:
        where = f"{HOST_ADDRESS}:{open_relay.port}"
        warnings = [line for line in open_relay.log_text().splitlines() if "anyone who can reach" in line]
        assert len(warnings) == 1 and "warning:" in warnings[0] and where in warnings[0], warnings
        assert "--allow" in warnings[0]
        assert "anyone who can reach" not in restricted.log_text()
        assert "anyone who can reach" not in loopback.log_text()
    finally:
        stop_daemons([open_relay, restricted, loopback])


def test_inetd_takes_the_peer_from_the_socket_and_refuses_a_pipe(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    command = f"--command={helpers.maildir_command(maildir)}"
    for allow, greeting in (("127.0.0.0/8", b"220 "), ("10.0.0.0/8", DENIED)):
        inetd = TinyInetd([command, f"--allow={allow}"])
        try:
            with socket.create_connection(("127.0.0.1", inetd.port), timeout=WAIT) as sock:
                sock.sendall(b"QUIT\r\n")
                received = b""
                while chunk := sock.recv(4096):
                    received += chunk
        finally:
            results = inetd.close()
        assert received.startswith(greeting), received
        if greeting == DENIED:
            assert received == DENIED and results[0][0] == 1, (received, results)
    piped = helpers.run_inetd([command, "--allow=127.0.0.1"], b"EHLO x\r\nQUIT\r\n")
    assert piped.stdout == DENIED and piped.returncode == 1


@pytest.mark.parametrize("value", ["10.0.0.0/33", "localhost", "10.1"])
def test_a_bad_allow_is_one_line_and_exit_3(value: str) -> None:
    done = subprocess.run([helpers.program("msmtpd"), f"--allow={value}", "--port=1"],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 3
    assert done.stderr.startswith(f"msmtpd: invalid --allow '{value}'") and done.stderr.count("\n") == 1
