"""Receiving the DATA section of a transaction into a spool.

Only ``<CR><LF>.<CR><LF>`` ends DATA (RFC 5321 section 4.1.1.4): a line that
ends in a bare LF is still a content line, so none of the smuggling
sequences ``<LF>.<LF>``, ``<CR><LF>.<LF>`` or ``<LF>.<CR><LF>`` can end a
message early.  The spooled mail has LF line endings and is dot-unstuffed
(RFC 5321 section 4.5.2).  Work is done on large chunks with bytes
operations; there is no Python loop per line.
"""

from __future__ import annotations

import io
import os
import re

from msmtpd.net.line_reader import CHUNK_SIZE, LineReader

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    from typing import IO, Optional

END_OF_DATA = b"\r\n.\r\n"
# A line longer than this is stored in pieces rather than buffered whole.
MAX_BUFFERED_LINE = 1024 * 1024
# Messages up to this size stay in memory; larger ones go to a temporary file.
SPOOL_MEMORY_LIMIT = 1024 * 1024
# A CR that does not start a CRLF: content, kept as it is.
_BARE_CR = re.compile(rb"\r(?!\n)")
# Loop detection: a message whose header section holds more Received:
# fields than this was relayed too often (RFC 5321 section 6.3).  Postfix's
# hopcount_limit default, also chasquid's and maddy's.  Counted in the
# client's header; msmtpd's own trace header comes on top.
MAX_RECEIVED_HEADERS = 50
_RECEIVED = b"\nreceived:"


class HopCounter:
    """Counts the ``Received:`` fields of a message's header section (up to
    its first empty line) as the message passes, in bytes operations over
    whole chunks: no second pass, no loop per line.  Lines may be split
    anywhere between chunks; the last few octets are kept for that."""

    def __init__(self) -> None:
        self.count = 0
        self.done = False  # the header section has ended (or the limit is passed)
        self._tail = b"\n"  # the message starts at the start of a line

    @property
    def too_many(self) -> bool:
        return self.count > MAX_RECEIVED_HEADERS

    def feed(self, data: bytes) -> None:
        if self.done or not data:
            return
        # The tail is one octet shorter than the pattern, so a field found
        # here ends in ``data`` and was not counted before.
        text = self._tail + data
        end = text.find(b"\n\n")
        header = text if end < 0 else text[: end + 1]
        self.count += header.lower().count(_RECEIVED)
        self._tail = text[-(len(_RECEIVED) - 1):]
        if end >= 0 or self.too_many:
            self.done = True


class Spool:
    """One message: in memory first, in an unnamed temporary file past
    ``SPOOL_MEMORY_LIMIT``.  Stops storing (but keeps counting) once the
    message is over ``max_size`` or the disk failed, so the client can be
    answered only after its final dot."""

    def __init__(self, max_size: int = 0, directory: Optional[str] = None,
                 memory_limit: int = SPOOL_MEMORY_LIMIT) -> None:
        self.max_size = max_size
        self.size = 0
        self.error: Optional[OSError] = None
        self.hops = HopCounter()
        self._directory = directory
        self._memory_limit = memory_limit
        self._memory: Optional[io.BytesIO] = io.BytesIO()
        self._file: Optional[IO[bytes]] = None

    @property
    def too_big(self) -> bool:
        return 0 < self.max_size < self.size

    def write(self, data: bytes, counted: bool = True) -> None:
        """Store ``data``; ``counted=False`` for the server's own trace
        header, which must not count against the client's size limit."""
        if counted:
            self.size += len(data)
            self.hops.feed(data)
        if self.too_big or self.error is not None:
            return
        try:
            if self._memory is not None:
                if self._memory.tell() + len(data) <= self._memory_limit:
                    self._memory.write(data)
                    return
                self._roll_over()
            assert self._file is not None
            self._file.write(data)
        except OSError as exc:
            self.error = exc

    def _roll_over(self) -> None:
        import tempfile  # only large messages pay for this import

        assert self._memory is not None
        self._file = tempfile.TemporaryFile(prefix="msmtpd-", dir=self._directory)
        self._file.write(self._memory.getbuffer())
        self._memory = None

    def contents(self) -> bytes | int:
        """The whole message as a file descriptor positioned at its start,
        for the command's standard input.  Always a complete file, never a
        pipe being written: a worker killed mid-delivery cannot leave the
        command with half a mail.  Small messages go to an in-memory file
        (memfd); bytes only where the system has none."""
        if self._memory is not None:
            memfd = _memory_file()
            if memfd is None:
                return self._memory.getvalue()
            self._file = memfd
            self._file.write(self._memory.getbuffer())
            self._memory = None
        assert self._file is not None
        self._file.flush()
        os.lseek(self._file.fileno(), 0, os.SEEK_SET)
        return self._file.fileno()

    def read_all(self) -> bytes:
        """The whole message (for tests and small tools)."""
        data = self.contents()
        if isinstance(data, bytes):
            return data
        chunks: list[bytes] = []
        while True:
            chunk = os.read(data, CHUNK_SIZE)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._memory = None
        self._file = None


