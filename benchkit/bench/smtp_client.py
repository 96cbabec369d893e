"""An SMTP client light enough not to be the bottleneck: the sessions of
loads 1 to 3 and of row 8, run in a pool of client processes, and the
mails they send."""

from __future__ import annotations

import functools
import multiprocessing.pool
import socket
import ssl
import time
from typing import List, Optional, Tuple

TLS_HOST = "localhost"  # the benchmark certificate's name, checked by the client


def _expect(sock: socket.socket, buffer: bytearray) -> bytes:
    """Read one complete (possibly multi-line) reply."""
    while True:
        end = buffer.find(b"\r\n")
        while end >= 0:
            line = bytes(buffer[: end + 2])
            if len(line) >= 4 and line[3:4] == b" ":
                del buffer[: end + 2]
                return line
            del buffer[: end + 2]
            end = buffer.find(b"\r\n")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk


@functools.cache
def _client_context(cafile: str) -> ssl.SSLContext:
    """The client's TLS context, made once per client process: it trusts
    only the benchmark's certificate and checks the host name, as a real
    client would."""
    return ssl.create_default_context(cafile=cafile)


def _session(port: int, mails: int, body: bytes, cafile: Optional[str] = None) -> Tuple[List[float], float]:
    """One session sending ``mails`` mails, after STARTTLS when ``cafile``
    (the certificate to trust) is given.  Returns each mail's latency (the
    first counted from the connect) and the whole session's, from the
    connect to QUIT's reply."""
    opened = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        buffer = bytearray()
        _expect(sock, buffer)
        sock.sendall(b"EHLO bench\r\n")
        _expect(sock, buffer)
        if cafile is None:
            latencies, ended = _mails(sock, buffer, mails, body, opened)
        else:
            sock.sendall(b"STARTTLS\r\n")
            reply = _expect(sock, buffer)
            if not reply.startswith(b"220") or buffer:
                raise RuntimeError(f"STARTTLS refused: {reply!r}")
            # a full handshake every session: no session is offered for resumption
            with _client_context(cafile).wrap_socket(sock, server_hostname=TLS_HOST) as tls:
                tls.sendall(b"EHLO bench\r\n")
                _expect(tls, buffer)
                latencies, ended = _mails(tls, buffer, mails, body, opened)
    return latencies, ended - opened


def _mails(sock: socket.socket, buffer: bytearray, mails: int, body: bytes,
           started: float) -> Tuple[List[float], float]:
    """The mails of one session, then QUIT: each mail's latency, and the
    clock when QUIT was answered."""
    latencies = []
    for _ in range(mails):
        for command in (b"MAIL FROM:<bench@example.org>\r\n", b"RCPT TO:<sink@example.org>\r\n",
                        b"DATA\r\n"):
            sock.sendall(command)
            _expect(sock, buffer)
        sock.sendall(body)
        reply = _expect(sock, buffer)
        if not reply.startswith(b"250"):
            raise RuntimeError(f"mail refused: {reply!r}")
        now = time.perf_counter()
        latencies.append(now - started)
        started = now
    sock.sendall(b"QUIT\r\n")
    _expect(sock, buffer)
    return latencies, time.perf_counter()


ClientResult = Tuple[List[float], List[float], float]


def _client(args: Tuple[int, int, int, bytes, Optional[str]]) -> ClientResult:
    """One client process's sessions, one after another: every mail's
    latency, every session's, and the CPU seconds the client used."""
    port, sessions, mails, body, cafile = args
    latencies: List[float] = []
    whole: List[float] = []
    cpu = time.process_time()
    for _ in range(sessions):
        mail_times, session_time = _session(port, mails, body, cafile)
        latencies.extend(mail_times)
        whole.append(session_time)
    return latencies, whole, time.process_time() - cpu


def run_clients(pool: multiprocessing.pool.Pool, port: int, concurrency: int, sessions: int, mails: int,
                body: bytes, cafile: Optional[str]) -> Tuple[List[ClientResult], float]:
    """``sessions`` sessions of ``mails`` mails each, ``concurrency`` at
    once, shared out among as many client processes of ``pool``: each
    client's result (see _client), and the seconds they all took."""
    per_client = max(1, sessions // concurrency)
    started = time.perf_counter()
    results = pool.map(_client, [(port, per_client, mails, body, cafile)] * concurrency)
    return results, time.perf_counter() - started


def message(size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    head = b"Subject: benchmark\r\n\r\n"
    return head + line * max(1, (size - len(head)) // len(line)) + b".\r\n"


def tls_probe(port: int, cafile: str) -> str:
    """One untimed STARTTLS session's protocol and cipher, as the client saw them."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        buffer = bytearray()
        _expect(sock, buffer)
        sock.sendall(b"EHLO bench\r\nSTARTTLS\r\n")  # an EHLO reply, then STARTTLS's
        _expect(sock, buffer)
        reply = _expect(sock, buffer)
        if not reply.startswith(b"220"):
            raise RuntimeError(f"STARTTLS refused: {reply!r}")
        with _client_context(cafile).wrap_socket(sock, server_hostname=TLS_HOST) as tls:
            cipher = tls.cipher()
            described = f"{tls.version()} with {cipher[0] if cipher else 'unknown cipher'}"
            tls.sendall(b"QUIT\r\n")
            _expect(tls, buffer)
    return described
