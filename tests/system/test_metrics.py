"""--metrics with real processes: a real Prometheus server scraping it
while mails go through 16 sessions at once and workers are killed
(SIGKILL), the counters exact afterwards from both Prometheus and
/metrics; promtool's check of the exposition; AUTH, refusals and TLS
counted; --metrics refused with --inetd."""

from __future__ import annotations

import signal
import smtplib
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Dict, List

from tests import helpers
from tests.support.prometheus import Prometheus, promtool_check, samples, scrape
from tests.support.tls_daemons import Certs

SESSIONS = 16
MAILS_PER_SESSION = 7  # two rounds: 224 mails, as many as the suite's time allows
# The delivery command: a recipient names the exit status it gets.
DELIVER = """#!/bin/sh
cat >/dev/null
case "$*" in *tempfail*) exit 75 ;; *permfail*) exit 1 ;; esac
exit 0
"""
BODY = b"Subject: counted\r\n\r\nhello\r\n"


def _recipient(index: int) -> str:
    return {0: "tempfail@example.org", 1: "permfail@example.org"}.get(index % 7, "ok@example.org")


def _session(port: int, errors: List[BaseException]) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("metrics.example")
            for index in range(MAILS_PER_SESSION):
                try:
                    client.sendmail("app@example.org", [_recipient(index)], BODY)
                except smtplib.SMTPDataError:
                    pass  # tempfail and permfail: counted all the same
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def _round(port: int) -> None:
    errors: List[BaseException] = []
    threads = [threading.Thread(target=_session, args=(port, errors)) for _ in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors


def _expected(rounds: int) -> Dict[str, float]:
    per_session = {"delivered": 0, "tempfail": 0, "permfail": 0}
    for index in range(MAILS_PER_SESSION):
        result = {0: "tempfail", 1: "permfail"}.get(index % 7, "delivered")
        per_session[result] += 1
    total = {f'msmtpd_mails_total{{result="{k}"}}': float(v * SESSIONS * rounds)
             for k, v in per_session.items()}
    total['msmtpd_sessions_total{ending="quit"}'] = float(SESSIONS * rounds)
    total["msmtpd_delivery_seconds_count"] = float(MAILS_PER_SESSION * SESSIONS * rounds)
    total['msmtpd_delivery_seconds_bucket{le="+Inf"}'] = total["msmtpd_delivery_seconds_count"]
    return total


def _assert_counts(port: int, expected: Dict[str, float]) -> Dict[str, float]:
    """The counts once the last sessions closed (a worker counts a session
    right after its 221 reached the client)."""
    def matching() -> Dict[str, float]:
        found = samples(scrape(port))
        return found if {name: found.get(name) for name in expected} == expected else {}

    if not helpers.wait_until(matching, 10):
        found = samples(scrape(port))
        assert {name: found.get(name) for name in expected} == expected
    return matching()


def _worker_pids(master: int, title: str) -> List[int]:
    return [pid for pid in helpers.children(master) if helpers.cmdline(pid).startswith(title)]


def test_prometheus_counts_every_mail_of_16_sessions_across_killed_workers(tmp_path: Path) -> None:
    deliver = tmp_path / "deliver"
    deliver.write_text(DELIVER)
    deliver.chmod(0o755)
    metrics_port = helpers.free_port()
    target = f"127.0.0.1:{metrics_port}"
    with helpers.Server([f"--command={deliver}", f"--metrics={target}", "--max-sessions=16",
                         "--spare-workers=4"]) as server, Prometheus(tmp_path, target) as prometheus:
        _round(server.port)
        _assert_counts(metrics_port, _expected(1))

        # A worker killed in the middle of a session, then every idle one:
        # what they counted stays; the cut session counts nothing.
        cut = smtplib.SMTP("127.0.0.1", server.port, timeout=30)
        cut.ehlo("cut.example")
        cut.mail("app@example.org")
        cut.rcpt("ok@example.org")
        busy = helpers.wait_until(lambda: _worker_pids(server.pid, "msmtpd: session"), 10,
                                  what="the busy worker")
        for pid in [*busy, *_worker_pids(server.pid, "msmtpd: worker idle")]:
            helpers.kill_quietly(pid, signal.SIGKILL)
        cut.close()
        helpers.wait_until(lambda: len(_worker_pids(server.pid, "msmtpd: worker idle")) >= 4, 30,
                           what="the workers replaced")
        _assert_counts(metrics_port, _expected(1))

        _round(server.port)
        found = _assert_counts(metrics_port, _expected(2))
        # The octets as the command reads them: LF line endings.
        assert found['msmtpd_mail_bytes_total{result="delivered"}'] == (
            len(BODY.replace(b"\r\n", b"\n")) * _expected(2)['msmtpd_mails_total{result="delivered"}'])
        assert found["msmtpd_sessions_active"] == 0
        assert found['msmtpd_build_info{version="0.1.0"}'] == 1

        for name, value in _expected(2).items():
            prometheus.wait_for(name, value)
        assert prometheus.query('up{job="msmtpd"}') == 1.0


def test_promtool_finds_the_exposition_clean_also_with_a_queue(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    metrics_port = helpers.free_port()
    with helpers.Server(["--command=/bin/false", f"--queue={queue}", "--queue-lifetime=1d",
                         f"--metrics=127.0.0.1:{metrics_port}"]) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.sendmail("app@example.org", ["ok@example.org"], BODY)
        text = scrape(metrics_port)
        assert promtool_check(text).strip() == ""
        found = samples(text)
        assert found['msmtpd_mails_total{result="queued"}'] == 1
        # /bin/false exits 1: a permanent failure, moved to failed/ by the runner.
        found = helpers.wait_until(lambda: (lambda s: s if s.get(
            'msmtpd_queue_deliveries_total{result="permfail"}') == 1 else None)(
                samples(scrape(metrics_port))), 30, what="the runner's attempt counted")
        assert found["msmtpd_queue_mails"] == 0
        assert found["msmtpd_queue_failed_mails"] == 1
        assert found["msmtpd_queue_oldest_age_seconds"] == 0
        assert found["msmtpd_delivery_seconds_count"] == 1


def test_auth_refusals_and_tls_are_counted(tmp_path: Path, certs: Certs) -> None:
    senders = tmp_path / "senders"
    senders.write_text("mailer: me@example.org\n")
    metrics_port = helpers.free_port()
    with helpers.Server(["--command=cat >/dev/null", "--auth=mailer,echo s3cret",
                         f"--senders={senders}", "--max-size=1000", f"--tls-cert={certs.combined}",
                         f"--metrics=127.0.0.1:{metrics_port}"]) as server:
        context = ssl.create_default_context(cafile=str(certs.ca))
        with smtplib.SMTP("localhost", server.port, timeout=30) as client:
            client.starttls(context=context)
            client.ehlo()
            assert client.docmd("AUTH", "PLAIN " + helpers.auth_plain("mailer", "wrong"))[0] == 535
            assert client.docmd("AUTH", "PLAIN " + helpers.auth_plain("mailer", "s3cret"))[0] == 235
            assert client.mail("you@example.org")[0] == 553
            assert client.mail("me@example.org", ["SIZE=5000"])[0] == 552
        found = _assert_counts(metrics_port, {'msmtpd_sessions_total{ending="quit"}': 1.0})
        assert found['msmtpd_tls_sessions_total{version="TLSv1.3"}'] == 1
        assert found['msmtpd_auth_total{result="failure"}'] == 1
        assert found['msmtpd_auth_total{result="success"}'] == 1
        assert found['msmtpd_refusals_total{reason="sender"}'] == 1
        assert found['msmtpd_refusals_total{reason="size"}'] == 1
        assert found['msmtpd_mails_total{result="refused"}'] == 2
        assert found['msmtpd_refusals_total{reason="rate_limit"}'] == 0
        assert found['msmtpd_refusals_total{reason="loop"}'] == 0


def test_metrics_with_inetd_is_a_usage_error() -> None:
    done = subprocess.run([helpers.program("msmtpd"), "--inetd", "--metrics=127.0.0.1:9125"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and "--metrics" in done.stderr


def test_a_metrics_port_in_use_is_a_start_up_error(tmp_path: Path) -> None:
    with helpers.Server(["--command=cat >/dev/null"]) as busy:
        done = subprocess.run([helpers.program("msmtpd"), f"--port={helpers.free_port()}",
                               f"--metrics=127.0.0.1:{busy.port}"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert done.returncode == 3
    assert done.stderr.startswith("msmtpd: cannot listen on --metrics")


def test_loop_and_rate_limit_refusals_are_counted(tmp_path: Path) -> None:
    """The two refusals the hop limit and --rate-limit make: one of each."""
    metrics_port = helpers.free_port()
    hops = b"".join(b"Received: from r%d.test by r%d.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
                    % (i, i + 1) for i in range(51))
    with helpers.Server(["--command=cat >/dev/null; :", "--rate-limit=1/1h",
                         f"--metrics=127.0.0.1:{metrics_port}"]) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            looping = hops + b"Subject: loop\r\n\r\nbody\r\n"
            try:
                client.sendmail("a@example.org", ["b@example.org"], looping)
                raise AssertionError("a mail with 51 Received: fields was accepted")
            except smtplib.SMTPDataError as exc:
                assert exc.smtp_code == 554, exc
            client.sendmail("a@example.org", ["b@example.org"], b"Subject: one\r\n\r\nbody\r\n")
            assert client.mail("a@example.org")[0] == 450
        found = _assert_counts(metrics_port, {'msmtpd_sessions_total{ending="quit"}': 1.0})
        assert found['msmtpd_refusals_total{reason="loop"}'] == 1
        assert found['msmtpd_refusals_total{reason="rate_limit"}'] == 1
        assert found['msmtpd_mails_total{result="delivered"}'] == 1


def test_a_mail_delivered_on_its_first_try_counts_as_delivered(tmp_path: Path) -> None:
    """--queue-first-try: the client heard "delivered", and so does --metrics."""
    metrics_port = helpers.free_port()
    with helpers.Server(["--command=cat >/dev/null; :", f"--queue={tmp_path / 'queue'}",
                         "--queue-first-try=10", f"--metrics=127.0.0.1:{metrics_port}"]) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.sendmail("app@example.org", ["ok@example.org"], BODY)
        found = _assert_counts(metrics_port, {'msmtpd_sessions_total{ending="quit"}': 1.0})
        assert found['msmtpd_mails_total{result="delivered"}'] == 1
        assert found['msmtpd_mails_total{result="queued"}'] == 0
