"""The connection layer: everything between a file descriptor and the session.

It owns buffering, the per-request deadlines of contract 6, the overload
and stop checks of the worker (through a :class:`Watch`), TLS (STARTTLS and
implicit, the handshake bound by the same deadlines) and the peer address.
No other module calls ``recv``, ``send`` or ``wrap_socket``.

Deadlines bound whole requests, not single reads (Postfix's
``smtpd_per_request_deadline``): a command line must be complete within
``timeout`` seconds of the previous reply, however the client spreads its
bytes, and every reply must be written within ``timeout`` or the client,
which is not reading, is dropped.  DATA may pause for ``timeout`` but, once
it has run that long, must average :data:`MIN_DATA_RATE` octets a second.

The overload rule (a full pool, clients waiting) judges a session by its
progress, not by its chatter: the session calls :meth:`Connection.progressed`
after a command that moved a transaction forward, and the connection counts
a finished TLS handshake and DATA's content itself; :attr:`unproductive_seconds`
is the time since the reply to the last of these.  A client that only sends
NOOP or RSET, or commands that are refused, keeps the clock running.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import stat
import time
from typing import IO, Any, Callable, Optional, Protocol, Union

from msmtpd.net.line_reader import CHUNK_SIZE, DATA_CHUNK_SIZE, LineReader

# Postfix's smtpd_min_data_rate default: octets per second that DATA must
# average once it has lasted the timeout.
MIN_DATA_RATE = 500
# Postfix's overload smtpd_timeout (10 s): when the pool is full and clients
# wait, a session that made no progress for this long (idle, or sending
# only junk commands: Postfix's smtpd_junk_command_limit under stress)
# makes way.
OVERLOAD_IDLE_SECONDS = 10.0
# A Watch is consulted at least this often while the connection waits.
TICK_SECONDS = 1.0
# No single poll waits longer than this, whatever the timeout.
MAX_POLL_SECONDS = 3600.0
# Replies are sent once this much is pending, even mid-batch.
WRITE_BUFFER = 64 * 1024
# A write to a pipe or terminal of at most PIPE_BUF octets never blocks
# once poll says it is writable.
PIPE_WRITE = select.PIPE_BUF

Endpoint = Union[socket.socket, int]

# Sockets are read into this buffer, one per process (a worker serves one
# session at a time): a large read then costs no large allocation.  (mmap
# is imported with this module, not at the first read: by then --user may
# have dropped the privileges that reach the Python installation.)
_scratch = memoryview(b"")


def _recv_buffer(size: int) -> memoryview:
    global _scratch
    if len(_scratch) < size:
        # Anonymous memory: a page counts only once a read has filled it,
        # so a worker that only saw small mails keeps a page or two.
        _scratch = memoryview(mmap.mmap(-1, size))
    return _scratch


class ShutdownRequested(Exception):
    """The service stops and the session is between transactions: close it
    politely (421)."""


class Overloaded(Exception):
    """Every worker is busy, clients wait and this session idles: 421."""


class RequestTimeout(TimeoutError):
    """A command line was not complete within the timeout."""


class DataTooSlow(TimeoutError):
    """DATA fell under the minimum rate."""


class ClientNotReading(ConnectionError):
    """A reply could not be written within the timeout; no reply can reach
    such a client, so the connection is only closed."""


class TLSFailed(ConnectionError):
    """The TLS handshake failed or timed out; ``str()`` says why.  No reply
    can be sent: the connection is only closed."""


class TLSUnavailable(Exception):
    """STARTTLS on something that is not a socket (``--inetd`` on a pipe)."""


class Watch(Protocol):
    """The worker's view of a waiting connection: ``wake_fd`` becomes
    readable on a signal; ``check`` handles it and may raise
    :class:`ShutdownRequested` or :class:`Overloaded` while ``reading``."""

    wake_fd: int

    def check(self, connection: Connection, reading: bool) -> None: ...


class Transport:
    """Reads from one endpoint and writes to another (the same socket, or
    inetd's standard input and output): sockets without blocking, pipes and
    terminals in pieces that cannot block."""

    def __init__(self, reader: Endpoint, writer: Endpoint) -> None:
        self.reader = reader
        self.writer = writer

    def wait(self, writing: bool, seconds: float, wake_fd: Optional[int]) -> bool:
        """True when the endpoint is ready; False after ``seconds`` or on a wake-up."""
        poller = select.poll()
        poller.register(self.writer if writing else self.reader,
                        select.POLLOUT if writing else select.POLLIN)
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
        wanted = self._fd(self.writer if writing else self.reader)
        try:
            events = poller.poll(max(0, int(min(seconds, MAX_POLL_SECONDS) * 1000)) + 1)
        except InterruptedError:
            return False
        return any(fd == wanted for fd, _ in events)

    def recv(self, size: int) -> bytes:
        if isinstance(self.reader, socket.socket):
            buffer = _recv_buffer(size)
            return bytes(buffer[:self.reader.recv_into(buffer, size, socket.MSG_DONTWAIT)])
        return os.read(self.reader, size)

    def send(self, data: memoryview) -> int:
        if isinstance(self.writer, socket.socket):
            return self.writer.send(data, socket.MSG_DONTWAIT)
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
            if isinstance(end, socket.socket):
                _shut(end)

    def start_tls(self, context: Any) -> Transport:
        """The TLS transport over this one's socket (not yet shaken hands)."""
        if not isinstance(self.reader, socket.socket):
            raise TLSUnavailable()
        if self.writer is not self.reader and isinstance(self.writer, socket.socket):
            self.writer.close()  # --inetd's second descriptor of the same socket
        self.reader.setblocking(False)
        try:
            # OpenSSL writes its session tickets and then our first reply as
            # separate small records: with Nagle's algorithm the reply waits
            # for the client's delayed ACK, some 40 ms a session.
            self.reader.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a Unix socket under --inetd)
        return TLSTransport(context.wrap_socket(self.reader, server_side=True,
                                                do_handshake_on_connect=False))

    @property
    def tls(self) -> Optional[str]:
        return None

    @property
    def can_start_tls(self) -> bool:
        return isinstance(self.reader, socket.socket)


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
        _shut(self.socket)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the client is gone already
    sock.close()


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


