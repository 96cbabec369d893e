"""--proxy-protocol behind a real HAProxy (send-proxy and send-proxy-v2),
and under --inetd.  HAProxy connects to msmtpd from 127.0.0.1 (its
``source``); the client connects to HAProxy from 127.0.0.2, the address
that must reach the log, the Received header and --allow."""

from __future__ import annotations

import smtplib
import socket
import subprocess
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from msmtpd.net.peer import ip_literal
from tests import helpers
from tests.helpers import WAIT
from tests.support.inetd import TinyInetd
from tests.support.proxy_headers import v2_inet
from tests.support.tls_daemons import Daemon, message, run_daemons, stop_daemons

PROXY = "127.0.0.1"
CLIENT = "127.0.0.2"
STRANGER = "127.0.0.3"  # a client --allow does not list

HAPROXY_CFG = """\
global
    maxconn 64
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind {proxy}:{front}
    default_backend msmtpd
backend msmtpd
    server msmtpd {proxy}:{back} {send} source {proxy}
"""


class HAProxy:
    """haproxy in the foreground, in front of msmtpd's port."""

    def __init__(self, directory: Path, send: str, back: int) -> None:
        self.port = helpers.free_port()
        config = directory / f"haproxy-{send}.cfg"
        config.write_text(HAPROXY_CFG.format(proxy=PROXY, front=self.port, back=back, send=send))
        self.errors = (directory / f"haproxy-{send}.stderr").open("wb")
        self.process = subprocess.Popen([helpers.tool("haproxy"), "-db", "-f", str(config)],
                                        stdin=subprocess.DEVNULL, stdout=self.errors,
                                        stderr=self.errors)
        helpers.wait_for_port(self.port, PROXY, process=self.process)

    def stop(self) -> None:
        helpers.kill_quietly(self.process.pid, 15)
        try:
            self.process.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.errors.close()


@pytest.fixture(scope="module", params=["send-proxy", "send-proxy-v2"])
def behind_haproxy(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Daemon, HAProxy]]:
    directory = tmp_path_factory.mktemp("haproxy")
    daemon = Daemon(directory, "behind", [f"--proxy-protocol={PROXY}/32", f"--allow={CLIENT}"])
    run_daemons(daemon)
    proxy = HAProxy(directory, request.param, daemon.port)
    try:
        yield daemon, proxy
    finally:
        proxy.stop()
        stop_daemons([daemon])


def send_through(proxy: HAProxy, source: str, marker: str) -> None:
    with smtplib.SMTP(PROXY, proxy.port, timeout=WAIT, source_address=(source, 0)) as client:
        client.sendmail("alice@example.org", ["bob@example.org"], message(marker))


def test_the_client_behind_haproxy_is_the_peer_everywhere(behind_haproxy: Tuple[Daemon, HAProxy]) -> None:
    daemon, proxy = behind_haproxy
    before = len(helpers.delivered(daemon.maildir))
    send_through(proxy, CLIENT, "through haproxy")
    mails = helpers.wait_for_mails(daemon.maildir, before + 1)
    mail = next(mail for mail in mails if b"Subject: through haproxy" in mail)
    received = helpers.received_headers(mail)[0]
    assert f"({ip_literal(CLIENT)})".encode() in received, received
    daemon.wait_log(f"session from {CLIENT}")
    log = daemon.log_text()
    assert f"{PROXY}: PROXY v" in log and f"client {CLIENT} port " in log, log
    assert f"info: {CLIENT}: mail from <alice@example.org>" in log, log


def test_allow_applies_to_the_client_behind_haproxy(behind_haproxy: Tuple[Daemon, HAProxy]) -> None:
    daemon, proxy = behind_haproxy
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        send_through(proxy, STRANGER, "from a stranger")
    assert refused.value.smtp_code == 554, refused.value
    daemon.wait_log(f"refused {STRANGER}: not in --allow")


def test_inetd_reads_the_header_from_a_listed_proxy_on_standard_input(tmp_path: Path) -> None:
    maildir, log = tmp_path / "Maildir", tmp_path / "inetd.log"
    inetd = TinyInetd([f"--command={helpers.maildir_command(maildir)}", f"--proxy-protocol={PROXY}",
                       "--timeout=3", f"--log={log}"])
    try:
        for data in (v2_inet("192.0.2.7") + b"EHLO inetd.example\r\nMAIL FROM:<a@example.org>\r\n"
                     b"RCPT TO:<b@example.org>\r\nDATA\r\n\r\nbody\r\n.\r\nQUIT\r\n",
                     b"EHLO no-header.example\r\nQUIT\r\n"):
            with socket.create_connection((PROXY, inetd.port), timeout=WAIT) as sock:
                sock.sendall(data)
                received = b""
                try:
                    while chunk := sock.recv(4096):
                        received += chunk
                except ConnectionResetError:
                    pass
            if b"no-header" in data:
                assert received == b"", received  # closed without a greeting
            else:
                assert received.startswith(b"220 ") and b"\r\n221 " in received, received
    finally:
        results = inetd.close()
    (mail,) = helpers.wait_for_mails(maildir, 1)
    assert b"Received: from inetd.example ([192.0.2.7])" in mail, mail
    assert [status for status, _ in results] == [0, 1], results
    text = helpers.log_text(log)
    assert "session from 192.0.2.7" in text
    assert f"{PROXY}: closed without a greeting: no PROXY protocol header" in text, text
