"""The counters of --metrics on their own: shared slots summed, a dead
writer's counts kept, the exposition's format, the HTTP answers, the
option's value, and every session ending named."""

from __future__ import annotations

import os

import pytest

from msmtpd.base.config import ConfigError, parse_listen_address
from msmtpd.base.metrics import SESSION_ENDINGS, Counters, Gauge, render, tls_version
from msmtpd.net.metrics_http import answer
from msmtpd.smtp.session import ALLOW_REFUSED, DISCONNECT, ENDINGS, ERROR_LIMIT, QUIT


def test_each_process_writes_its_slot_and_a_dead_ones_counts_stay() -> None:
    counters = Counters(3)
    pid = os.fork()
    if pid == 0:  # a worker that counts, then dies without any clean-up
        counters.use_slot(0)
        counters.add("msmtpd_mails_total", "delivered", 5)
        counters.observe_delivery(0.3)
        os._exit(0)
    os.waitpid(pid, 0)
    counters.use_slot(2)
    counters.add("msmtpd_mails_total", "delivered")
    text = render(counters.totals(), [])
    assert 'msmtpd_mails_total{result="delivered"} 6\n' in text
    assert 'msmtpd_delivery_seconds_bucket{le="0.25"} 0\n' in text
    assert 'msmtpd_delivery_seconds_bucket{le="0.5"} 1\n' in text
    assert 'msmtpd_delivery_seconds_bucket{le="+Inf"} 1\n' in text
    assert "msmtpd_delivery_seconds_count 1\n" in text
    assert "msmtpd_delivery_seconds_sum 0.3\n" in text


def test_a_process_without_a_slot_counts_nothing() -> None:
    counters = Counters(1)
    counters.add("msmtpd_auth_total", "success")
    assert 'msmtpd_auth_total{result="success"} 0\n' in render(counters.totals(), [])


def test_every_family_has_help_and_type_and_gauges_follow() -> None:
    text = render(Counters(1).totals(), [Gauge("msmtpd_workers", "Workers.", [('state="idle"', 3)])])
    assert "# TYPE msmtpd_sessions_total counter\n" in text
    assert "# TYPE msmtpd_delivery_seconds histogram\n" in text
    assert '# TYPE msmtpd_workers gauge\nmsmtpd_workers{state="idle"} 3\n' in text
    assert 'msmtpd_refusals_total{reason="rate_limit"} 0\n' in text
    assert 'msmtpd_refusals_total{reason="loop"} 0\n' in text


def test_every_way_a_session_ends_has_a_counter() -> None:
    names = [ending.name for ending in ENDINGS] + [QUIT, DISCONNECT, ERROR_LIMIT, ALLOW_REFUSED]
    assert set(names) <= set(SESSION_ENDINGS)
    assert len(set(names)) == len(names)


def test_tls_versions() -> None:
    assert tls_version("TLSv1.3 with TLS_AES_256_GCM_SHA384") == "TLSv1.3"
    assert tls_version("SSLv3 with RC4") == "other"


@pytest.mark.parametrize("request_head, status", [
    (b"GET /metrics HTTP/1.1\r\nHost: x", b"200"),
    (b"GET /metrics?x=1 HTTP/1.0", b"200"),
    (b"POST /metrics HTTP/1.1", b"405"),
    (b"GET / HTTP/1.1", b"404"),
    (b"POST / HTTP/1.1", b"404"),
    (b"GET /metrics", b"400"),
    (b"\xff\xfe garbage", b"400"),
    (b"", b"400"),
])
def test_http_answers(request_head: bytes, status: bytes) -> None:
    response = answer(request_head, lambda: "x 1\n")
    assert response.startswith(b"HTTP/1.1 " + status + b" ")
    assert b"\r\nConnection: close\r\n" in response


def test_a_failing_render_is_a_500_not_a_dead_master() -> None:
    def broken() -> str:
        raise OSError("disk gone")

    assert answer(b"GET /metrics HTTP/1.1", broken).startswith(b"HTTP/1.1 500 ")


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9125", ("127.0.0.1", 9125)),
    ("[::1]:9125", ("::1", 9125)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
])
def test_the_listen_address(text: str, expected: tuple) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text", ["9125", "localhost:9125", "127.0.0.1:", "127.0.0.1:0",
                                  "127.0.0.1:70000", "/run/metrics:1", ":9125", "[::1]"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen_address(text)
