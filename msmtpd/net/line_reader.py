"""Buffered line reading on top of any ``recv(n) -> bytes`` function.

The session needs three things a plain buffered file does not give together:
lines with a hard length bound (``readline(limit)`` as CPython's
socketserver does), large raw chunks for DATA, and a way to push back the
bytes a pipelining client sent after the final dot.  This class only
buffers; :class:`msmtpd.net.connection.Connection` supplies a ``recv`` with the
deadlines, and a timeout is that ``recv`` raising :class:`TimeoutError`.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Callable

    Recv = Callable[[int], bytes]

CHUNK_SIZE = 64 * 1024
# DATA is read in larger pieces: fewer trips through the deadlines and the
# worker's checks, and the spool written in bigger blocks.
DATA_CHUNK_SIZE = 256 * 1024


class LineReader:
    """Reads lines and chunks from ``recv``; ``b""`` from ``recv`` is end of input."""

    def __init__(self, recv: Recv, chunk_size: int = CHUNK_SIZE, data_chunk_size: int = 0) -> None:
        self._recv = recv
        self._chunk_size = chunk_size
        self._data_chunk_size = data_chunk_size or chunk_size
        self._buffer = b""
        self._eof = False

    def _fill(self, size: int = 0) -> bool:
        if self._eof:
            return False
        data = self._recv(size or self._chunk_size)
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    def readline(self, limit: int) -> bytes:
        """One line including its LF, or at most ``limit`` bytes of a longer
        one, or what is left at end of input (``b""`` when nothing is)."""
        searched = 0
        while True:
            end = self._buffer.find(b"\n", searched, limit)
            if end >= 0:
                return self._take(end + 1)
            if len(self._buffer) >= limit:
                return self._take(limit)
            searched = len(self._buffer)
            if not self._fill():
                return self._take(len(self._buffer))

    def skip_line(self) -> bool:
        """Discard up to and including the next LF; False at end of input."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                self._take(end + 1)
                return True
            self._buffer = b""
            if not self._fill():
                return False

    def read_chunk(self) -> bytes:
        """Whatever is buffered, or the next chunk from ``recv`` (a large one)."""
        if not self._buffer:
            self._fill(self._data_chunk_size)
        return self._take(len(self._buffer))

    @property
    def buffered(self) -> bytes:
        """What was read but not yet taken."""
        return self._buffer

    def read_more(self, most: int) -> bool:
        """One read of at most ``most`` octets into the buffer (a header
        must not swallow what follows it); False at end of input."""
        return self._fill(most)

    def take(self, count: int) -> bytes:
        """The first ``count`` buffered octets, removed from the buffer."""
        return self._take(count)

    def read_octets(self, count: int, sink: Callable[[bytes], None]) -> int:
        """Hand exactly ``count`` octets to ``sink`` in pieces (a BDAT chunk,
        RFC 3030), taking no byte past them; returns how many arrived, fewer
        only at end of input."""
        remaining = count
        while remaining > 0:
            if not self._buffer and not self._fill(self._data_chunk_size):
                break
            piece = self._take(min(remaining, len(self._buffer)))
            remaining -= len(piece)
            sink(piece)
        return count - remaining

    def discard_buffered(self) -> None:
        """Forget what was read but not yet taken (before STARTTLS)."""
        self._buffer = b""

    def unread(self, data: bytes) -> None:
        self._buffer = data + self._buffer

    def _take(self, count: int) -> bytes:
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data