class Connection(LineReader):
    """A session's connection: buffered lines and chunks in, replies out,
    each bounded by the deadlines described above."""

    def __init__(self, transport: Transport, timeout: Optional[float],
                 watch: Optional[Watch] = None, peer: str = "",
                 clock: Callable[[], float] = time.monotonic, chunk_size: int = CHUNK_SIZE,
                 data_chunk_size: int = DATA_CHUNK_SIZE) -> None:
        super().__init__(self._receive, chunk_size, data_chunk_size)
        self.transport = transport
        self.timeout = timeout
        self.watch = watch
        self.peer = peer
        self._clock = clock
        self._out = bytearray()
        self._replied_at = clock()  # the last reply went out (or we connected)
        self._progress_at = self._replied_at  # the last reply to progress went out
        self._progress_pending = False  # the reply being written answers progress
        self._data_started: Optional[float] = None
        self._data_octets = 0

    # -- what the session and the worker ask --------------------------

    @property
    def awaiting_command(self) -> bool:
        """Between commands (not in DATA): the overload rule may apply."""
        return self._data_started is None

    @property
    def idle_seconds(self) -> float:
        """How long the client has been silent since our last reply."""
        return self._clock() - self._replied_at

    @property
    def unproductive_seconds(self) -> float:
        """How long since the reply to the last command that moved the
        session forward (or since it connected): what the overload rule
        judges.  Never less than :attr:`idle_seconds`."""
        return self._clock() - self._progress_at

    def progressed(self) -> None:
        """The session's command being answered moved a transaction forward
        (a greeting, AUTH, MAIL, RCPT accepted): the overload clock restarts
        when that reply has gone out.  The session decides what is progress,
        since only it knows the protocol; the connection only keeps the
        time, as it does for every other deadline."""
        self._progress_pending = True

    def begin_data(self) -> None:
        self._data_started = self._clock()
        self._data_octets = 0

    def end_data(self) -> None:
        """DATA's content is over; a whole message is progress, whatever
        the reply to it (a delivery that failed is no fault of the client)."""
        if self._data_started is not None:
            self._progress_pending = True
        self._data_started = None

    def write(self, data: bytes) -> None:
        self._out += data
        if len(self._out) >= WRITE_BUFFER:
            self.flush()

    def flush(self) -> None:
        """Send what is pending within the timeout, else ClientNotReading."""
        if self._out:
            view = memoryview(self._out)
            deadline = self._deadline(self._clock())
            try:
                while view:
                    try:
                        view = view[self.transport.send(view):]
                        continue
                    except (BlockingIOError, InterruptedError):
                        pass
                    self._wait(writing=True, deadline=deadline, expired=ClientNotReading)
            finally:
                sent = len(self._out) - len(view)
                view.release()
                del self._out[:sent]
        self._replied_at = self._clock()
        if self._progress_pending:
            self._progress_pending = False
            self._progress_at = self._replied_at

    def close(self) -> None:
        self.transport.close()

    @property
    def tls(self) -> Optional[str]:
        """``TLSv1.3 with TLS_AES_256_GCM_SHA384`` once TLS is up, else None."""
        return self.transport.tls

    @property
    def can_start_tls(self) -> bool:
        """A socket in plain text (not a pipe, not TLS already)."""
        return self.transport.can_start_tls

    def start_tls(self, context: Any) -> str:
        """Turn this connection into TLS: pending replies go out, whatever
        the client sent after the STARTTLS line is thrown away unread (the
        command injection of CVE-2011-0411), then the handshake, bounded by
        the timeout.  Raises TLSUnavailable before anything changed, or
        TLSFailed."""
        self.flush()
        self._progress_at = self._replied_at  # the client asked for TLS: progress
        transport = self.transport.start_tls(context)
        assert isinstance(transport, TLSTransport)
        self.discard_buffered()
        self.transport = transport
        deadline = self._deadline(self._clock())
        while True:
            writing = transport.handshake()
            if writing is None:
                break
            try:
                self._wait(writing=writing, deadline=deadline, expired=TLSFailed)
            except TLSFailed:
                raise TLSFailed(f"no handshake within {self.timeout:g} s") from None
            except (ShutdownRequested, Overloaded) as exc:  # no plaintext 421 can follow
                raise TLSFailed(f"handshake cut short: {type(exc).__name__}") from None
        self._replied_at = self._progress_at = self._clock()
        return self.tls or ""

    # -- reading, with the deadlines ----------------------------------

    def _receive(self, size: int) -> bytes:
        """One read for the LineReader: pending replies go out first, so a
        pipelining client never waits for answers we hold back.  Silence
        is bounded by the deadline; DATA's rate is judged as octets arrive
        (a silent client is idle, not slow)."""
        if self._out:
            self.flush()
        if self.watch is not None:  # a stop between transactions wins over waiting input
            self.watch.check(self, reading=True)
        while True:
            self._wait(writing=False, deadline=self._deadline(self._replied_at),
                       expired=RequestTimeout)
            try:
                data = self.transport.recv(size)
            except (BlockingIOError, InterruptedError):
                continue
            if self._data_started is not None:
                self._data_octets += len(data)
                if data and self.timeout is not None and self._clock() >= self._rate_deadline():
                    raise DataTooSlow("data too slow")
                # Silence in DATA counts from the last octet, and content is progress.
                self._replied_at = self._progress_at = self._clock()
            return data

    def _rate_deadline(self) -> float:
        """When DATA, at its current count, falls under the minimum rate."""
        assert self._data_started is not None and self.timeout is not None
        return self._data_started + max(self.timeout, self._data_octets / MIN_DATA_RATE)

    def _deadline(self, start: float) -> Optional[float]:
        return None if self.timeout is None else start + self.timeout

    def _wait(self, writing: bool, deadline: Optional[float],
              expired: Callable[[str], BaseException]) -> None:
        """Wait until the endpoint is ready, consulting the watch on every
        wake-up and tick; raise ``expired`` at the deadline."""
        wake_fd = self.watch.wake_fd if self.watch is not None else None
        while True:
            now = self._clock()
            if deadline is not None and now >= deadline:
                raise expired("timeout")
            seconds = MAX_POLL_SECONDS if deadline is None else deadline - now
            if self.watch is not None:
                seconds = min(seconds, TICK_SECONDS)
            if self.transport.wait(writing, seconds, wake_fd):
                return
            if self.watch is not None:
                self.watch.check(self, reading=not writing)


def in_memory(recv: Callable[[int], bytes], writer: IO[bytes], timeout: Optional[float] = None,
              chunk_size: int = CHUNK_SIZE) -> Connection:
    """A connection over a ``recv`` function and a binary file (tests, tools)."""
    return Connection(MemoryTransport(recv, writer), timeout, chunk_size=chunk_size,
                      data_chunk_size=chunk_size)


def endpoint_of(fd: int) -> Endpoint:
    """A socket object for a descriptor that is a socket (it may then be
    read and written without blocking), else the descriptor itself."""
    try:
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            return socket.socket(fileno=os.dup(fd))
    except OSError:
        pass
    return fd
