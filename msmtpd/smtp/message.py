"""Receiving the DATA section of a transaction into a spool.

Only ``<CR><LF>.<CR><LF>`` ends DATA (RFC 5321 section 4.1.1.4): a line that
ends in a bare LF is still a content line, so none of the smuggling
sequences ``<LF>.<LF>``, ``<CR><LF>.<LF>`` or ``<LF>.<CR><LF>`` can end a
message early.  The spooled mail has LF line endings and is dot-unstuffed
(RFC 5321 section 4.5.2).  Work is done on large chunks with bytes
operations; there is no Python loop per line.
"""

from __future__ import annotations

import errno
import io
import os

from msmtpd.net.line_reader import CHUNK_SIZE, LineReader

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    from typing import IO, Optional, Union

END_OF_DATA = b"\r\n.\r\n"
CR, LF, DOT = b"\r\n."
# Messages up to this size stay in memory; larger ones go to a temporary file.
SPOOL_MEMORY_LIMIT = 1024 * 1024
# Texts shorter than this are searched with bytes methods alone: the
# regular expressions below are faster per byte on large chunks, but ``re``
# costs some 2 ms of imports, which a small mail (and every --inetd
# session) would pay for nothing.
REGEX_WORTHWHILE = 64 * 1024


class _Patterns:
    """The regular expressions of the data path, compiled on first use."""

    def __init__(self) -> None:
        import re

        # A CR that does not start a CRLF: content, kept as it is.
        self.bare_cr = re.compile(rb"\r(?!\n)")
        # A line that starts with a dot: stuffed, or the final one.
        self.dot_line = re.compile(rb"\n\.")
        # Found by the regular expression in 0.3 ns per byte, by bytes.find in 0.47.
        self.end_of_data = re.compile(re.escape(END_OF_DATA))


_compiled: Optional[_Patterns] = None


def _patterns() -> _Patterns:
    global _compiled
    if _compiled is None:
        _compiled = _Patterns()
    return _compiled

