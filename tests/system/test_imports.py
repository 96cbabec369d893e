"""What msmtpd's processes import, as real processes: without --log an
--inetd session never imports logging, and a plain session (no AUTH, TLS,
queue, metrics or proxy) none of the modules kept for those; the master
imports nothing before it forks that its workers would carry for nothing.
The log format is in tests/unit."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from typing import Set

from tests.helpers import Server, children, wait_until

CONVERSATION = b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n"
# What only AUTH, TLS, a large message, --queue, --metrics, --log,
# --log-format=json or --proxy-protocol need (and socket and signal, whose
# enum classes the code does without: it uses _socket and _signal; typing,
# needed by mypy alone; re, which only chunks past 64 KiB use; subprocess
# and its threading and selectors: the command starts with posix_spawn).
NOT_FOR_A_PLAIN_SESSION = ("logging", "socket", "ssl", "base64", "hmac", "tempfile", "ipaddress",
                           "typing", "re", "enum", "signal", "subprocess", "threading", "selectors",
                           "json", "msmtpd.base.metrics", "msmtpd.base.json_log",
                           "msmtpd.delivery.queue_store",
                           "msmtpd.net.proxy_header", "msmtpd.net.tls_context")


def imported_modules(report: bytes) -> Set[str]:
    """The modules named by an ``-X importtime`` report."""
    return {line.rpartition(b"|")[2].strip().decode() for line in report.splitlines()
            if line.startswith(b"import time:")}


@functools.cache
def interpreter_start() -> Set[str]:
    """What this interpreter imports before any program of its own: a base
    interpreter's site-packages may hold a .pth that imports typing, re and
    more at every start (this machine's does), which msmtpd then finds
    loaded and cannot be blamed for."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"],
                          capture_output=True, timeout=30, check=True)
    return imported_modules(done.stderr)


def inetd_session_imports(stdin: object) -> Set[str]:
    """The modules a whole --inetd session with a delivery imports.  The
    session ends in os._exit (no teardown), so the interpreter's own record
    of every import it made is what tells."""
    script = ("import sys\n"
              "sys.argv = ['msmtpd', '--inetd', '--command=cat > /dev/null; :']\n"
              "from msmtpd.commands.cli import main\n"
              "main()\n")
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", script], stdin=stdin,
                          capture_output=True, timeout=30)
    assert b"250 2.0.0 OK" in done.stdout, (done.stdout, done.stderr[-500:])
    imported = imported_modules(done.stderr)
    assert "msmtpd.smtp.session" in imported, done.stderr[-500:]
    return imported - interpreter_start()


def test_without_a_log_an_inetd_session_never_imports_logging() -> None:
    """--log=none (the default) costs nothing: the logging module is not
    even imported by a whole --inetd session with a delivery."""
    with subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as feeder:
        assert feeder.stdin is not None
        feeder.stdin.write(CONVERSATION)
        feeder.stdin.close()
        imported = inetd_session_imports(feeder.stdout)
    assert "logging" not in imported
    assert set(NOT_FOR_A_PLAIN_SESSION) & imported == set()


def test_a_plain_inetd_session_on_a_socket_imports_nothing_it_does_not_use() -> None:
    """On a socket (xinetd, systemd's Accept=yes) too, a plain session loads
    none of the modules kept for the options it was not given: the
    connection layer reads and writes it through _socket."""
    read, write = socket.socketpair()
    with read, write:
        write.sendall(CONVERSATION)
        write.shutdown(socket.SHUT_WR)
        assert set(NOT_FOR_A_PLAIN_SESSION) & inetd_session_imports(read) == set()


# What the master must not import before it forks: every worker would
# carry it (dataclasses brings inspect, ast, dis and tokenize, some 2.5 MB;
# socketserver brings threading, whose at-fork hook dirties some 330 KB of
# every worker; importlib.util brings contextlib, 170 KB), and what only
# options not given here need.
NOT_FOR_A_PLAIN_DAEMON = ("dataclasses", "inspect", "ast", "socketserver", "importlib.util", "logging",
                          "ssl", "json", "tempfile", "base64", "msmtpd.base.metrics",
                          "msmtpd.delivery.queue_store")


def test_a_plain_daemon_forks_its_workers_without_modules_they_do_not_use() -> None:
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    server = Server(["--command=/bin/true"], env=env).start()
    try:
        wait_until(lambda: len(children(server.pid)) >= 2, what="the spare workers")
    finally:
        server.stop()
    assert server.process is not None and server.process.stderr is not None
    report = server.process.stderr.read()
    server.process.stderr.close()
    assert server.process.stdout is not None
    server.process.stdout.close()
    imported = imported_modules(report)
    assert "msmtpd.server.worker" in imported, report[-500:]
    assert set(NOT_FOR_A_PLAIN_DAEMON) & (imported - interpreter_start()) == set()
