"""``--metrics=ADDR:PORT``: a small HTTP/1.1 server for Prometheus, run
without blocking inside the master's ``select`` loop.

It answers one request per connection (``Connection: close``), so it
keeps no state beyond the bytes to read and to write.  It cannot hold
the master: every socket is non-blocking, a request must arrive and its
answer be taken within ``--timeout`` (the client is then dropped), a
request head is bounded, and at most MAX_CLIENTS connections are kept,
the oldest dropped for a new one.  Only ``GET /metrics`` is served:
another path gets 404, another method 405, garbage 400.
"""

from __future__ import annotations

import socket
import time
from typing import Callable, Dict, List, Optional

from msmtpd.base.logger import log

# A request head bigger than this is not Prometheus: 431 (RFC 6585 section 5).
MAX_REQUEST_HEAD = 8192
# Connections served at once; a scraper needs one.
MAX_CLIENTS = 16
# The media type of the text exposition format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRICS_PATH = "/metrics"
# Methods that read (RFC 9110 section 9.3); others are 405 with Allow.
ALLOWED = "GET, HEAD"
STATUS_TEXT = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
               431: "Request Header Fields Too Large", 500: "Internal Server Error"}


class _Client:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.request = b""
        self.answer: Optional[bytes] = None  # set once the request head is complete


def answer(head: bytes, render: Callable[[], str]) -> bytes:
    """The whole HTTP response to a request ``head`` (without its body)."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        return _response(400, "bad request\n")
    method, target = parts[0], parts[1].split("?", 1)[0]
    if target != METRICS_PATH:
        return _response(404, "not found: try /metrics\n")
    if method not in ("GET", "HEAD"):
        return _response(405, "only GET\n", extra=f"Allow: {ALLOWED}\r\n")
    try:
        exposition = render()
    except Exception as exc:  # a scrape must never bring the master down
        log.error("--metrics: cannot render the metrics: %s", exc, event="metrics_error",
                  error=str(exc))
        return _response(500, "cannot render the metrics\n")
    response = _response(200, exposition, content_type=CONTENT_TYPE)
    if method == "HEAD":
        return response.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    return response


def _response(status: int, body: str, content_type: str = "text/plain; charset=utf-8",
              extra: str = "") -> bytes:
    data = body.encode("utf-8")
    head = (f"HTTP/1.1 {status} {STATUS_TEXT[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n{extra}\r\n")
    return head.encode("ascii") + data


def bind(address: str, port: int) -> socket.socket:
    """The listening socket; OSError when it cannot be had."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.create_server((address, port), family=family, backlog=64)
    listener.setblocking(False)
    return listener


class MetricsEndpoint:
    """The listener and its clients; the master's loop asks which
    descriptors to watch (:meth:`readers`, :meth:`writers`, :meth:`wait`)
    and hands back the ready ones (:meth:`serve`)."""

    def __init__(self, listener: socket.socket, timeout: float,
                 render: Callable[[], str] = lambda: "") -> None:
        self.listener = listener
        self.timeout = timeout
        self.render = render  # the exposition, made at each scrape
        self.clients: Dict[int, _Client] = {}

    def fds(self) -> List[int]:
        """Every descriptor it holds (no child may keep them)."""
        return [self.listener.fileno(), *self.clients]

    def readers(self) -> List[int]:
        return [self.listener.fileno(), *(fd for fd, c in self.clients.items() if c.answer is None)]

    def writers(self) -> List[int]:
        return [fd for fd, client in self.clients.items() if client.answer is not None]

    def wait(self, seconds: float) -> float:
        """``seconds``, or less when a client's deadline comes first."""
        now = time.monotonic()
        return min([seconds, *(max(c.deadline - now, 0.0) for c in self.clients.values())])

    def serve(self, readable: List[int], writable: List[int]) -> None:
        for fd in readable:
            if fd == self.listener.fileno():
                self._accept()
            elif fd in self.clients:
                self._read(self.clients[fd])
        for fd in writable:
            if fd in self.clients:
                self._write(self.clients[fd])
        now = time.monotonic()
        for client in [c for c in self.clients.values() if c.deadline <= now]:
            self._drop(client)  # too slow, silent, or not reading its answer

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client)
        self.listener.close()

    def _accept(self) -> None:
        for _ in range(MAX_CLIENTS):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError:
                return  # out of descriptors: the connections wait in the backlog
            sock.setblocking(False)
            if len(self.clients) >= MAX_CLIENTS:
                self._drop(min(self.clients.values(), key=lambda c: c.deadline))
            self.clients[sock.fileno()] = _Client(sock, time.monotonic() + self.timeout)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(MAX_REQUEST_HEAD)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.request += data
        end = _head_end(client.request)
        if end is not None:
            client.answer = answer(client.request[:end], self.render)
        elif len(client.request) > MAX_REQUEST_HEAD:
            client.answer = _response(431, "request head too large\n")
        if client.answer is not None:
            self._write(client)

    def _write(self, client: _Client) -> None:
        assert client.answer is not None
        try:
            sent = client.sock.send(client.answer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.answer = client.answer[sent:]
        if not client.answer:
            try:
                client.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        self.clients.pop(client.sock.fileno(), None)
        client.sock.close()


def _head_end(data: bytes) -> Optional[int]:
    """Where the request head ends (a blank line), or None if it has not."""
    for mark in (b"\r\n\r\n", b"\n\n"):
        index = data.find(mark)
        if index >= 0:
            return index
    return None

