"""One SMTP session in lock step, and the registry of open sockets that
lets the deadline cut them all at once."""

from __future__ import annotations

import socket
import threading
import time

from benchkit.load.mails import ACKED, REFUSED, SENDER, UNKNOWN, Attempt, Mail


class Dropped(Exception):
    """The connection is gone (closed, reset, timed out, or talking nonsense)."""


class Client:
    """One SMTP session in lock step.  Every socket operation has a timeout;
    any failure of the connection is raised as ``Dropped``.  (A hand-written
    client rather than smtplib, so the tool knows exactly whether the final
    dot left before the connection broke.)"""

    def __init__(self, host: str, port: int, timeout: float, registry: SocketRegistry) -> None:
        self.registry = registry
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise Dropped(f"connect: {exc}") from None
        registry.add(self.sock)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.registry.discard(self.sock)
        try:
            self.reader.close()
            self.sock.close()
        except OSError:
            pass

    def reply(self) -> int:
        code = b""
        while True:
            try:
                line = self.reader.readline(4096)
            except (OSError, ValueError) as exc:
                raise Dropped(f"read: {exc}") from None
            if not line:
                raise Dropped("connection closed")
            if len(line) < 4 or not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                raise Dropped(f"not an SMTP reply: {line[:60]!r}")
            if code and line[:3] != code:
                raise Dropped("reply lines with different codes")
            code = line[:3]
            if line[3:4] != b"-":
                return int(code)

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise Dropped(f"write: {exc}") from None

    def command(self, line: str) -> int:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def transaction(self, mail: Mail, attempt: Attempt, payload: bytes) -> None:
        """Send one mail; fills in ``attempt``.  Raises ``Dropped`` after
        recording the outcome when the connection is no longer usable."""
        started = time.monotonic()
        try:
            for line in (f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{mail.recipient}>", "DATA"):
                code = self.command(line)
                if code != (354 if line == "DATA" else 250):
                    attempt.outcome, attempt.code = REFUSED, code
                    return
            self.send(payload)
            attempt.outcome = UNKNOWN  # the final dot is out
            attempt.code = self.reply()
            attempt.outcome = ACKED if attempt.code == 250 else REFUSED
        finally:
            attempt.seconds = time.monotonic() - started


class SocketRegistry:
    """The open client sockets, so the deadline can cut them all at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.closed = False

    def add(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.add(sock)
            closed = self.closed
        if closed:
            self._cut(sock)

    def discard(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.discard(sock)

    def cut_all(self) -> None:
        with self.lock:
            self.closed = True
            sockets = list(self.sockets)
        for sock in sockets:
            self._cut(sock)

    @staticmethod
    def _cut(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
