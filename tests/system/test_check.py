"""``msmtpd --check`` against a running server, a stopped one, a hung one,
one that trickles, one that refuses the client, and one with implicit TLS."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, List, Sequence

import pytest

from tests import helpers
from tests.support.tls_daemons import WAIT, Certs, Daemon, run_daemons, stop_daemons

# What --check allows itself, or --timeout when shorter (msmtpd.commands.check.CHECK_SECONDS).
CHECK_SECONDS = 5.0


def check(*args: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helpers.program("msmtpd"), "--check", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    started = Daemon(tmp_path, "checked", [])
    run_daemons(started)
    try:
        yield started
    finally:
        stop_daemons([started])


def test_a_running_server_is_healthy_and_logs_one_line(daemon: Daemon, tmp_path: Path) -> None:
    # The server's own options may come along (as in a HEALTHCHECK that
    # repeats the command line): only the address counts.
    done = check(f"--port={daemon.port}", "--interface=127.0.0.1", f"--log={tmp_path / 'other.log'}",
                 f"--auth-file={tmp_path / 'not-read'}", "--max-sessions=2")
    assert done.returncode == 0, done
    assert done.stdout.startswith(f"msmtpd: 127.0.0.1:{daemon.port} is healthy: greeting 220 ")
    assert "; EHLO 250 " in done.stdout and "; QUIT 221 " in done.stdout
    assert done.stdout.count("\n") == 1 and done.stderr == ""
    assert not (tmp_path / "other.log").exists()  # the check opens no log of its own
    assert helpers.wait_until(lambda: "session from 127.0.0.1" in daemon.log_text(), WAIT)
    time.sleep(0.3)  # anything else the worker would log about that session
    session_lines = [line for line in daemon.log_text().splitlines() if "listening on" not in line]
    assert len(session_lines) == 1, session_lines


def test_every_interface_of_a_wildcard_server_is_checked_on_loopback(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, "v6", ["--interface=::1"], host="::1")
    run_daemons(daemon)
    try:
        done = check(f"--port={daemon.port}", "--interface=::1")
        assert done.returncode == 0 and f"[::1]:{daemon.port} is healthy" in done.stdout, done
        wildcard = check(f"--port={daemon.port}", "--interface=::")
        assert wildcard.returncode == 0 and f"[::1]:{daemon.port} is healthy" in wildcard.stdout
    finally:
        stop_daemons([daemon])


def test_a_stopped_server_is_not_healthy() -> None:
    port = helpers.free_port()
    done = check(f"--port={port}")
    assert done.returncode == 1
    assert done.stderr == (f"msmtpd: 127.0.0.1:{port} is not healthy:"
                           " connection refused (is msmtpd running?)\n")


class HungServer:
    """Listens (so connect succeeds) and then answers with ``greeting``,
    one byte every ``pace`` seconds, or never."""

    def __init__(self, greeting: bytes = b"", pace: float = 0.2) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = int(self.listener.getsockname()[1])
        self.greeting, self.pace = greeting, pace
        self.connections: List[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        if greeting:
            self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        self.connections.append(connection)
        for byte in self.greeting:
            try:
                connection.sendall(bytes([byte]))
            except OSError:
                return
            time.sleep(self.pace)

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self.listener.close()


@pytest.mark.parametrize("greeting", [b"", b"220 " + b"x" * 200 + b"\r\n"], ids=["silent", "trickling"])
def test_a_hung_server_is_not_healthy_within_the_time_limit(greeting: bytes) -> None:
    server = HungServer(greeting)
    try:
        started = time.monotonic()
        done = check(f"--port={server.port}", "--timeout=2", timeout=CHECK_SECONDS + 5)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert done.returncode == 1
    assert f"127.0.0.1:{server.port} is not healthy: no answer within 2 s while connecting" in done.stderr
    assert elapsed < CHECK_SECONDS + 3  # bounded by the check, not by the test's own timeout


def test_a_server_that_refuses_the_client_is_not_healthy(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, "refusing", ["--allow=10.0.0.0/8"])
    run_daemons(daemon)
    try:
        done = check(f"--port={daemon.port}")
    finally:
        stop_daemons([daemon])
    assert done.returncode == 1
    assert "is not healthy: the greeting is not 220 (saw greeting 554 5.7.1 Access denied)" in done.stderr


def test_a_server_that_is_not_smtp_is_not_healthy() -> None:
    server = HungServer(b"HTTP/1.1 400 Bad Request\r\n\r\n", pace=0)
    try:
        done = check(f"--port={server.port}")
    finally:
        server.close()
    assert done.returncode == 1 and "is not healthy" in done.stderr and "Traceback" not in done.stderr


def test_implicit_tls_is_checked_inside_tls(tmp_path: Path, certs: Certs) -> None:
    daemon = Daemon(tmp_path, "smtps", [f"--tls-cert={certs.combined}", "--tls-implicit"])
    run_daemons(daemon)
    try:
        inside_tls = check(f"--port={daemon.port}", "--tls-implicit")
        in_plain_text = check(f"--port={daemon.port}", "--timeout=2")
    finally:
        stop_daemons([daemon])
    assert inside_tls.returncode == 0 and "is healthy: greeting 220" in inside_tls.stdout, inside_tls
    assert in_plain_text.returncode == 1 and "is not healthy" in in_plain_text.stderr
    # The check inside TLS is one log line, naming the TLS version; the one in
    # plain text is one line too (its handshake failed).
    lines = [line for line in daemon.log_text().splitlines()
             if "listening on" not in line and "stopping" not in line]
    assert len(lines) == 2, lines
    assert "session from 127.0.0.1 over TLSv1." in lines[0], lines
    assert "127.0.0.1: TLS handshake failed" in lines[1], lines


@pytest.mark.parametrize("args", [["--inetd"], ["--auth=a,echo b", "--auth-file=/dev/null"]])
def test_check_with_inetd_or_two_kinds_of_users_is_a_usage_error(args: Sequence[str]) -> None:
    done = check(*args)
    assert done.returncode == 3 and done.stderr.count("\n") == 1 and done.stderr.startswith("msmtpd: ")
