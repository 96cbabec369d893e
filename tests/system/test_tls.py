"""TLS on real processes with real clients: STARTTLS (RFC 3207) and
implicit TLS (RFC 8314) on msmtpd daemons and ``--inetd`` sessions (on a
pipe, a socketpair, a TCP connection handed over, and under xinetd),
--tls-required, the start-up errors, the handshake bounded by --timeout,
the plaintext-injection rule of STARTTLS, AUTH only under TLS for a peer
that is not loopback (from a network namespace of its own), the protocol
versions, renegotiation and compression, the Received: header, SIGHUP
reloading the certificate, and the pipe command inheriting no socket.

Clients: Python's ssl and smtplib, ``openssl s_client``, swaks, curl and
msmtp.  Certificates come from trustme, made afresh for each run."""

from __future__ import annotations

import base64
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from tests import helpers
from tests.helpers import kill_quietly, received_headers
from tests.support.inetd import TinyInetd, finish
from tests.support.netns import HOST_ADDRESS, PEER_ADDRESS, veth_namespace
from tests.support.service_files import ETC, start_xinetd, stop_xinetd
from tests.support.tls_daemons import (
    WAIT,
    Certs,
    Daemon,
    message,
    run_daemons,
    stop_daemons,
)

HOST = socket.gethostname()
USER, PASSWORD = "mailer", "s3cret-pw"
AUTH = f"--auth={USER},echo {PASSWORD}"
SLOW_TIMEOUT = 2.0  # --timeout of the servers whose handshake deadline is tested
RECEIVED_TLS = re.compile(
    rb"Received: from (?P<helo>\S+) \(\[(?P<peer>[0-9.]+)\]\) by " + re.escape(HOST.encode())
    + rb" \(msmtpd\) with (?P<protocol>[A-Z0-9]+) \((?P<version>TLSv1\.[23]) with (?P<cipher>[A-Z0-9_-]+)\);")


# -- certificates ----------------------------------------------------------------------




def serial_in_output(output: bytes) -> int:
    """The serial of the server certificate that ``openssl s_client`` printed."""
    done = subprocess.run([helpers.tool("openssl"), "x509", "-noout", "-serial"], input=output,
                          capture_output=True, timeout=WAIT)
    assert done.returncode == 0, (done.stderr, output[-2000:])
    return int(done.stdout.decode().strip().split("=", 1)[1], 16)


# -- daemons ---------------------------------------------------------------------------








class Daemons:
    """The daemons shared by the tests of this module."""

    def __init__(self, directory: Path, certs: Certs) -> None:
        separate = [f"--tls-cert={certs.cert}", f"--tls-key={certs.key}"]
        combined = [f"--tls-cert={certs.combined}"]  # the key inside the certificate file
        self.starttls = Daemon(directory, "starttls", separate)
        self.implicit = Daemon(directory, "implicit", [*combined, "--tls-implicit"])
        self.starttls_auth = Daemon(directory, "starttls-auth", [*combined, AUTH])
        self.implicit_auth = Daemon(directory, "implicit-auth", [*separate, "--tls-implicit", AUTH])
        self.required = Daemon(directory, "required", [*combined, "--tls-required"])
        self.slow_starttls = Daemon(directory, "slow-starttls", combined, max_sessions=1,
                                    timeout=SLOW_TIMEOUT)
        self.slow_implicit = Daemon(directory, "slow-implicit", [*combined, "--tls-implicit"],
                                    max_sessions=1, timeout=SLOW_TIMEOUT)
        self.all = [self.starttls, self.implicit, self.starttls_auth, self.implicit_auth,
                    self.required, self.slow_starttls, self.slow_implicit]

    def pick(self, mode: str, auth: bool = False) -> Daemon:
        """The STARTTLS or the implicit-TLS daemon, with or without --auth."""
        name = mode + ("_auth" if auth else "")
        daemon: Daemon = getattr(self, name)
        return daemon


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Daemons]:
    started = Daemons(tmp_path_factory.mktemp("daemons"), certs)
    try:
        run_daemons(*started.all)
        yield started
    finally:
        stop_daemons(started.all)


@pytest.fixture
def marker(request: pytest.FixtureRequest) -> str:
    """A unique Subject for this test's mail in a shared Maildir."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)
    return f"{name}-{uuid.uuid4().hex[:8]}"


def mail_with(maildir: Path, marker: str) -> bytes:
    """The one delivered mail that contains ``marker``."""
    found: List[bytes] = []

    def search() -> bool:
        found[:] = [mail for mail in helpers.delivered(maildir) if marker.encode() in mail]
        return bool(found)

    assert helpers.wait_until(search, WAIT), f"no mail with {marker!r} in {maildir}"
    assert len(found) == 1, found
    return found[0]


def tls_received(mail: bytes) -> re.Match[bytes]:
    """msmtpd's Received: header of ``mail``, which must name TLS."""
    top = received_headers(mail)[0]
    match = RECEIVED_TLS.match(top)
    assert match, top
    return match


# -- a raw client ----------------------------------------------------------------------


