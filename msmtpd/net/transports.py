"""The transports under a connection: how bytes reach and leave one
endpoint (a socket without blocking, inetd's pipes in pieces that cannot
block, TLS over a socket, or memory for tests), and what a descriptor is.

:mod:`msmtpd.net.connection` keeps the deadlines and the buffering above
them; with it, this is the only module that calls ``recv``, ``send`` or
``wrap_socket``.
"""

from __future__ import annotations

import _socket  # the socket module imports enum and selectors: some 3 ms of an --inetd session
import os
import select
import stat
import time

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    from typing import IO, Any, Callable, Dict, Optional, Tuple, Union

    Endpoint = Union[_socket.socket, int]

# No single poll waits longer than this, whatever the timeout.
MAX_POLL_SECONDS = 3600.0
# A write to a pipe or terminal of at most PIPE_BUF octets never blocks
# once poll says it is writable.
PIPE_WRITE = select.PIPE_BUF
# A lingering close (as web servers do): after our last reply and our FIN,
# what the client still sends is read and dropped until it closes too, for
# at most LINGER_SECONDS and LINGER_OCTETS, so that closing on unread input
# (an RST) cannot destroy that last reply in the client's buffers.
LINGER_SECONDS = 0.5
LINGER_OCTETS = 1 << 20
LINGER_CHUNK = 65536

# Sockets are read into this buffer, one per process (a worker serves one
# session at a time): a large read then costs no large allocation.  (mmap
# is imported at the first read from a socket, which an --inetd session on
# a pipe never makes; service.LATE_MODULES names it, so that --user's drop
# imports it while the Python installation can still be read.)
_scratch = memoryview(b"")


def _recv_buffer(size: int) -> memoryview:
    global _scratch
    if len(_scratch) < size:
        import mmap

        # Anonymous memory: a page counts only once a read has filled it,
        # so a worker that only saw small mails keeps a page or two.
        _scratch = memoryview(mmap.mmap(-1, size))
    return _scratch


class TLSFailed(ConnectionError):
    """The TLS handshake failed or timed out; ``str()`` says why.  No reply
    can be sent: the connection is only closed."""


class TLSUnavailable(Exception):
    """STARTTLS on something that is not a socket (``--inetd`` on a pipe)."""


class Transport:
    """Reads from one endpoint and writes to another (the same socket, or
    inetd's standard input and output): sockets without blocking, pipes and
    terminals in pieces that cannot block."""

    def __init__(self, reader: Endpoint, writer: Endpoint) -> None:
        self.reader = reader
        self.writer = writer
        # One poll object per direction, made at the first wait (a session
        # waits some four times a mail): the endpoint's descriptor and the
        # wake-up descriptor registered in it, and the descriptor to look for.
        self._pollers: Dict[Tuple[bool, Optional[int]], Tuple[Any, int]] = {}

    def wait(self, writing: bool, seconds: float, wake_fd: Optional[int]) -> bool:
        """True when the endpoint is ready; False after ``seconds`` or on a wake-up."""
        poller, wanted = self._pollers.get((writing, wake_fd)) or self._poller(writing, wake_fd)
        try:
            events = poller.poll(max(0, int(min(seconds, MAX_POLL_SECONDS) * 1000)) + 1)
        except InterruptedError:
            return False
        for fd, _ in events:
            if fd == wanted:
                return True
        return False

    def _poller(self, writing: bool, wake_fd: Optional[int]) -> Tuple[Any, int]:
        endpoint = self.writer if writing else self.reader
        poller = select.poll()
        poller.register(endpoint, select.POLLOUT if writing else select.POLLIN)
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
        made = self._pollers[writing, wake_fd] = (poller, self._fd(endpoint))
        return made

    def recv(self, size: int) -> bytes:
        if isinstance(self.reader, _socket.socket):
            buffer = _recv_buffer(size)
            return bytes(buffer[:self.reader.recv_into(buffer, size, _socket.MSG_DONTWAIT)])
        return os.read(self.reader, size)

    def send(self, data: memoryview) -> int:
        if isinstance(self.writer, _socket.socket):
            return self.writer.send(data, _socket.MSG_DONTWAIT)
        # A pipe or terminal stays blocking (it may be shared with other
        # processes): write only what fits once poll says it is writable.
        poller = select.poll()
        poller.register(self.writer, select.POLLOUT)
        if not poller.poll(0):
            raise BlockingIOError()
        return os.write(self.writer, data[:PIPE_WRITE])

    @staticmethod
    def _fd(endpoint: Endpoint) -> int:
        return endpoint if isinstance(endpoint, int) else endpoint.fileno()

    def close(self) -> None:
        """FIN after the last reply, then close (the socket ends only)."""
        for end in {id(self.reader): self.reader, id(self.writer): self.writer}.values():
            if isinstance(end, _socket.socket):
                _shut(end)

    def start_tls(self, context: Any) -> Transport:
        """The TLS transport over this one's socket (not yet shaken hands)."""
        if not isinstance(self.reader, _socket.socket):
            raise TLSUnavailable()
        if self.writer is not self.reader and isinstance(self.writer, _socket.socket):
            self.writer.close()  # --inetd's second descriptor of the same socket
        self.reader.setblocking(False)
        try:
            # OpenSSL writes its session tickets and then our first reply as
            # separate small records: with Nagle's algorithm the reply waits
            # for the client's delayed ACK, some 40 ms a session.
            self.reader.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a Unix socket under --inetd)
        return TLSTransport(context.wrap_socket(self.reader, server_side=True,
                                                do_handshake_on_connect=False))

    @property
    def tls(self) -> Optional[str]:
        return None

    @property
    def can_start_tls(self) -> bool:
        return isinstance(self.reader, _socket.socket)


