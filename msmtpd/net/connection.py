"""The connection layer: everything between a file descriptor and the session.

It owns buffering, the per-request deadlines of contract 6 (docs/architecture.md), the overload
and stop checks of the worker (through a :class:`Watch`), TLS (STARTTLS and
implicit, the handshake bound by the same deadlines) and the peer address.
How bytes cross each kind of endpoint is :mod:`msmtpd.net.transports`;
no module but these two calls ``recv``, ``send`` or ``wrap_socket``.

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

import time

from msmtpd.net.line_reader import CHUNK_SIZE, DATA_CHUNK_SIZE, LineReader
from msmtpd.net.peer import Peer
from msmtpd.net.transports import (
    MAX_POLL_SECONDS,
    MemoryTransport,
    TLSFailed,
    TLSTransport,
    TLSUnavailable,
    Transport,
    endpoint_of,
)

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    from typing import IO, Any, Callable, Optional, Protocol


# The transports, and what a descriptor is, are named here too: the
# session, the worker and --inetd know one module of the network.
__all__ = ["MIN_DATA_RATE", "OVERLOAD_IDLE_SECONDS", "TICK_SECONDS", "ClientNotReading",
           "Connection", "DataTooSlow", "MemoryTransport", "Overloaded", "RequestTimeout",
           "ShutdownRequested", "TLSFailed", "TLSTransport", "TLSUnavailable", "Transport",
           "endpoint_of", "in_memory"]

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
# Replies are sent once this much is pending, even mid-batch.
WRITE_BUFFER = 64 * 1024


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


if TYPE_CHECKING:
    class Watch(Protocol):
        """The worker's view of a waiting connection: ``wake_fd`` becomes
        readable on a signal; ``check`` handles it and may raise
        :class:`ShutdownRequested` or :class:`Overloaded` while ``reading``.
        ``before_read`` is asked before each read: it may skip the whole check
        when nothing can have happened since the last one (the wake-up
        descriptor, which only ``check`` drains, is polled with the read)."""

        wake_fd: int

        def check(self, connection: Connection, reading: bool) -> None: ...

        def before_read(self, connection: Connection) -> None: ...


class Connection(LineReader):
    """A session's connection: buffered lines and chunks in, replies out,
    each bounded by the deadlines described above."""

    def __init__(self, transport: Transport, timeout: Optional[float],
                 watch: Optional[Watch] = None, peer: Optional[Peer] = None,
                 clock: Callable[[], float] = time.monotonic, chunk_size: int = CHUNK_SIZE,
                 data_chunk_size: int = DATA_CHUNK_SIZE) -> None:
        super().__init__(self._receive, chunk_size, data_chunk_size)
        self.transport = transport
        self.timeout = timeout
        self.watch = watch
        self.peer = Peer() if peer is None else peer  # who is calling (contract 12)
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

    def receive_octets(self, count: int, sink: Callable[[bytes], None]) -> int:
        """A BDAT chunk (RFC 3030): exactly ``count`` octets to ``sink``
        under DATA's deadlines (silence bounded by the timeout, then the
        minimum rate); how many arrived, fewer only at end of input."""
        self.begin_data()
        try:
            return self.read_octets(count, sink)
        finally:
            self.end_data()

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
            self.watch.before_read(self)
        while True:
            self._wait(writing=False, deadline=self._deadline(self._replied_at),
                       expired=RequestTimeout)
            try:
                data = self.transport.recv(size)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionResetError:
                if self._data_started is None:
                    raise
                # A client that closes with replies unread sends a reset: in
                # DATA or a BDAT chunk that is the end of its input like any
                # other, and the session says nothing was delivered.
                data = b""
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