class Client:
    """A raw SMTP client on a socket that reads whole replies and can turn
    its socket into TLS."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", sock: Optional[socket.socket] = None) -> None:
        self.sock = sock if sock is not None else socket.create_connection((host, port), timeout=WAIT)
        self.sock.settimeout(WAIT)
        self.buffer = b""

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            return False
        self.buffer += data
        return True

    def reply(self) -> bytes:
        """The next complete reply, all its lines."""
        start = 0
        while True:
            end = self.buffer.find(b"\r\n", start)
            while end >= 0:
                if self.buffer[start + 3:start + 4] != b"-":
                    reply, self.buffer = self.buffer[:end + 2], self.buffer[end + 2:]
                    return reply
                start = end + 2
                end = self.buffer.find(b"\r\n", start)
            if not self._fill():
                raise AssertionError(f"the connection ended instead of a reply: {self.buffer!r}")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: bytes) -> bytes:
        self.send(line)
        return self.reply()

    def tls(self, context: ssl.SSLContext, hostname: str = "localhost") -> None:
        """The handshake, on what was a plain socket."""
        assert self.buffer == b"", f"plaintext after the last reply: {self.buffer!r}"
        tls = context.wrap_socket(self.sock, server_hostname=hostname)
        self.sock = tls
        if tls.version() is None:
            # wrap_socket skips the handshake on a socket that is no longer
            # connected (the server has closed it already).
            raise ConnectionResetError("the connection ended before the handshake")

    def starttls(self, context: ssl.SSLContext) -> None:
        assert self.command(b"STARTTLS\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
        self.tls(context)

    def rest(self) -> bytes:
        """Everything until the end of the connection."""
        while self._fill():
            pass
        rest, self.buffer = self.buffer, b""
        return rest

    def close(self) -> None:
        self.sock.close()


def ehlo_keywords(reply: bytes) -> List[str]:
    """The extension keywords of an EHLO reply (without the host line)."""
    lines = reply.decode().split("\r\n")[1:-1]
    return [line[4:].split(" ")[0].upper() for line in lines]


def connect(daemon: Daemon, certs: Certs, mode: str) -> Client:
    """A client in TLS past the greeting: implicit TLS from the first byte,
    or EHLO and STARTTLS in plain text."""
    client = Client(daemon.port, daemon.host)
    if mode == "implicit":
        client.tls(certs.context())
        assert client.reply().startswith(b"220 ")
    else:
        assert client.reply().startswith(b"220 ")
        assert "STARTTLS" in ehlo_keywords(client.command(b"EHLO client.example\r\n"))
        client.starttls(certs.context())
    return client


def send_one(client: Client, sender: str, recipient: str, marker: str) -> None:
    """EHLO and one mail, each step waiting for its reply."""
    assert client.command(b"EHLO client.example\r\n").startswith(b"250-")
    assert client.command(f"MAIL FROM:<{sender}>\r\n".encode()) == b"250 2.1.0 Sender OK\r\n"
    assert client.command(f"RCPT TO:<{recipient}>\r\n".encode()).startswith(b"250 ")
    assert client.command(b"DATA\r\n").startswith(b"354 ")
    assert client.command(f"Subject: {marker}\r\n\r\nbody of {marker}\r\n.\r\n".encode()).startswith(b"250 ")


def plain_auth() -> bytes:
    return base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())




MODES = ["starttls", "implicit"]


# -- start-up errors -------------------------------------------------------------------


def _startup_cases() -> List[Tuple[str, Callable[[Certs], List[str]], str]]:
    def bad_pem(certs: Certs) -> Path:
        return certs.write("corrupt.pem", b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n"
                                           b"-----END CERTIFICATE-----\n" + certs.key.read_bytes())

    def combined_encrypted(certs: Certs) -> Path:
        key = certs.encrypted_key("traditional-key.pem", traditional=True)
        return certs.write("combined-encrypted.pem", key.read_bytes() + certs.cert.read_bytes())

    return [
        ("missing-certificate", lambda c: [f"--tls-cert={c.directory / 'none.pem'}"],
         r"none\.pem.*No such file"),
        ("missing-key", lambda c: [f"--tls-cert={c.cert}", f"--tls-key={c.directory / 'no-key.pem'}"],
         r"no-key\.pem.*No such file"),
        ("certificate-is-a-directory", lambda c: [f"--tls-cert={c.directory}", f"--tls-key={c.key}"],
         r"(?i)directory"),
        ("key-not-matching", lambda c: [f"--tls-cert={c.cert}", f"--tls-key={c.second_key}"],
         r"(?i)match"),
        ("key-file-as-certificate", lambda c: [f"--tls-cert={c.key}"], r"(?i)certificate"),
        ("empty-certificate", lambda c: [f"--tls-cert={c.write('empty.pem', b'')}", f"--tls-key={c.key}"],
         r"(?i)certificate"),
        ("corrupt-certificate", lambda c: [f"--tls-cert={bad_pem(c)}"], r"(?i)certificate|PEM"),
        ("certificate-without-key", lambda c: [f"--tls-cert={c.cert}"], r"(?i)key"),
        ("encrypted-key", lambda c: [f"--tls-cert={c.cert}", f"--tls-key={c.encrypted_key('enc.pem')}"],
         r"(?i)encrypted"),
        ("encrypted-key-in-certificate-file", lambda c: [f"--tls-cert={combined_encrypted(c)}"],
         r"(?i)encrypted"),
        ("tls-key-without-cert", lambda c: [f"--tls-key={c.key}"], r"--tls-key needs --tls-cert"),
        ("tls-implicit-without-cert", lambda c: ["--tls-implicit"], r"--tls-implicit needs --tls-cert"),
        ("tls-required-without-cert", lambda c: ["--tls-required"], r"--tls-required needs --tls-cert"),
    ]


STARTUP_CASES = _startup_cases()


def start_up_failure(args: Sequence[str], tmp_path: Path, prefix: Sequence[str] = ()
                     ) -> Dict[str, Tuple[int, bytes, bytes]]:
    """msmtpd with ``args`` as a foreground daemon, under --inetd and with
    --daemon, all three at once: (status, stdout, stderr) of each.  A
    daemon that wrongly starts is stopped again."""
    pidfile = tmp_path / "daemon.pid"
    variants = {
        "daemon": ["--interface=127.0.0.1", f"--port={helpers.free_port()}"],
        "inetd": ["--inetd"],
        "detached": ["--daemon", f"--pidfile={pidfile}", "--interface=127.0.0.1",
                     f"--port={helpers.free_port()}"],
    }
    processes = {name: subprocess.Popen([*prefix, helpers.program("msmtpd"), *extra, *args],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
                 for name, extra in variants.items()}
    results = {}
    for name, process in processes.items():
        try:
            out, err = process.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        results[name] = (process.returncode, out, err)
    if pidfile.exists():  # it detached: do not leave it behind
        try:
            kill_quietly(int(pidfile.read_text().split()[0]), signal.SIGKILL)
        except (ValueError, IndexError):
            pass
    return results


@pytest.mark.parametrize("case", STARTUP_CASES, ids=[case[0] for case in STARTUP_CASES])
def test_start_up_error_is_one_line_and_exit_3(certs: Certs, tmp_path: Path,
                                               case: Tuple[str, Callable[[Certs], List[str]], str]) -> None:
    _, make_args, expected = case
    results = start_up_failure(make_args(certs), tmp_path)
    for name, (status, out, err) in results.items():
        text = err.decode(errors="replace")
        assert status == 3, (name, status, text)
        assert out == b"", (name, out)
        assert len(text.splitlines()) == 1 and text.endswith("\n"), (name, text)
        assert text.startswith("msmtpd: "), (name, text)
        assert re.search(expected, text), (name, text)


def root_only(path: Path) -> Path:
    os.chown(path, 0, 0)
    path.chmod(0o600)
    return path


def test_start_up_error_for_an_unreadable_key(certs: Certs, tmp_path: Path) -> None:
    """A key of mode 0000, read by root without the capabilities that
    override file permissions (so root is refused like anybody else)."""
    setpriv = helpers.tool("setpriv")
    helpers.need_root()
    key = tmp_path / "unreadable-key.pem"
    shutil.copy(certs.key, key)
    key.chmod(0)
    prefix = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
    probe = subprocess.run([*prefix, "cat", str(key)], capture_output=True, timeout=WAIT)
    assert probe.returncode != 0, "the key is still readable"
    results = start_up_failure([f"--tls-cert={certs.cert}", f"--tls-key={key}"], tmp_path, prefix)
    for name, (status, _, err) in results.items():
        text = err.decode(errors="replace")
        assert status == 3, (name, status, text)
        assert len(text.splitlines()) == 1 and text.startswith("msmtpd: "), (name, text)
        assert "unreadable-key.pem" in text and "Permission denied" in text, (name, text)


# -- a root-only key under --user --------------------------------------------------------


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def test_root_only_key_with_user_nobody_daemon(certs: Certs, tmp_path: Path) -> None:
    helpers.need_root()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(certs.cert, cert)
    shutil.copy(certs.key, key)
    root_only(key)
    daemon = Daemon(tmp_path, "nobody", [f"--tls-cert={cert}", f"--tls-key={key}", "--user=nobody"],
                    command="cat >/dev/null; :", max_sessions=2)
    try:
        run_daemons(daemon)
        workers = helpers.children(daemon.pid)
        assert workers and all(uid_of(pid) == 65534 for pid in workers), workers
        assert uid_of(daemon.pid) == 0  # the master keeps root, for SIGHUP
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=WAIT) as smtp:
            smtp.starttls(context=certs.context())
            assert smtp.sock is not None
            assert int(smtp.sock.getpeercert()["serialNumber"], 16) == certs.serial
            assert smtp.sendmail("alice@example.org", ["bob@example.org"], message("nobody")) == {}
        daemon.wait_log("delivered, exit status 0")
        # A renewed root-only pair is read by the master on SIGHUP.
        shutil.copy(certs.second_cert, cert)
        shutil.copy(certs.second_key, key)
        os.kill(daemon.pid, signal.SIGHUP)
        daemon.wait_log("TLS certificate reloaded")
        assert "keeping the old TLS certificate" not in daemon.log_text()
        assert served_serial(daemon, "starttls", certs) == certs.second_serial
    finally:
        stop_daemons([daemon])


def test_root_only_key_with_user_nobody_inetd(certs: Certs, tmp_path: Path) -> None:
    helpers.need_root()
    key = tmp_path / "key.pem"
    shutil.copy(certs.key, key)
    root_only(key)
    ours, theirs = socket.socketpair()
    with ours:
        try:
            process = subprocess.Popen(
                [helpers.program("msmtpd"), "--inetd", "--user=nobody", f"--tls-cert={certs.cert}",
                 f"--tls-key={key}", "--command=cat >/dev/null; :"],
                stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=subprocess.PIPE)
        finally:
            theirs.close()
        try:
            client = Client(sock=ours)
            assert client.reply().startswith(b"220 ")
            assert "STARTTLS" in ehlo_keywords(client.command(b"EHLO client.example\r\n"))
            client.starttls(certs.context())
            assert uid_of(process.pid) == 65534
            send_one(client, "alice@example.org", "bob@example.org", "inetd-nobody")
            assert client.command(b"QUIT\r\n").startswith(b"221 ")
        finally:
            status, err = finish(process)
    assert status == 0, err


# -- STARTTLS and implicit TLS: the protocol ---------------------------------------------


def test_ehlo_offers_starttls_until_tls_is_up_then_starttls_is_503(daemons: Daemons, certs: Certs) -> None:
    client = Client(daemons.starttls.port)
    try:
        assert client.reply().startswith(b"220 ")
        before = ehlo_keywords(client.command(b"EHLO client.example\r\n"))
        assert "STARTTLS" in before, before
        assert "AUTH" not in before
        client.starttls(certs.context())
        after = ehlo_keywords(client.command(b"EHLO client.example\r\n"))
        assert "STARTTLS" not in after, after
        assert [k for k in before if k != "STARTTLS"] == after
        assert client.command(b"STARTTLS\r\n") == b"503 5.5.1 TLS already active\r\n"
        assert client.command(b"NOOP\r\n").startswith(b"250 ")
        assert client.command(b"QUIT\r\n").startswith(b"221 ")
    finally:
        client.close()


def test_starttls_with_an_argument_is_501_and_the_session_goes_on(daemons: Daemons, certs: Certs) -> None:
    client = Client(daemons.starttls.port)
    try:
        assert client.reply().startswith(b"220 ")
        assert client.command(b"EHLO client.example\r\n").startswith(b"250-")
        assert client.command(b"STARTTLS now\r\n").startswith(b"501 5.5.4 ")
        client.starttls(certs.context())
        assert client.command(b"EHLO client.example\r\n").startswith(b"250-")
        assert client.command(b"STARTTLS again\r\n").startswith(b"501 5.5.4 ")
        assert client.command(b"QUIT\r\n").startswith(b"221 ")
    finally:
        client.close()


def test_implicit_tls_greets_only_inside_tls_and_offers_no_starttls(daemons: Daemons, certs: Certs) -> None:
    client = Client(daemons.implicit.port)
    try:
        client.tls(certs.context())
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.reply() == f"220 {HOST} ESMTP msmtpd\r\n".encode()
        keywords = ehlo_keywords(client.command(b"EHLO client.example\r\n"))
        assert "STARTTLS" not in keywords and "PIPELINING" in keywords, keywords
        assert client.command(b"STARTTLS\r\n") == b"503 5.5.1 TLS already active\r\n"
        assert client.command(b"QUIT\r\n").startswith(b"221 ")
    finally:
        client.close()


def test_handshake_forgets_helo_envelope_and_auth(daemons: Daemons, certs: Certs) -> None:
    client = Client(daemons.starttls_auth.port)  # loopback: AUTH works in plain text
    try:
        assert client.reply().startswith(b"220 ")
        assert "AUTH" in ehlo_keywords(client.command(b"EHLO client.example\r\n"))
        assert client.command(b"AUTH PLAIN " + plain_auth() + b"\r\n").startswith(b"235 ")
        assert client.command(b"MAIL FROM:<alice@example.org>\r\n") == b"250 2.1.0 Sender OK\r\n"
        client.starttls(certs.context())
        mail_from = b"MAIL FROM:<alice@example.org>\r\n"
        assert client.command(mail_from) == b"503 5.5.1 Send EHLO or HELO first\r\n"
        assert client.command(b"EHLO client.example\r\n").startswith(b"250-")
        assert client.command(mail_from) == b"530 5.7.0 Authentication required\r\n"
        assert client.command(b"AUTH PLAIN " + plain_auth() + b"\r\n").startswith(b"235 ")
        assert client.command(b"RCPT TO:<bob@example.org>\r\n") == b"503 5.5.1 Send MAIL FROM first\r\n"
        assert client.command(b"MAIL FROM:<alice@example.org>\r\n") == b"250 2.1.0 Sender OK\r\n"
        assert client.command(b"QUIT\r\n").startswith(b"221 ")
    finally:
        client.close()


def test_tls_required_allows_only_the_commands_of_rfc_3207(daemons: Daemons, certs: Certs,
                                                           marker: str) -> None:
    daemon = daemons.required
    must = b"530 5.7.0 Must issue a STARTTLS command first\r\n"
    client = Client(daemon.port)
    try:
        assert client.reply().startswith(b"220 ")
        assert "STARTTLS" in ehlo_keywords(client.command(b"EHLO client.example\r\n"))
        assert client.command(b"HELO client.example\r\n").startswith(b"250 ")
        assert client.command(b"NOOP\r\n").startswith(b"250 ")
        assert client.command(b"RSET\r\n").startswith(b"250 ")
        assert client.command(b"HELP\r\n").startswith(b"214")
        for line in (b"MAIL FROM:<alice@example.org>", b"RCPT TO:<bob@example.org>", b"DATA",
                     b"VRFY bob", b"EXPN list", b"AUTH PLAIN " + plain_auth()):
            assert client.command(line + b"\r\n") == must, line
        # RFC 3030 section 2: the refused chunk is read all the same.
        assert client.command(b"BDAT 10 LAST\r\nQUIT\r\nQUIT") == must
        client.starttls(certs.context())
        send_one(client, "alice@example.org", "bob@example.org", marker)
        assert client.command(b"QUIT\r\n").startswith(b"221 ")
    finally:
        client.close()
    assert tls_received(mail_with(daemon.maildir, marker))["protocol"] == b"ESMTPS"
    quitter = Client(daemon.port)
    try:
        assert quitter.reply().startswith(b"220 ")
        assert quitter.command(b"QUIT\r\n").startswith(b"221 ")
    finally:
        quitter.close()


# -- plaintext injection (CVE-2011-0411) -------------------------------------------------


@pytest.mark.parametrize("writes", ["one-write", "two-writes"])
def test_plaintext_after_starttls_is_never_executed(daemons: Daemons, certs: Certs, marker: str,
                                                    writes: str) -> None:
    daemon = daemons.starttls
    failures = daemon.count("TLS handshake failed")
    client = Client(daemon.port)
    try:
        assert client.reply().startswith(b"220 ")
        assert client.command(b"EHLO client.example\r\n").startswith(b"250-")
        if writes == "one-write":
            client.send(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n")
        else:
            client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.send(b"STARTTLS\r\n")
            client.send(b"MAIL FROM:<evil@x>\r\n")
        assert client.reply() == b"220 2.0.0 Ready to start TLS\r\n"
        assert client.buffer == b""  # no plaintext answer to the injected line
        try:
            client.tls(certs.context())
        except (ssl.SSLError, OSError):
            # The injected line may reach the server after its STARTTLS:
            # then it is no ClientHello and the handshake fails.  Either
            # way, nothing executed it.
            assert writes == "two-writes"
            handshake_ok = False
        else:
            handshake_ok = True
        if handshake_ok:
            ehlo = client.command(b"EHLO client.example\r\n")
            assert ehlo.startswith(f"250-{HOST}\r\n".encode()), ehlo  # the first reply in TLS is EHLO's
            send_one(client, "good@x", "bob@example.org", marker)
            assert client.command(b"QUIT\r\n").startswith(b"221 ")
            assert client.rest() == b""  # no late second reply
    finally:
        client.close()
    if handshake_ok:
        mail = mail_with(daemon.maildir, marker)
        assert mail.startswith(b"Return-Path: <good@x>\n")
        daemon.wait_log("mail from <good@x>")
    else:
        daemon.wait_log("TLS handshake failed", failures + 1)
    assert all(b"evil@x" not in mail for mail in helpers.delivered(daemon.maildir))
    assert "evil@x" not in daemon.log_text()


# -- the handshake is bounded -------------------------------------------------------------


def client_hello(certs: Certs) -> bytes:
    """The first flight of a real TLS client."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = certs.context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100
    return hello