# Dot-stuffed lines are unstuffed by the regular expression's substitution
# while they are sparse, at most one per this many octets; denser ones, as
# a hostile client may send, by bytes.replace.  Per byte of 256 KiB, the
# substitution takes 0.35 to 1.1 ns at one dot line per 6 KiB, 0.9 at one
# per 64 octets, 1.5 at one per 32 (as replace), 9.7 at one every 3
# octets; replace takes 1.6 to 2.2, and 3.7 at one every 3 octets.
SPARSE_DOT_LINES = 32
# Lines shorter than this on average (a CR every so many octets) are
# checked for a lone CR by the regular expression, whose cost per byte
# stays near 0.4 ns, rather than by putting the CRs back, whose memchr
# stops at every line: 0.2 ns per byte at 78-octet lines, 2 at 4-octet ones.
SHORT_LINES = 16
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
    answered only after its final dot.

    Files are unbuffered: each write is one ``write(2)`` of a converted
    chunk (up to 256 KiB), no copy through a buffer.  (Gathering the chunks
    into one writev(2) a MiB saved 1 to 2 ms of CPU per 20 MB in one
    stream, but cost 7 ms more with four sessions at once: the chunks had
    left the cache by then.)  A large message goes to a file in
    ``--spool-dir`` rather than to memory: 20 MB written in 256 KiB pieces
    cost 4.8 ms of CPU into a file on this machine's ext4, 9 ms into a
    memfd or tmpfs, whose new pages are cleared first (four writers at
    once, reading included: 7 to 12 against 15 ms); and sixteen sessions
    of large mails held in memory would be that much RAM.
    """

    def __init__(self, max_size: int = 0, directory: Optional[str] = None,
                 memory_limit: int = SPOOL_MEMORY_LIMIT) -> None:
        self.max_size = max_size
        self.size = 0
        self.error: Optional[OSError] = None
        self.hops = HopCounter()
        self._directory = directory
        self._memory_limit = memory_limit
        self._memory: Optional[io.BytesIO] = io.BytesIO()
        self._file: Optional[IO[bytes]] = None  # unbuffered

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
            _write_all(self._file, data)
        except OSError as exc:
            self.error = exc

    def _roll_over(self) -> None:
        import tempfile  # only large messages pay for this import

        assert self._memory is not None
        self._file = tempfile.TemporaryFile(prefix="msmtpd-", dir=self._directory, buffering=0)
        _write_all(self._file, self._memory.getbuffer())
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
            _write_all(memfd, self._memory.getbuffer())
            self._memory = None
        assert self._file is not None
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


def _write_all(file: IO[bytes], data: Union[bytes, memoryview]) -> None:
    """Write all of ``data`` to an unbuffered file, which may take less at
    a time (a disk nearly full: the next write says why)."""
    done = file.write(data)
    if done < len(data):
        with memoryview(data) as view:
            while done < len(data):
                written = file.write(view[done:])
                if not written:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += written


def _memory_file() -> Optional[IO[bytes]]:
    try:
        return os.fdopen(os.memfd_create("msmtpd-message", os.MFD_CLOEXEC), "w+b", buffering=0)
    except (AttributeError, OSError):
        return None


def to_lf(text: bytes) -> bytes:
    """CRLF to LF; a CR that does not start a CRLF is content and stays.

    Measured on 256 KiB of 78-octet CRLF lines, per byte: deleting every CR
    (``replace`` of one character, on memchr and memcpy) 0.16 ns, putting
    the CRs back before every LF to compare 0.2: when that gives the text
    again, every CR started a CRLF and every line ended in one, the usual
    mail.  Otherwise (or for short lines, see ``SHORT_LINES``) a
    regular-expression search for a CR alone (0.4 ns) tells whether
    deleting was still right (bare LF lines among CRLF ones), and only a
    text with a lone CR pays ``replace(b"\\r\\n", b"\\n")`` (1.7 ns, its
    cost grows with the number of lines).  The search and ``translate``
    that came before cost 0.95.  Bare LF lines have no CR at all (memchr).
    """
    if b"\r" not in text:
        return text
    lf = text.replace(b"\r", b"")
    if (len(text) - len(lf)) * SHORT_LINES < len(text):  # memchr stops at each line
        if lf.replace(b"\n", b"\r\n") == text:
            return lf
    if len(text) >= REGEX_WORTHWHILE and _patterns().bare_cr.search(text) is None:
        return lf
    return text.replace(b"\r\n", b"\n")


class _Unstuffer:
    """Removes the dot that starts a line, after CRLF to LF.  Sparse dot
    lines go fastest through the regular expression's substitution, dense
    ones through ``bytes.replace``: each chunk is done the way that suited
    the one before (the count of dots removed is known either way)."""

    def __init__(self) -> None:
        self.dense = False

    def __call__(self, text: bytes, at_line_start: bool) -> bytes:
        text = to_lf(text)
        if at_line_start and text[:1] == b".":
            text = text[1:]
        if self.dense or len(text) < REGEX_WORTHWHILE:
            unstuffed = text.replace(b"\n.", b"\n")
            count = len(text) - len(unstuffed)
        else:
            unstuffed, count = _patterns().dot_line.subn(b"\n", text)
        self.dense = count * SPARSE_DOT_LINES > len(text)
        return unstuffed


def _first_dot_line(data: bytes, at_line_start: bool) -> int:
    """Where the first line of ``data`` that starts with a dot starts, -1
    if none does.  Most chunks of a mail hold no dot at all (base64 has
    none), found by memchr; a regular expression finds ``\\n.`` in about
    0.35 ns per byte, ``bytes.find`` in 0.85."""
    if b"." not in data:
        return -1
    if at_line_start and data[:1] == b".":
        return 0
    if len(data) < REGEX_WORTHWHILE:
        found = data.find(b"\n.")
        return -1 if found < 0 else found + 1
    match = _patterns().dot_line.search(data)
    return -1 if match is None else match.start() + 1


def _end_of_data(data: bytes, start: int) -> int:
    """Where the final "." line starts (after its CRLF), searching from
    ``start``; -1 if it is not in ``data``."""
    if len(data) < REGEX_WORTHWHILE:
        found = data.find(END_OF_DATA, start)
        return -1 if found < 0 else found + 2
    match = _patterns().end_of_data.search(data, start)
    return -1 if match is None else match.start() + 2


def _undecided(data: bytes, at_line_start: bool) -> int:
    """How many octets at the end of ``data`` must wait for the next
    chunk: a CR (its LF may come next), or a line begun with "." or ".\\r"
    (it may be the final dot).  At most two: no line is buffered."""
    last = data.rfind(b"\n") + 1  # where the last, unfinished line starts
    tail = len(data) - last
    if tail and tail <= 2 and data[last] == DOT and (last or at_line_start) \
            and (tail == 1 or data[-1] == CR):
        return tail
    return 1 if data[-1] == CR else 0


def receive_data(reader: LineReader, spool: Spool, after_crlf: bool = True) -> bool:
    """Copy DATA from ``reader`` into ``spool`` up to the final dot.

    Returns False when the input ends first (the message must then be
    dropped).  Bytes after the final dot are pushed back for the next
    command.  ``after_crlf`` tells whether the DATA command line itself
    ended in CRLF: if it did not, a "." line right after it is content.
    May raise TimeoutError from the reader.

    Each chunk is converted whole as it arrives, lines of any length with
    it: only the octets :func:`_undecided` names are held back (joined to
    the next chunk, so that copy is rare and small chunks pay it).
    """
    held = b""  # the undecided end of the previous chunk
    unstuff = _Unstuffer()
    at_line_start = True  # ``held``, or else the next chunk, begins a line
    # after_crlf: ... and the line before it ended in CRLF (at first: DATA's own line)
    while True:
        chunk = reader.read_chunk()
        if not chunk:
            return False
        data = held + chunk if held else chunk
        dot_line = _first_dot_line(data, at_line_start)
        if dot_line >= 0:
            if dot_line == 0 and at_line_start and after_crlf and data[:3] == b".\r\n":
                end = 0
            else:
                end = _end_of_data(data, max(dot_line - 2, 0))
            if end >= 0:  # the final "." line starts at ``end``
                if end:
                    spool.write(unstuff(data[:end], at_line_start))
                reader.unread(data[end + 3:])
                return True
        keep = _undecided(data, at_line_start)
        done = data[:len(data) - keep] if keep else data
        held = data[len(data) - keep:] if keep else b""
        if done:
            spool.write(to_lf(done) if dot_line < 0 else unstuff(done, at_line_start))
            at_line_start = done[-1] == LF
            after_crlf = done.endswith(b"\r\n")