def _memory_file() -> Optional[IO[bytes]]:
    try:
        return os.fdopen(os.memfd_create("msmtpd-message", os.MFD_CLOEXEC), "w+b")
    except (AttributeError, OSError):
        return None


def to_lf(text: bytes) -> bytes:
    """CRLF to LF.  Deleting every CR (``translate``) is some 1.7 times as
    fast as ``replace``, whose cost grows with the number of lines, and
    right when no CR stands alone (searched for, about half the cost of
    ``replace``); a bare LF line has no CR at all (found by memchr)."""
    if b"\r" not in text:
        return text
    if _BARE_CR.search(text) is None:
        return text.translate(None, b"\r")
    return text.replace(b"\r\n", b"\n")


def _unstuff(text: bytes, at_line_start: bool) -> bytes:
    text = to_lf(text)
    if at_line_start and text[:1] == b".":
        text = text[1:]
    return text.replace(b"\n.", b"\n")


def receive_data(reader: LineReader, spool: Spool, after_crlf: bool = True) -> bool:
    """Copy DATA from ``reader`` into ``spool`` up to the final dot.

    Returns False when the input ends first (the message must then be
    dropped).  Bytes after the final dot are pushed back for the next
    command.  ``after_crlf`` tells whether the DATA command line itself
    ended in CRLF: if it did not, a "." line right after it is content.
    May raise TimeoutError from the reader.
    """
    pending = b""  # the start of a line whose LF has not arrived yet
    # after_crlf: the previous line ended in CRLF (at first: DATA's own line)
    mid_line = False  # pending does not start at the beginning of a line
    while True:
        chunk = reader.read_chunk()
        if not chunk:
            return False
        data = pending + chunk if pending else chunk
        at_start = not mid_line
        if at_start and after_crlf and data[:3] == b".\r\n":
            reader.unread(data[3:])
            return True
        # A chunk without a single dot (most of an attachment) is found by
        # memchr, some sixty times faster than looking for "\n.".
        no_dots = b"." not in data or (b"\n." not in data and not (at_start and data[:1] == b"."))
        # Without a line that starts with a dot there is neither the end of
        # DATA nor anything to unstuff: one scan instead of two.
        end = -1 if no_dots else data.find(END_OF_DATA)
        if end >= 0:
            spool.write(_unstuff(data[: end + 2], at_start))
            reader.unread(data[end + 5 :])
            return True
        cut = data.rfind(b"\n") + 1
        if cut:
            lines = data[:cut]
            spool.write(to_lf(lines) if no_dots else _unstuff(lines, at_start))
            after_crlf = data[cut - 2 : cut] == b"\r\n"
            mid_line = False
            pending = data[cut:]
        elif len(data) > MAX_BUFFERED_LINE:
            # Keep a trailing CR back: it may pair with the next chunk's LF.
            keep = 1 if data.endswith(b"\r") else 0
            spool.write(_unstuff(data[: len(data) - keep], at_start))
            mid_line = True
            pending = data[len(data) - keep :]
        else:
            pending = data
