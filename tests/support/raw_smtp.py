"""A raw SMTP client on a TCP socket for the system tests that attack the
server byte by byte: it reads whole replies, can tell whether the server
has said anything yet, and reads to the end of the connection."""

from __future__ import annotations

import select
import socket
import time
from typing import Optional

WAIT = 15.0  # upper bound for any single wait that is not about the behaviour itself


class Client:
    """A raw SMTP client on a TCP socket that reads whole replies."""

    def __init__(self, port: int = 0, sock: Optional[socket.socket] = None) -> None:
        """Connects to ``port`` on 127.0.0.1, or talks on ``sock``."""
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock = sock
        self.buffer = b""
        self.eof = False

    def _fill(self, deadline: float) -> bool:
        """More bytes into the buffer; False at end of input (or a reset)."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no reply in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        except socket.timeout:
            raise TimeoutError("no reply in time") from None
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def reply_or_eof(self, timeout: float = WAIT) -> bytes:
        """The next complete reply (all its lines), or b"" when the
        connection ended first; raises TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        start = 0
        while True:
            end = self.buffer.find(b"\r\n", start)
            while end >= 0:
                line = self.buffer[start:end + 2]
                if line[3:4] != b"-":
                    reply, self.buffer = self.buffer[:end + 2], self.buffer[end + 2:]
                    return reply
                start = end + 2
                end = self.buffer.find(b"\r\n", start)
            if not self._fill(deadline):
                return b""

    def reply(self, timeout: float = WAIT) -> bytes:
        reply = self.reply_or_eof(timeout)
        assert reply, f"the connection ended instead of a reply (left over: {self.buffer!r})"
        return reply

    def send(self, data: bytes) -> None:
        self.sock.settimeout(WAIT)
        self.sock.sendall(data)

    def command(self, data: bytes, timeout: float = WAIT) -> bytes:
        self.send(data)
        return self.reply(timeout)

    def readable(self, timeout: float) -> bool:
        """True when a reply (or the end) has arrived within ``timeout``."""
        if self.buffer or self.eof:
            return True
        ready, _, _ = select.select([self.sock], [], [], timeout)
        return bool(ready)

    def rest_until_eof(self, timeout: float) -> bytes:
        """Everything until the server closes; raises TimeoutError if it does not."""
        deadline = time.monotonic() + timeout
        while self._fill(deadline):
            pass
        rest, self.buffer = self.buffer, b""
        return rest

    def close(self) -> None:
        self.sock.close()


def start_session(port: int, through_rcpt: bool = False) -> Client:
    client = Client(port)
    assert client.reply().startswith(b"220 ")
    assert client.command(b"EHLO client.example\r\n").startswith(b"250")
    if through_rcpt:
        assert client.command(b"MAIL FROM:<a@example.org>\r\n").startswith(b"250")
        assert client.command(b"RCPT TO:<b@example.org>\r\n").startswith(b"250")
    return client