class TLSTransport(Transport):
    """Reads and writes through an ``ssl.SSLSocket`` that never blocks;
    OpenSSL's want-read and want-write become waits of the connection."""

    def __init__(self, tls: Any) -> None:
        super().__init__(tls, tls)
        self.socket = tls

    def wait(self, writing: bool, seconds: float, wake_fd: Optional[int]) -> bool:
        if not writing and self.socket.pending():
            return True  # a record already decrypted: poll would not see it
        return super().wait(writing, seconds, wake_fd)

    def recv(self, size: int) -> bytes:
        import ssl

        try:
            data: bytes = self.socket.recv(size)
            return data
        except ssl.SSLWantReadError:
            raise BlockingIOError() from None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""  # the client closed TLS: end of input

    def send(self, data: memoryview) -> int:
        import ssl

        try:
            sent: int = self.socket.send(data)
            return sent
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            raise BlockingIOError() from None

    def handshake(self) -> Optional[bool]:
        """One step: None when done, else whether it must wait to write."""
        import ssl

        try:
            self.socket.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLWantWriteError:
            return True
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or str(exc) or type(exc).__name__
            raise TLSFailed(str(reason).lower().replace("_", " ")) from None
        return None

    def start_tls(self, context: Any) -> Transport:
        raise TLSUnavailable()

    can_start_tls = False

    @property
    def tls(self) -> Optional[str]:
        from msmtpd.net.tls_context import describe_session

        cipher = self.socket.cipher()
        return describe_session(self.socket.version(), cipher[0] if cipher else None)

    def close(self) -> None:
        """close_notify first (RFC 8446 section 6.1: the client can tell an
        end from a cut), without waiting for the client's own."""
        try:
            self.socket.unwrap()
        except (OSError, ValueError):
            pass  # want-read (the alert is out), want-write or a client gone: close anyway
        _shut(self.socket, linger=False)


def _shut(sock: _socket.socket, linger: bool = True) -> None:
    """FIN after our last reply, then close.  With ``linger`` (a plain
    socket), what the client sent and we never read (commands pipelined
    behind a refusal, anything after QUIT) is read and dropped until the
    client closes its side, within LINGER_SECONDS: closing a socket with
    unread input sends RST instead of FIN, and an RST can destroy our last
    reply (554, 421, 221) before the client has read it."""
    try:
        sock.shutdown(_socket.SHUT_WR)
    except OSError:
        sock.close()  # the client is gone already
        return
    if linger:
        _linger(sock)
    sock.close()


def _linger(sock: _socket.socket) -> None:
    deadline = time.monotonic() + LINGER_SECONDS
    dropped = 0
    try:
        while dropped < LINGER_OCTETS:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                return
            chunk = sock.recv(LINGER_CHUNK, _socket.MSG_DONTWAIT)
            if not chunk:
                return  # the client closed too
            dropped += len(chunk)
    except OSError:
        return  # reset by the client, or nothing after all


class MemoryTransport(Transport):
    """For tests and tools: reads from a ``recv`` function, writes to a
    binary file (flushed on every send), never waits."""

    def __init__(self, recv: Callable[[int], bytes], writer: IO[bytes]) -> None:
        super().__init__(-1, -1)
        self._recv_function = recv
        self._file = writer

    def wait(self, writing: bool, seconds: float, wake_fd: Optional[int]) -> bool:
        return True

    def start_tls(self, context: Any) -> Transport:
        raise TLSUnavailable()

    can_start_tls = False

    def recv(self, size: int) -> bytes:
        return self._recv_function(size)

    def send(self, data: memoryview) -> int:
        self._file.write(data)
        self._file.flush()
        return len(data)

    def close(self) -> None:
        pass


def endpoint_of(fd: int) -> Endpoint:
    """A socket object for a descriptor that is a socket (it may then be
    read and written without blocking), else the descriptor itself."""
    try:
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            return _socket.socket(fileno=os.dup(fd))
    except OSError:
        pass
    return fd

