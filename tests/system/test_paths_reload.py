"""Relative paths and --daemon (issue 17, item 11).

A daemon works in /, so a relative --tls-cert, --tls-key or --auth-file
could not be re-read on SIGHUP: a renewed certificate or a removed user
was never picked up.  Every path option is now made absolute as it is
read; the test starts a real daemon from a working directory with relative
paths only, changes the files, sends SIGHUP and looks with openssl
s_client and AUTH."""

from __future__ import annotations

import base64
import os
import signal
import smtplib
import subprocess
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest
import trustme

from tests import helpers

WAIT = 15.0
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}


class Daemon(NamedTuple):
    directory: Path
    port: int
    pid: int

    def log(self) -> str:
        path = self.directory / "msmtpd.log"
        return path.read_text() if path.exists() else ""


def write_pair(directory: Path, ca: trustme.CA) -> str:
    """A new certificate and key as cert.pem and key.pem; its serial as openssl prints it."""
    issued = ca.issue_cert("localhost", "127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(directory / "cert.pem.new"))
    issued.private_key_pem.write_to_path(str(directory / "key.pem.new"))
    os.replace(directory / "key.pem.new", directory / "key.pem")
    os.replace(directory / "cert.pem.new", directory / "cert.pem")
    return serial_of(subprocess.run([helpers.tool("openssl"), "x509", "-noout", "-serial",
                                     "-in", str(directory / "cert.pem")],
                                    capture_output=True, text=True, timeout=WAIT).stdout)


def serial_of(text: str) -> str:
    line = next(x for x in text.splitlines() if x.startswith("serial="))
    return line.partition("=")[2].strip()


def served_serial(port: int) -> str:
    """The serial of the certificate that STARTTLS presents, by openssl s_client."""
    client = subprocess.run([helpers.tool("openssl"), "s_client", "-starttls", "smtp",
                             "-connect", f"127.0.0.1:{port}", "-servername", "localhost"],
                            input="", capture_output=True, text=True, timeout=WAIT)
    shown = subprocess.run([helpers.tool("openssl"), "x509", "-noout", "-serial"],
                           input=client.stdout, capture_output=True, text=True, timeout=WAIT)
    assert shown.returncode == 0, client.stdout + client.stderr
    return serial_of(shown.stdout)


def htpasswd(users: Path, *args: str) -> None:
    done = subprocess.run([helpers.tool("htpasswd"), *args], cwd=users.parent,
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr


def can_log_in(port: int, user: str) -> bool:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=WAIT) as smtp:
        smtp.ehlo()
        token = base64.b64encode(f"\0{user}\0{PASSWORDS[user]}".encode()).decode()
        return smtp.docmd("AUTH", f"PLAIN {token}")[0] == 235


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """msmtpd --daemon started in ``tmp_path`` with relative paths only."""
    htpasswd(tmp_path / "users", "-c", "-b", "-B", "users", "alice", PASSWORDS["alice"])
    htpasswd(tmp_path / "users", "-b", "-B", "users", "bob", PASSWORDS["bob"])
    port = helpers.free_port()
    args = [helpers.program("msmtpd"), "--daemon", f"--port={port}", "--interface=127.0.0.1",
            "--tls-cert=cert.pem", "--tls-key=key.pem", "--auth-file=users",
            "--log=msmtpd.log", "--pidfile=msmtpd.pid", "--max-sessions=2",
            "--command=cat >/dev/null; :"]
    ca = trustme.CA()
    write_pair(tmp_path, ca)
    started = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=WAIT)
    assert started.returncode == 0, started.stderr
    pid = int((tmp_path / "msmtpd.pid").read_text())
    try:
        yield Daemon(tmp_path, port, pid)
    finally:
        os.kill(pid, signal.SIGTERM)
        helpers.wait_until(lambda: not Path(f"/proc/{pid}").exists(), WAIT)


def test_sighup_rereads_a_relative_certificate_and_users_file(daemon: Daemon) -> None:
    before = served_serial(daemon.port)
    assert can_log_in(daemon.port, "bob")
    renewed = write_pair(daemon.directory, trustme.CA())
    assert renewed != before
    htpasswd(daemon.directory / "users", "-D", "users", "bob")
    os.kill(daemon.pid, signal.SIGHUP)
    assert helpers.wait_until(lambda: "renewing the workers" in daemon.log()
                              or "keeping the old" in daemon.log(), WAIT), daemon.log()
    assert "keeping the old" not in daemon.log(), daemon.log()
    assert f"TLS certificate reloaded from {daemon.directory / 'cert.pem'}" in daemon.log()
    assert f"1 users reloaded from {daemon.directory / 'users'}" in daemon.log()
    # The old workers finish their sessions; new ones serve the new files.
    deadline = time.monotonic() + WAIT
    while served_serial(daemon.port) != renewed and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served_serial(daemon.port) == renewed
    assert not can_log_in(daemon.port, "bob")
    assert can_log_in(daemon.port, "alice")
