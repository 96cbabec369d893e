"""--metrics against hostile HTTP clients while SMTP is served: silent,
trickling and garbage clients dropped within --timeout, other methods and
paths refused, a crowd of silent connections that cannot lock Prometheus
out, and a thousand requests in a row that leave SMTP latency as it was."""

from __future__ import annotations

import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from typing import Iterator, List, Tuple

import pytest

from tests import helpers
from tests.support.prometheus import samples, scrape

TIMEOUT = 2.0  # --timeout: every HTTP client must be done within it
MARGIN = 1.5  # the master's loop and a loaded machine


@pytest.fixture(scope="module")
def daemon() -> Iterator[Tuple[helpers.Server, int]]:
    metrics_port = helpers.free_port()
    with helpers.Server(["--command=cat >/dev/null", f"--timeout={TIMEOUT:g}",
                         f"--metrics=127.0.0.1:{metrics_port}"]) as server:
        helpers.wait_for_port(metrics_port, process=server.process)  # bound after the SMTP port
        yield server, metrics_port


def _closed_after(sock: socket.socket, trickle: bytes = b"") -> float:
    """Seconds until the server closed ``sock`` (sending ``trickle`` a byte
    every 0.2 s meanwhile)."""
    started = time.monotonic()
    sock.settimeout(0.2)
    position = 0
    while time.monotonic() - started < TIMEOUT + 10:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except socket.timeout:
            if position < len(trickle):
                try:
                    sock.send(trickle[position:position + 1])
                except OSError:
                    return time.monotonic() - started
                position += 1
        except OSError:
            return time.monotonic() - started
    raise AssertionError("the HTTP client was never dropped")


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return answer
            answer += chunk


def test_a_silent_client_is_dropped_within_the_timeout(daemon: Tuple[helpers.Server, int]) -> None:
    with socket.create_connection(("127.0.0.1", daemon[1])) as sock:
        assert _closed_after(sock) < TIMEOUT + MARGIN


def test_a_trickling_client_is_dropped_within_the_timeout(daemon: Tuple[helpers.Server, int]) -> None:
    with socket.create_connection(("127.0.0.1", daemon[1])) as sock:
        assert _closed_after(sock, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" * 10) < TIMEOUT + MARGIN


def test_garbage_other_methods_and_paths_are_refused(daemon: Tuple[helpers.Server, int]) -> None:
    port = daemon[1]
    assert _raw(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").startswith(
        b"HTTP/1.1 400 ")
    assert _raw(port, b"HELO example.org\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    post = _raw(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
    assert post.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: GET, HEAD\r\n" in post
    assert _raw(port, b"DELETE /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert _raw(port, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    assert _raw(port, b"GET /metrics/../etc/passwd HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    assert _raw(port, b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"y" * 20000 + b"\r\n\r\n").startswith(
        b"HTTP/1.1 431 ")
    head = _raw(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                                      data=b"x"), timeout=10)
    assert refused.value.code == 405


def test_silent_connections_cannot_lock_the_scraper_out(daemon: Tuple[helpers.Server, int]) -> None:
    crowd = [socket.create_connection(("127.0.0.1", daemon[1])) for _ in range(40)]
    try:
        time.sleep(0.2)
        assert "msmtpd_sessions_total" in scrape(daemon[1])
    finally:
        for sock in crowd:
            sock.close()


def _noop_seconds(port: int, count: int) -> List[float]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        seconds = []
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(b"NOOP\r\n")
            assert reader.readline().startswith(b"250")
            seconds.append(time.perf_counter() - started)
        return seconds


def test_a_thousand_requests_leave_smtp_latency_unchanged(daemon: Tuple[helpers.Server, int]) -> None:
    server, port = daemon
    before = statistics.median(_noop_seconds(server.port, 200))
    answered: List[int] = []

    def flood() -> None:
        for _ in range(1000):
            answered.append(len(scrape(port)))

    thread = threading.Thread(target=flood)
    thread.start()
    during: List[float] = []
    while thread.is_alive():
        during += _noop_seconds(server.port, 50)
    thread.join()
    assert len(answered) == 1000
    # The workers answer SMTP; the master only adds cells. On a busy
    # 2-core machine the client's own threads share the CPUs: allow noise,
    # not a stall.
    assert statistics.median(during) < max(5 * before, 0.005), (before, statistics.median(during))
    assert max(during) < 0.5
    found = samples(scrape(port))
    assert found["msmtpd_sessions_active"] == 0 or found["msmtpd_sessions_active"] == 1
