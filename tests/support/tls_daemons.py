"""Real msmtpd masters for the system tests, each with its own log file and
Maildir, and a test CA with the server certificates they present."""

from __future__ import annotations

import ssl
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

import trustme

from tests import helpers
from tests.helpers import WAIT
from tests.support.netns import HOST_ADDRESS

NAMES = ("localhost", "127.0.0.1", HOST_ADDRESS)



def serial_of(path: Path) -> int:
    """The serial number of the (first) certificate in ``path``."""
    done = subprocess.run([helpers.tool("openssl"), "x509", "-noout", "-serial", "-in", str(path)],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().split("=", 1)[1], 16)



class Certs:
    """A test CA and two server certificates it issued (the second one is the
    renewal), as the files msmtpd and the clients read."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        ca = trustme.CA()
        self.ca = self.write("ca.pem", ca.cert_pem.bytes())
        first = ca.issue_cert(*NAMES, organization_unit_name="msmtpd first")
        second = ca.issue_cert(*NAMES, organization_unit_name="msmtpd renewed")
        self.combined = self.write("combined.pem", first.private_key_and_cert_chain_pem.bytes())
        self.cert = self.write("cert.pem", b"".join(p.bytes() for p in first.cert_chain_pems))
        self.key = self.write("key.pem", first.private_key_pem.bytes())
        self.second_cert = self.write("second-cert.pem",
                                       b"".join(p.bytes() for p in second.cert_chain_pems))
        self.second_key = self.write("second-key.pem", second.private_key_pem.bytes())
        self.serial = serial_of(self.cert)
        self.second_serial = serial_of(self.second_cert)
        assert self.serial != self.second_serial

    def write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path

    def encrypted_key(self, name: str, traditional: bool = False) -> Path:
        """The first key, encrypted with a passphrase."""
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        form = (serialization.PrivateFormat.TraditionalOpenSSL if traditional
                else serialization.PrivateFormat.PKCS8)
        data = key.private_bytes(serialization.Encoding.PEM, form,
                                 serialization.BestAvailableEncryption(b"passphrase"))
        return self.write(name, data)

    def context(self, maximum: Optional[ssl.TLSVersion] = None) -> ssl.SSLContext:
        """A client context that trusts the test CA (and checks the name)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if maximum is not None:
            context.maximum_version = maximum
        return context



class Daemon:
    """An msmtpd master with its own log file and Maildir."""

    def __init__(self, directory: Path, name: str, args: Sequence[str], host: str = "127.0.0.1",
                 command: Optional[str] = None, max_sessions: int = 3, timeout: float = 10.0) -> None:
        self.name = name
        self.log = directory / f"{name}.log"
        self.errors = directory / f"{name}.stderr"
        self.maildir = directory / f"{name}-Maildir"
        command = command or helpers.maildir_command(self.maildir)
        self.server = helpers.Server([f"--command={command}", f"--log={self.log}",
                                      f"--max-sessions={max_sessions}", f"--timeout={timeout:g}", *args],
                                     host=host)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def pid(self) -> int:
        return self.server.pid

    def launch(self) -> None:
        with self.errors.open("wb") as errors:
            self.server.process = subprocess.Popen(self.server.args, stdin=subprocess.DEVNULL,
                                                   stdout=subprocess.DEVNULL, stderr=errors)

    def wait_listening(self) -> None:
        """Until the master says it listens (its workers are up then); no
        probe connection, so the log holds only what the tests did."""
        process = self.server.process
        assert process is not None
        deadline = time.monotonic() + WAIT
        while "listening on" not in self.log_text():
            if process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {process.returncode}: "
                                     f"{self.errors.read_text(errors='replace')}")
            assert time.monotonic() < deadline, f"{self.name} did not report listening"
            time.sleep(0.02)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def count(self, text: str) -> int:
        return sum(text in line for line in self.log_text().splitlines())

    def wait_log(self, text: str, count: int = 1) -> None:
        assert helpers.wait_until(lambda: self.count(text) >= count, WAIT), \
            f"{self.name}: no {count} log lines with {text!r}:\n{self.log_text()}"

    def stop(self) -> int:
        if self.server.process is None:
            return 0
        return self.server.stop(timeout=WAIT)



def run_daemons(*daemons: Daemon) -> None:
    for daemon in daemons:
        daemon.launch()
    for daemon in daemons:
        daemon.wait_listening()



def stop_daemons(daemons: Sequence[Daemon]) -> None:
    statuses = {daemon.name: daemon.stop() for daemon in daemons}
    assert all(status == 0 for status in statuses.values()), statuses



def message(marker: str, sender: str = "alice@example.org", recipient: str = "bob@example.org") -> str:
    return f"From: {sender}\r\nTo: {recipient}\r\nSubject: {marker}\r\n\r\nbody of {marker}\r\n"