def wait_closed(sock: socket.socket, timeout: float) -> float:
    """Seconds until the peer closes ``sock`` (whatever it sent before)."""
    start = time.monotonic()
    sock.settimeout(timeout)
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        except socket.timeout:
            raise AssertionError(f"still open after {timeout:g} s") from None
        if not data:
            return time.monotonic() - start


def served_next(daemon: Daemon, certs: Certs, mode: str) -> None:
    """A well-behaved TLS client is served (the worker is free)."""
    client = connect(daemon, certs, mode)
    try:
        assert client.command(b"NOOP\r\n").startswith(b"250 ")
        assert client.command(b"QUIT\r\n").startswith(b"221 ")
    finally:
        client.close()


@pytest.mark.parametrize("sends", ["nothing", "half-a-client-hello"])
@pytest.mark.parametrize("mode", MODES)
def test_stalled_handshake_is_cut_at_the_timeout(daemons: Daemons, certs: Certs, mode: str,
                                                 sends: str) -> None:
    daemon = daemons.slow_implicit if mode == "implicit" else daemons.slow_starttls
    failures = daemon.count("TLS handshake failed")
    attacker = socket.create_connection(("127.0.0.1", daemon.port), timeout=WAIT)
    waiting: Optional[socket.socket] = None
    try:
        if mode == "starttls":
            plain = Client(sock=attacker)
            assert plain.reply().startswith(b"220 ")
            assert plain.command(b"STARTTLS\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
        if sends != "nothing":
            hello = client_hello(certs)
            attacker.sendall(hello[:len(hello) // 2])
        # --max-sessions=1: this one waits for the only worker.
        waiting = socket.create_connection(("127.0.0.1", daemon.port), timeout=WAIT)
        elapsed = wait_closed(attacker, SLOW_TIMEOUT + 10)
        assert elapsed <= SLOW_TIMEOUT + 3, elapsed
    finally:
        attacker.close()
    assert waiting is not None
    client = Client(sock=waiting)
    try:
        if mode == "implicit":
            client.tls(certs.context())
        assert client.reply().startswith(b"220 ")
        if mode == "starttls":
            assert client.command(b"EHLO client.example\r\n").startswith(b"250-")
            client.starttls(certs.context())
        assert client.command(b"NOOP\r\n").startswith(b"250 ")
        assert client.command(b"QUIT\r\n").startswith(b"221 ")
    finally:
        client.close()
    daemon.wait_log("TLS handshake failed", failures + 1)
    lines = [line for line in daemon.log_text().splitlines() if "TLS handshake failed" in line]
    assert len(lines) == failures + 1, lines
    assert lines[-1].endswith(f"TLS handshake failed: no handshake within {SLOW_TIMEOUT:g} s"), lines[-1]


@pytest.mark.parametrize("mode", MODES)
def test_garbage_instead_of_a_client_hello(daemons: Daemons, certs: Certs, mode: str) -> None:
    daemon = daemons.slow_implicit if mode == "implicit" else daemons.slow_starttls
    failures = daemon.count("TLS handshake failed")
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=WAIT)
    try:
        if mode == "starttls":
            plain = Client(sock=sock)
            assert plain.reply().startswith(b"220 ")
            assert plain.command(b"STARTTLS\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
        sock.sendall(b"EHLO not.a.tls.client\r\nMAIL FROM:<garbage@example.org>\r\n" + bytes(range(256)))
        wait_closed(sock, WAIT)
    finally:
        sock.close()
    daemon.wait_log("TLS handshake failed", failures + 1)
    served_next(daemon, certs, mode)  # with --max-sessions=1: the worker is free
    served_next(daemon, certs, mode)
    lines = [line for line in daemon.log_text().splitlines() if "TLS handshake failed" in line]
    assert len(lines) == failures + 1, lines
    assert "no handshake within" not in lines[-1]
    assert "Traceback" not in daemon.log_text()
    assert "garbage@example.org" not in daemon.log_text()


# -- the server closes TLS properly ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_quit_ends_tls_with_close_notify(daemons: Daemons, certs: Certs, mode: str) -> None:
    """RFC 8446 section 6.1: each party must send close_notify before closing
    its write side; without it a client cannot tell the end from a cut."""
    raw = socket.create_connection(("127.0.0.1", daemons.pick(mode).port), timeout=WAIT)
    client = Client(sock=raw)
    try:
        if mode == "starttls":
            assert client.reply().startswith(b"220 ")
            assert client.command(b"STARTTLS\r\n").startswith(b"220 ")
        client.sock = certs.context().wrap_socket(raw, server_hostname="localhost",
                                                  suppress_ragged_eofs=False)
        if mode == "implicit":
            assert client.reply().startswith(b"220 ")
        assert client.command(b"QUIT\r\n").startswith(b"221 ")
        try:
            rest = client.sock.recv(100)
        except ssl.SSLEOFError as exc:
            raise AssertionError(f"TCP closed without a TLS close_notify: {exc}") from None
        assert rest == b""
    finally:
        client.close()


# -- AUTH and TLS ---------------------------------------------------------------------------


def test_loopback_peer_may_auth_in_plain_text(daemons: Daemons, certs: Certs, marker: str) -> None:
    daemon = daemons.starttls_auth
    with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="client.example", timeout=WAIT) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("auth") and smtp.has_extn("starttls")
        assert smtp.login(USER, PASSWORD)[0] == 235
        assert smtp.sendmail("alice@example.org", ["bob@example.org"], message(marker)) == {}
    top = received_headers(mail_with(daemon.maildir, marker))[0]
    assert b" with ESMTPA;" in top, top


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    """The client's namespace: PEER_ADDRESS, not loopback."""
    with veth_namespace("t") as name:
        yield name


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory, certs: Certs, namespace: str
           ) -> Iterator[Dict[str, Daemon]]:
    """Daemons with --auth on HOST_ADDRESS, for the client in the namespace."""
    directory = tmp_path_factory.mktemp("remote")
    started = {
        "starttls": Daemon(directory, "remote-starttls", [f"--tls-cert={certs.combined}", AUTH],
                           host=HOST_ADDRESS),
        "implicit": Daemon(directory, "remote-implicit",
                           [f"--tls-cert={certs.combined}", "--tls-implicit", AUTH], host=HOST_ADDRESS),
    }
    try:
        run_daemons(*started.values())
        yield started
    finally:
        stop_daemons(list(started.values()))


REMOTE_CLIENT = r"""
import base64, json, smtplib, ssl, sys
mode, host, port, cafile, user, password, marker = sys.argv[1:]
context = ssl.create_default_context(cafile=cafile)
out = {}
if mode == "implicit":
    smtp = smtplib.SMTP_SSL(host, int(port), local_hostname="far.example", context=context, timeout=15)
else:
    smtp = smtplib.SMTP(host, int(port), local_hostname="far.example", timeout=15)
    out["plain_ehlo"] = smtp.ehlo()[1].decode()
    plain = base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()
    out["plain_auth_plain"] = smtp.docmd("AUTH", "PLAIN " + plain)[0:2]
    out["plain_auth_login"] = smtp.docmd("AUTH", "LOGIN")[0:2]
    smtp.starttls(context=context)
out["tls_ehlo"] = smtp.ehlo()[1].decode()
out["login"] = smtp.login(user, password)[0]
out["refused"] = smtp.sendmail("far@example.org", ["near@example.org"],
                               "Subject: %s\r\n\r\nfrom afar\r\n" % marker)
smtp.quit()
print(json.dumps(out, default=lambda b: b.decode()))
"""


@pytest.mark.parametrize("mode", MODES)
def test_remote_peer_may_auth_only_under_tls(remote: Dict[str, Daemon], namespace: str, certs: Certs,
                                             marker: str, mode: str) -> None:
    import json

    daemon = remote[mode]
    done = subprocess.run([helpers.tool("ip"), "netns", "exec", namespace, sys.executable, "-c",
                           REMOTE_CLIENT, mode, HOST_ADDRESS, str(daemon.port), str(certs.ca), USER,
                           PASSWORD, marker], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    if mode == "starttls":
        plain_keywords = [line.split(" ")[0].upper() for line in out["plain_ehlo"].splitlines()[1:]]
        assert "STARTTLS" in plain_keywords and "AUTH" not in plain_keywords, out
        for key in ("plain_auth_plain", "plain_auth_login"):
            code, text = out[key]
            assert code == 538 and text.startswith("5.7.11 "), out
    tls_keywords = [line.split(" ")[0].upper() for line in out["tls_ehlo"].splitlines()[1:]]
    assert "AUTH" in tls_keywords and "STARTTLS" not in tls_keywords, out
    assert out["login"] == 235 and out["refused"] == {}, out
    match = tls_received(mail_with(daemon.maildir, marker))
    assert match["peer"] == PEER_ADDRESS.encode() and match["protocol"] == b"ESMTPSA", match[0]
    assert f"session from {PEER_ADDRESS}" in daemon.log_text()


def test_remote_swaks_auths_only_after_starttls(remote: Dict[str, Daemon], namespace: str, certs: Certs,
                                             marker: str) -> None:
    daemon = remote["starttls"]
    swaks = helpers.tool("swaks")
    base = [helpers.tool("ip"), "netns", "exec", namespace, swaks, "--server",
            f"{HOST_ADDRESS}:{daemon.port}", "--from", "far@example.org", "--to", "near@example.org",
            "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD, "--timeout", "10"]
    refused = subprocess.run([*base, "--header", f"Subject: {marker}-plain"], capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode != 0, refused.stdout
    assert "AUTH" not in re.findall(r"<-  250[ -](\w+)", refused.stdout), refused.stdout
    done = subprocess.run([*base, "--tls", "--tls-verify", "--tls-ca-path", str(certs.ca),
                           "--header", f"Subject: {marker}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<~  235 " in done.stdout, done.stdout
    assert tls_received(mail_with(daemon.maildir, marker))["protocol"] == b"ESMTPSA"
    assert not [m for m in helpers.delivered(daemon.maildir) if f"{marker}-plain".encode() in m]


# -- protocol versions, renegotiation, compression ---------------------------------------


def s_client(daemon: Daemon, certs: Certs, mode: str, *args: str, data: bytes = b"QUIT\r\n"
             ) -> subprocess.CompletedProcess[bytes]:
    starttls = ["-starttls", "smtp"] if mode == "starttls" else []
    return subprocess.run([helpers.tool("openssl"), "s_client", "-connect", f"127.0.0.1:{daemon.port}",
                           *starttls, "-CAfile", str(certs.ca), "-ign_eof", "-nocommands", *args],
                          input=data, capture_output=True, timeout=WAIT)


def served_serial(daemon: Daemon, mode: str, certs: Certs) -> int:
    done = s_client(daemon, certs, mode)
    assert b"221 " in done.stdout, done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    return serial_in_output(done.stdout)


@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
@pytest.mark.parametrize("mode", MODES)
def test_s_client_tls_1_2_and_1_3_succeed(daemons: Daemons, certs: Certs, mode: str, version: str) -> None:
    done = s_client(daemons.pick(mode), certs, mode, f"-{version}")
    out = done.stdout.decode(errors="replace")
    name = {"tls1_2": "TLSv1.2", "tls1_3": "TLSv1.3"}[version]
    assert re.search(rf"^\s+Protocol\s+: {re.escape(name)}$", out, re.M), out
    assert "Verify return code: 0 (ok)" in out, out
    assert re.search(r"^Compression: NONE$", out, re.M), out
    assert f"221 2.0.0 {HOST} closing connection" in out, out


@pytest.mark.parametrize("mode", MODES)
def test_s_client_tls_1_1_is_refused(daemons: Daemons, certs: Certs, mode: str) -> None:
    # SECLEVEL=0: the client itself is willing, so the refusal is the server's.
    done = s_client(daemons.pick(mode), certs, mode, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode != 0, out
    assert "alert protocol version" in out, out
    assert "Cipher is (NONE)" in out and "ESMTP msmtpd" not in out.split("CONNECTED", 1)[1], out


def test_python_client_limited_to_tls_1_1_is_refused(daemons: Daemons, certs: Certs) -> None:
    context = certs.context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT@SECLEVEL=0")
    sock = socket.create_connection(("127.0.0.1", daemons.implicit.port), timeout=WAIT)
    with pytest.raises(ssl.SSLError) as refused:
        context.wrap_socket(sock, server_hostname="localhost")
    sock.close()
    assert "PROTOCOL_VERSION" in str(refused.value).upper().replace(" ", "_"), refused.value


def test_renegotiation_is_refused(daemons: Daemons, certs: Certs) -> None:
    """``R`` on s_client's standard input asks for a TLS 1.2 renegotiation."""
    daemon = daemons.implicit
    process = subprocess.Popen([helpers.tool("openssl"), "s_client", "-connect", f"127.0.0.1:{daemon.port}",
                                "-tls1_2", "-CAfile", str(certs.ca), "-msg"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdin is not None and process.stdout is not None
    output = bytearray()
    reader = threading.Thread(target=read_all, args=(process.stdout, output), daemon=True)
    reader.start()
    try:
        assert helpers.wait_until(lambda: b"ESMTP msmtpd\r\n" in output or b"ESMTP msmtpd\n" in output,
                                  WAIT), bytes(output)
        process.stdin.write(b"R\n")
        process.stdin.flush()
        try:
            process.wait(WAIT)  # refused: the client gives up
        except subprocess.TimeoutExpired:
            pass
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        reader.join(WAIT)
        process.stdin.close()
        process.stdout.close()
    text = bytes(output).decode(errors="replace")
    assert "RENEGOTIATING" in text, text
    # One handshake, then a ClientHello that got no ServerHello.
    hellos = re.findall(r"^(<<<|>>>) TLS 1\.2, Handshake \[.*\], (Client|Server)Hello$", text, re.M)
    assert hellos == [(">>>", "Client"), ("<<<", "Server"), (">>>", "Client")], text
    assert "no_renegotiation" in text or "no renegotiation" in text, text
    served_next(daemon, certs, "implicit")


def read_all(stream: Any, into: bytearray) -> None:
    while True:
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            return
        into += chunk


# -- Received: header and log ----------------------------------------------------------------


@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2], ids=["best", "tls1_2"])
@pytest.mark.parametrize("mode", MODES)
def test_received_header_and_log_name_the_tls_session(daemons: Daemons, certs: Certs, marker: str,
                                                      mode: str, maximum: Optional[ssl.TLSVersion]) -> None:
    daemon = daemons.pick(mode)
    context = certs.context(maximum)
    smtp: smtplib.SMTP
    if mode == "implicit":
        smtp = smtplib.SMTP_SSL("127.0.0.1", daemon.port, local_hostname="client.example",
                                context=context, timeout=WAIT)
    else:
        smtp = smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="client.example", timeout=WAIT)
        smtp.starttls(context=context)
    with smtp:
        sock = smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        version, cipher = sock.version(), sock.cipher()
        assert version is not None and cipher is not None
        assert smtp.sendmail("alice@example.org", ["bob@example.org"], message(marker)) == {}
    if maximum is not None:
        assert version == "TLSv1.2"
    match = tls_received(mail_with(daemon.maildir, marker))
    assert match["protocol"] == b"ESMTPS" and match["helo"] == b"client.example"
    assert match["version"].decode() == version and match["cipher"].decode() == cipher[0], match[0]
    if mode == "implicit":  # one line for the session's start and its TLS
        daemon.wait_log(f"session from 127.0.0.1 over {version} with {cipher[0]}")
    else:
        daemon.wait_log(f"TLS started: {version} with {cipher[0]}")


def test_received_header_says_esmtpsa_after_auth(daemons: Daemons, certs: Certs, marker: str) -> None:
    daemon = daemons.implicit_auth
    with smtplib.SMTP_SSL("127.0.0.1", daemon.port, context=certs.context(), timeout=WAIT) as smtp:
        assert smtp.login(USER, PASSWORD)[0] == 235
        assert smtp.sendmail("alice@example.org", ["bob@example.org"], message(marker)) == {}
    top = received_headers(mail_with(daemon.maildir, marker))[0]
    assert re.search(rb" with ESMTPSA \(TLSv1\.3 with TLS_[A-Z0-9_]+\);", top), top


# -- SIGHUP reloads the certificate ------------------------------------------------------------


def test_sighup_reloads_the_certificate_and_keeps_it_when_broken(certs: Certs, tmp_path: Path,
                                                                  marker: str) -> None:
    cert, key = tmp_path / "live-cert.pem", tmp_path / "live-key.pem"
    shutil.copy(certs.cert, cert)
    shutil.copy(certs.key, key)
    daemon = Daemon(tmp_path, "reload", [f"--tls-cert={cert}", f"--tls-key={key}"], max_sessions=2)
    try:
        run_daemons(daemon)
        assert served_serial(daemon, "starttls", certs) == certs.serial
        old = smtplib.SMTP("127.0.0.1", daemon.port, timeout=WAIT)
        with old:
            old.starttls(context=certs.context())
            old.ehlo()
            # Renewed: new files, then SIGHUP.
            shutil.copy(certs.second_cert, cert)
            shutil.copy(certs.second_key, key)
            os.kill(daemon.pid, signal.SIGHUP)
            daemon.wait_log("TLS certificate reloaded")
            assert served_serial(daemon, "starttls", certs) == certs.second_serial
            # The session that was in TLS already goes on.
            assert old.sendmail("alice@example.org", ["bob@example.org"], message(marker)) == {}
        assert tls_received(mail_with(daemon.maildir, marker))["protocol"] == b"ESMTPS"
        # A broken certificate: logged, and the renewed one stays.
        cert.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        os.kill(daemon.pid, signal.SIGHUP)
        daemon.wait_log("keeping the old TLS certificate")
        assert served_serial(daemon, "starttls", certs) == certs.second_serial
        key.write_text("not a key\n")  # and a broken key
        shutil.copy(certs.second_cert, cert)
        os.kill(daemon.pid, signal.SIGHUP)
        daemon.wait_log("keeping the old TLS certificate", 2)
        assert served_serial(daemon, "starttls", certs) == certs.second_serial
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=WAIT) as smtp:
            smtp.starttls(context=certs.context())
            assert smtp.sendmail("alice@example.org", ["bob@example.org"], message(marker + "-after")) == {}
        mail_with(daemon.maildir, marker + "-after")
        assert daemon.server.process is not None and daemon.server.process.poll() is None
    finally:
        stop_daemons([daemon])


# -- --inetd -------------------------------------------------------------------------------------


def test_inetd_on_a_pipe_answers_starttls_454(certs: Certs) -> None:
    done = helpers.run_inetd([f"--tls-cert={certs.combined}", "--command=cat >/dev/null; :"],
                             b"EHLO client.example\r\nSTARTTLS\r\nNOOP\r\nQUIT\r\n")
    out = done.stdout
    assert done.returncode == 0, done.stderr
    ehlo = out.split(b"\r\n250 ", 1)[0]
    assert b"250-PIPELINING" in ehlo and b"STARTTLS" not in ehlo, out
    assert re.search(rb"\r\n454 4\.7\.0 [^\r\n]*\r\n250 [^\r\n]*\r\n221 ", out), out


@pytest.mark.parametrize("mode", MODES)
def test_inetd_on_a_socketpair_delivers_over_tls(certs: Certs, tmp_path: Path, marker: str,
                                                 mode: str) -> None:
    maildir = tmp_path / "Maildir"
    extra = ["--tls-implicit"] if mode == "implicit" else []
    ours, theirs = socket.socketpair()
    with ours:
        try:
            process = subprocess.Popen(
                [helpers.program("msmtpd"), "--inetd", f"--tls-cert={certs.cert}", f"--tls-key={certs.key}",
                 *extra, f"--command={helpers.maildir_command(maildir)}"],
                stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=subprocess.PIPE)
        finally:
            theirs.close()
        try:
            client = Client(sock=ours)
            if mode == "implicit":
                client.tls(certs.context())
                assert client.reply().startswith(b"220 ")
            else:
                assert client.reply().startswith(b"220 ")
                assert "STARTTLS" in ehlo_keywords(client.command(b"EHLO client.example\r\n"))
                client.starttls(certs.context())
            send_one(client, "alice@example.org", "bob@example.org", marker)
            assert client.command(b"QUIT\r\n").startswith(b"221 ")
            assert client.rest() == b""
        finally:
            status, err = finish(process)
    assert status == 0, err
    mail = mail_with(maildir, marker)
    assert re.search(rb"\nReceived: from client\.example \(uid \d+\)\n\tby \S+ \(msmtpd\) with ESMTPS "
                     rb"\(TLSv1\.3 with ", mail), mail


@pytest.mark.parametrize("mode", MODES)
def test_inetd_on_a_tcp_connection_delivers_over_tls(certs: Certs, tmp_path: Path, marker: str,
                                                     mode: str) -> None:
    maildir = tmp_path / "Maildir"
    extra = ["--tls-implicit"] if mode == "implicit" else []
    inetd = TinyInetd([f"--tls-cert={certs.combined}", *extra,
                       f"--command={helpers.maildir_command(maildir)}"])
    try:
        smtp = smtp_client(inetd.port, certs, mode)
        with smtp:
            assert smtp.sendmail("alice@example.org", ["bob@example.org"], message(marker)) == {}
    finally:
        results = inetd.close()
    assert [status for status, _ in results] == [0], results
    match = tls_received(mail_with(maildir, marker))
    assert match["peer"] == b"127.0.0.1" and match["protocol"] == b"ESMTPS"


def smtp_client(port: int, certs: Certs, mode: str) -> smtplib.SMTP:
    """smtplib in TLS: SMTP_SSL, or SMTP and starttls()."""
    if mode == "implicit":
        return smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.example",
                                context=certs.context(), timeout=WAIT)
    smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=WAIT)
    smtp.starttls(context=certs.context())
    return smtp


# -- the pipe command inherits no socket -----------------------------------------------------------


@pytest.mark.parametrize("server", ["daemon", "inetd"])
@pytest.mark.parametrize("mode", MODES)
def test_pipe_command_inherits_no_socket(certs: Certs, tmp_path: Path, mode: str, server: str) -> None:
    fds = tmp_path / "fds"
    command = f"ls -l /proc/self/fd > {fds}; cat >/dev/null; :"
    args = [f"--tls-cert={certs.combined}", *(["--tls-implicit"] if mode == "implicit" else [])]
    if server == "daemon":
        daemon = Daemon(tmp_path, "fds", args, command=command, max_sessions=1)
        try:
            run_daemons(daemon)
            with smtp_client(daemon.port, certs, mode) as smtp:
                assert smtp.sendmail("alice@example.org", ["bob@example.org"], message("fds")) == {}
        finally:
            stop_daemons([daemon])
    else:
        inetd = TinyInetd([*args, f"--command={command}"])
        try:
            with smtp_client(inetd.port, certs, mode) as smtp:
                assert smtp.sendmail("alice@example.org", ["bob@example.org"], message("fds")) == {}
        finally:
            results = inetd.close()
        assert [status for status, _ in results] == [0], results
    listing = fds.read_text()
    assert re.search(r"^\S+ .* 0 -> ", listing, re.M), listing
    assert "socket:" not in listing, listing


# -- real clients ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_swaks_delivers_over_tls_with_auth(daemons: Daemons, certs: Certs, marker: str, mode: str) -> None:
    swaks = helpers.tool("swaks")
    daemon = daemons.pick(mode, auth=True)
    tls = ["--tls"] if mode == "starttls" else ["--tls-on-connect"]
    done = subprocess.run([swaks, "--server", f"127.0.0.1:{daemon.port}", *tls, "--tls-verify",
                           "--tls-ca-path", str(certs.ca), "--auth", "PLAIN", "--auth-user", USER,
                           "--auth-password", PASSWORD, "--from", "alice@example.org",
                           "--to", "bob@example.org",
                           "--header", f"Subject: {marker}", "--body", "sent by swaks", "--timeout", "10"],
                          capture_output=True, text=True, timeout=WAIT * 2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "=== TLS started with cipher TLSv1.3" in done.stdout, done.stdout
    assert "<~  235 " in done.stdout, done.stdout
    mail = mail_with(daemon.maildir, marker)
    assert tls_received(mail)["protocol"] == b"ESMTPSA"
    assert b"\n\nsent by swaks\n" in mail


@pytest.mark.parametrize("mode", MODES)
def test_openssl_s_client_sends_a_mail(daemons: Daemons, certs: Certs, marker: str, mode: str) -> None:
    daemon = daemons.pick(mode)
    conversation = (f"EHLO client.example\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
                    f"DATA\r\nSubject: {marker}\r\n\r\nsent by s_client\r\n.\r\nQUIT\r\n").encode()
    done = s_client(daemon, certs, mode, "-verify_return_error", data=conversation)
    out = done.stdout.decode(errors="replace")
    assert "250 2.0.0 OK" in out and f"221 2.0.0 {HOST}" in out, out + done.stderr.decode(errors="replace")
    mail = mail_with(daemon.maildir, marker)
    assert tls_received(mail)["protocol"] == b"ESMTPS"
    assert b"\n\nsent by s_client\n" in mail


@pytest.mark.parametrize("mode", MODES)
def test_curl_delivers_over_tls_with_auth(daemons: Daemons, certs: Certs, tmp_path: Path,
                                          marker: str, mode: str) -> None:
    curl = helpers.tool("curl")
    daemon = daemons.pick(mode, auth=True)
    upload = tmp_path / "mail.eml"
    upload.write_text(message(marker) + "sent by curl\r\n", newline="")
    url = (["--ssl-reqd", f"smtp://127.0.0.1:{daemon.port}"] if mode == "starttls"
           else [f"smtps://127.0.0.1:{daemon.port}"])
    done = subprocess.run([curl, "-sS", "--max-time", "10", *url, "--cacert", str(certs.ca),
                           "--user", f"{USER}:{PASSWORD}", "--mail-from", "alice@example.org",
                           "--mail-rcpt", "bob@example.org", "--upload-file", str(upload)],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    mail = mail_with(daemon.maildir, marker)
    assert tls_received(mail)["protocol"] == b"ESMTPSA"
    assert b"\nsent by curl\n" in mail


def test_curl_ssl_reqd_delivers_without_auth(daemons: Daemons, certs: Certs, tmp_path: Path,
                                             marker: str) -> None:
    curl = helpers.tool("curl")
    daemon = daemons.starttls
    upload = tmp_path / "mail.eml"
    upload.write_text(message(marker), newline="")
    done = subprocess.run([curl, "-sS", "--max-time", "10", "--ssl-reqd", f"smtp://127.0.0.1:{daemon.port}",
                           "--cacert", str(certs.ca), "--mail-from", "alice@example.org",
                           "--mail-rcpt", "bob@example.org", "--upload-file", str(upload)],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert tls_received(mail_with(daemon.maildir, marker))["protocol"] == b"ESMTPS"


@pytest.mark.parametrize("mode", MODES)
def test_msmtp_delivers_over_tls_with_auth(daemons: Daemons, certs: Certs, tmp_path: Path,
                                           marker: str, mode: str) -> None:
    msmtp = helpers.tool("msmtp")
    daemon = daemons.pick(mode, auth=True)
    config = tmp_path / "msmtprc"
    config.write_text("defaults\n"
                      "account default\n"
                      "host 127.0.0.1\n"
                      f"port {daemon.port}\n"
                      "from alice@example.org\n"
                      "tls on\n"
                      f"tls_starttls {'on' if mode == 'starttls' else 'off'}\n"
                      f"tls_trust_file {certs.ca}\n"
                      "auth on\n"
                      f"user {USER}\n"
                      f"password {PASSWORD}\n")
    config.chmod(0o600)
    done = subprocess.run([msmtp, "-C", str(config), "bob@example.org"],
                          input=f"Subject: {marker}\n\nsent by msmtp\n".encode(), capture_output=True,
                          timeout=WAIT)
    assert done.returncode == 0, done.stderr
    mail = mail_with(daemon.maildir, marker)
    assert mail.startswith(b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.org\n")
    assert tls_received(mail)["protocol"] == b"ESMTPSA"
    assert mail.endswith(b"\n\nsent by msmtp\n")


@pytest.mark.parametrize("auth", [False, True], ids=["anonymous", "login"])
@pytest.mark.parametrize("mode", MODES)
def test_smtplib_delivers_over_tls(daemons: Daemons, certs: Certs, marker: str, mode: str,
                                   auth: bool) -> None:
    daemon = daemons.pick(mode, auth=auth)
    with smtp_client(daemon.port, certs, mode) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        assert smtp.has_extn("auth") == auth
        if auth:
            assert smtp.login(USER, PASSWORD)[0] == 235
        assert smtp.sendmail("alice@example.org", ["bob@example.org", "carol@example.org"],
                             message(marker)) == {}
    mail = mail_with(daemon.maildir, marker)
    assert mail.startswith(b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.org\n"
                           b"Delivered-To: carol@example.org\nReceived: ")
    assert tls_received(mail)["protocol"] == (b"ESMTPSA" if auth else b"ESMTPS")


# -- xinetd ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_xinetd_delivers_over_tls(certs: Certs, tmp_path: Path, marker: str, mode: str) -> None:
    xinetd = helpers.tool("xinetd")
    assert not re.search(r"\s", str(tmp_path))  # server_args is split at white space
    port = helpers.free_port()
    maildir = tmp_path / "Maildir"
    deliver = tmp_path / "deliver"
    deliver.write_text(f"#!/bin/sh\nexec {helpers.program('msmtpd-maildir')} {maildir} "
                       "-f \"$MSMTPD_SENDER\" -- \"$@\"\n")
    deliver.chmod(0o755)
    tls_args = f"--tls-cert={certs.cert} --tls-key={certs.key}"
    if mode == "implicit":
        tls_args += " --tls-implicit"
    user = pwd.getpwuid(os.getuid()).pw_name
    replacements = {
        "port": f"{port}",
        "server": helpers.program("msmtpd"),
        "user": user,
    }
    services = tmp_path / "xinetd.d"
    services.mkdir()
    changed = 0
    lines = []
    for line in (ETC / "xinetd.d" / "msmtpd").read_text().splitlines():
        match = re.match(r"^(\s*)(port|server|user|server_args)(\s*=\s*)(.*)$", line)
        if match:
            changed += 1
            value = (f"{match[4]} --command={deliver} {tls_args}" if match[2] == "server_args"
                     else replacements[match[2]])
            line = f"{match[1]}{match[2]}{match[3]}{value}"
        lines.append(line)
    assert changed == 4, lines
    (services / "msmtpd").write_text("\n".join(lines) + "\n")
    server = start_xinetd(xinetd, tmp_path, services)
    try:
        helpers.wait_for_port(port, process=server)
        with smtp_client(port, certs, mode) as smtp:
            assert smtp.sendmail("alice@example.org", ["bob@example.org"], message(marker)) == {}
        mail = mail_with(maildir, marker)
        assert mail.startswith(b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.org\n")
        match = tls_received(mail)
        assert match["peer"] == b"127.0.0.1" and match["protocol"] == b"ESMTPS", match[0]
        assert helpers.wait_until(lambda: not helpers.children(server.pid), WAIT)
        assert server.poll() is None
    finally:
        stop_xinetd(server)
