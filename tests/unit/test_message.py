"""DATA reception and spooling: receive_data() and Spool on their own and
through the session."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Callable, List, NamedTuple, Tuple

import pytest

from msmtpd.net.connection import in_memory
from msmtpd.net.line_reader import LineReader
from msmtpd.smtp import replies
from msmtpd.smtp.message import SPOOL_MEMORY_LIMIT, Spool, receive_data
from msmtpd.smtp.replies import Reply
from msmtpd.smtp.session import Envelope, Session, Settings

Recv = Callable[[int], bytes]


# -- helpers ---------------------------------------------------------------


def pieces(data: bytes, size: int) -> Recv:
    """A recv that never returns more than ``size`` bytes at once."""
    stream = io.BytesIO(data)
    return lambda n: stream.read(min(n, size))


class Received(NamedTuple):
    complete: bool
    message: bytes
    rest: bytes


def receive(wire: bytes, size: int = 1 << 20) -> Received:
    """Run receive_data on ``wire`` read ``size`` bytes at a time; return
    whether the final dot came, the spooled message and what is left unread."""
    reader = LineReader(pieces(wire, size))
    spool = Spool()
    complete = receive_data(reader, spool)
    message = spool.read_all()
    rest: List[bytes] = []
    while True:
        chunk = reader.read_chunk()
        if not chunk:
            break
        rest.append(chunk)
    return Received(complete, message, b"".join(rest))


class Recorder:
    """A deliver callable that keeps the envelope and the message."""

    def __init__(self) -> None:
        self.mails: List[Tuple[Envelope, bytes]] = []
        self.raw = b""

    def __call__(self, envelope: Envelope, spool: Spool) -> Reply:
        self.mails.append((envelope, spool.read_all()))
        return replies.DELIVERED


def final_lines(raw: bytes) -> List[bytes]:
    """The last line of each reply (multi-line EHLO counts once)."""
    return [line for line in raw.split(b"\r\n") if line[3:4] == b" "]


def session(wire: bytes, settings: Settings | None = None, size: int = 1 << 20,
            recorder: Recorder | None = None) -> Tuple[List[int], Recorder]:
    """Run a session on ``wire``; return the reply codes and the recorder."""
    recorder = recorder or Recorder()
    out = io.BytesIO()
    Session(in_memory(pieces(wire, size), out), settings or Settings(hostname="mx.test"), recorder).run()
    recorder.raw = out.getvalue()
    return [int(line[:3]) for line in final_lines(recorder.raw)], recorder


HEAD = b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"


def without_received(data: bytes) -> bytes:
    assert data.startswith(b"Received: ")
    lines = data.split(b"\n")
    index = 1
    while lines[index].startswith(b"\t"):
        index += 1
    return b"\n".join(lines[index:])


# -- the end of DATA -----------------------------------------------------------


def test_crlf_dot_crlf_ends_data() -> None:
    """A message ends at CRLF.CRLF; what follows is left for the next command."""
    got = receive(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert got == Received(True, b"Subject: x\n\nbody\n", b"QUIT\r\n")


def test_empty_message() -> None:
    """A dot right after DATA is an empty message."""
    assert receive(b".\r\n") == Received(True, b"", b"")
    assert receive(b".\r\nNOOP\r\n") == Received(True, b"", b"NOOP\r\n")


def test_message_of_one_empty_line() -> None:
    """An empty line then the dot is a one-line message."""
    assert receive(b"\r\n.\r\n") == Received(True, b"\n", b"")


def test_output_has_lf_line_endings() -> None:
    """Every CRLF becomes LF in the spooled message."""
    got = receive(b"a\r\nb\r\n\r\nc\r\n.\r\n")
    assert got.message == b"a\nb\n\nc\n"
    assert b"\r" not in got.message


def test_bare_lf_lines_are_content_lines() -> None:
    """Lines ending in a bare LF are accepted as lines of the message."""
    got = receive(b"Subject: x\n\nline one\nline two\r\n.\r\n")
    assert got == Received(True, b"Subject: x\n\nline one\nline two\n", b"")


def test_bare_cr_stays_in_the_line() -> None:
    """A lone CR is content, not a line end."""
    assert receive(b"a\rb\r\n.\r\n").message == b"a\rb\n"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("body", [
    b"a\r\r\nb\r\n",  # a CR just before the CRLF
    b"\rx\r\n\r\n",  # a CR starting a line, then an empty line
    b"x\ny\r\nz\n\r\n",  # bare LF lines and CRLF lines, no CR alone
    b"x\r\n" * 50 + b"a\rb\n" + b"y\r\n" * 50,  # one lone CR among many CRLFs
    b"x\r\n" * 50 + b".y\r\nz\rw\r\n",  # and a dot line
])
def test_only_crlf_becomes_lf(body: bytes, size: int) -> None:
    """Whatever the chunks, CRLF becomes LF and every other CR stays, with
    or without a line that starts with a dot in the same chunk."""
    lines = body.replace(b"\r\n", b"\n").split(b"\n")[:-1]  # every body ends in a line end
    expected = b"".join((line[1:] if line.startswith(b".") else line) + b"\n" for line in lines)
    assert receive(body + b".\r\n", size) == Received(True, expected, b"")


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"..x\r\n.\r\n", b".x\n"),
        (b"..\r\n.\r\n", b".\n"),
        (b"...\r\n.\r\n", b"..\n"),
        (b"a\r\n..b\r\n..\r\n.\r\n", b"a\n.b\n.\n"),
        (b"a.b\r\n.\r\n", b"a.b\n"),
        (b"x\r\n.y\r\n.\r\n", b"x\ny\n"),
    ],
)
def test_dot_unstuffing(wire: bytes, expected: bytes) -> None:
    """A leading dot is removed from each line (RFC 5321 section 4.5.2); others stay."""
    assert receive(wire).message == expected


@pytest.mark.parametrize("sequence",
                         [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\n.\r\r\n", b"\r\n. \r\n"])
def test_smuggling_sequences_do_not_end_data(sequence: bytes) -> None:
    """Only CRLF.CRLF ends DATA: the classic smuggling sequences leave the
    following text inside the message, and nothing is left over."""
    wire = b"Subject: s\r\n\r\nfirst" + sequence + b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<v@x>\r\n.\r\n"
    got = receive(wire)
    assert got.complete
    assert got.rest == b""
    assert got.message.startswith(b"Subject: s\n\nfirst")
    assert got.message.endswith(b"MAIL FROM:<evil@example.org>\nRCPT TO:<v@x>\n")


@pytest.mark.parametrize("sequence", [b"\n.\n", b"\r\n.\n", b"\n.\r\n"])
def test_smuggling_sequences_without_a_real_end_deliver_nothing(sequence: bytes) -> None:
    """A client ending its input with a smuggling sequence has not finished its message."""
    assert receive(b"body" + sequence).complete is False


@pytest.mark.parametrize("sequence", [b"\n.\n", b"\r\n.\n", b"\n.\r\n"])
def test_smuggling_through_the_session(sequence: bytes) -> None:
    """Through the session, a smuggled MAIL/RCPT/DATA is part of one message:
    one delivery, one 250 for the message, no answers to the smuggled commands."""
    smuggled = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nevil\r\n"
    wire = HEAD + b"Subject: s\r\n\r\nfirst" + sequence + smuggled + b".\r\nQUIT\r\n"
    codes, recorder = session(wire)
    assert codes == [220, 250, 250, 250, 354, 250, 221]
    [(envelope, data)] = recorder.mails
    assert envelope.sender == "a@example.org"
    assert envelope.recipients == ["b@example.org"]
    assert b"MAIL FROM:<evil@example.org>\nRCPT TO:<victim@example.org>\nDATA\nevil\n" in data


# -- chunk boundaries ------------------------------------------------------


WIRE = b"Subject: t\r\n\r\n..dots\r\nbare\nlf\r\n.\r\nQUIT\r\n"


@pytest.mark.parametrize("size", range(1, len(WIRE) + 2))
def test_terminator_split_at_every_offset(size: int) -> None:
    """Whatever the chunk size, the same message is received and the bytes
    after the dot are left for the next command."""
    assert receive(WIRE, size) == Received(True, b"Subject: t\n\n.dots\nbare\nlf\n", b"QUIT\r\n")


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7])
def test_terminator_at_every_alignment(size: int) -> None:
    """For each chunk size, shift the message so that CRLF.CRLF starts at
    every offset within a chunk."""
    for shift in range(size + 5):
        body = b"x" * shift
        got = receive(body + b"\r\n.\r\nNOOP\r\n", size)
        assert got == Received(True, body + b"\n", b"NOOP\r\n"), (size, shift)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_smuggling_split_across_chunks_does_not_end_data(size: int) -> None:
    """Split into small pieces, the smuggling sequences still do not end DATA."""
    wire = b"a\n.\nb\r\n.\nc\n.\r\nd\r\n.\r\nQUIT\r\n"
    got = receive(wire, size)
    assert got.complete
    assert got.rest == b"QUIT\r\n"
    assert got.message.startswith(b"a\n") and got.message.endswith(b"d\n")
    assert b"b\n" in got.message and b"c\n" in got.message


def test_pipelined_quit_after_the_dot_through_the_session() -> None:
    """A QUIT sent in the same write as the final dot is answered after the 250."""
    codes, recorder = session(HEAD + b"hello\r\n.\r\nQUIT\r\n")
    assert codes == [220, 250, 250, 250, 354, 250, 221]
    assert without_received(recorder.mails[0][1]) == b"hello\n"


def test_dot_unstuffing_through_the_session() -> None:
    """The session delivers the message dot-unstuffed with LF endings."""
    codes, recorder = session(HEAD + b"..leading\r\n...\r\n..\r\nend\r\n.\r\nQUIT\r\n", size=3)
    assert codes == [220, 250, 250, 250, 354, 250, 221]
    assert without_received(recorder.mails[0][1]) == b".leading\n..\n.\nend\n"


def test_empty_message_through_the_session() -> None:
    """An empty message is delivered as just the Received: header."""
    codes, recorder = session(HEAD + b".\r\nQUIT\r\n")
    assert codes == [220, 250, 250, 250, 354, 250, 221]
    assert without_received(recorder.mails[0][1]) == b""


# -- long lines ------------------------------------------------------------

# Lines this long span many chunks (no line is ever buffered whole: DATA is
# converted as it arrives, holding back two octets at most).
LONG_LINE = 1024 * 1024


def test_line_longer_than_many_chunks() -> None:
    """A single line longer than many chunks is received whole, in order."""
    line = bytes(range(33, 127)) * (3 * LONG_LINE // 94)
    assert len(line) > 2 * LONG_LINE
    got = receive(b"." + line + b"\r\nnext\r\n.\r\nQUIT\r\n", size=64 * 1024)
    assert got.complete
    assert got.message == line + b"\nnext\n"
    assert got.rest == b"QUIT\r\n"


def test_long_line_with_crlf_split_at_the_piece_boundary() -> None:
    """When a long line's CR arrives at the end of a stored piece and its LF
    in the next chunk, the CRLF is still one line end, and the dot after it ends DATA."""
    line = b"z" * LONG_LINE
    got = receive(line + b"\r\n.\r\nQUIT\r\n", size=LONG_LINE + 1)
    assert got == Received(True, line + b"\n", b"QUIT\r\n")


def test_long_line_then_dot_stuffed_line() -> None:
    """After a long line, the next line's leading dot is still unstuffed."""
    line = b"q" * (LONG_LINE + 10)
    got = receive(line + b"\r\n..after\r\n.\r\n", size=100_000)
    assert got.message == line + b"\n.after\n"


# -- Spool -------------------------------------------------------------------


def test_spool_keeps_small_messages_in_memory() -> None:
    """Under the memory limit nothing touches the disk; for delivery the
    message becomes a complete in-memory file (memfd), never a pipe that a
    dying worker could leave half written."""
    spool = Spool(memory_limit=100)
    spool.write(b"hello ")
    spool.write(b"world\n")
    fd = spool.contents()
    assert isinstance(fd, int)
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:msmtpd-message")
    assert spool.read_all() == b"hello world\n"
    assert spool.size == 12
    assert not spool.too_big and spool.error is None
    spool.close()


def test_spool_rolls_over_to_a_file(tmp_path: Path) -> None:
    """Past the memory limit the spool moves to a temporary file: contents()
    is a file descriptor at the start of the whole message."""
    spool = Spool(memory_limit=1000, directory=str(tmp_path))
    parts = [bytes([65 + i % 26]) * 300 for i in range(10)]
    for part in parts:
        spool.write(part)
    fd = spool.contents()
    assert isinstance(fd, int)
    assert os.lseek(fd, 0, os.SEEK_CUR) == 0
    assert spool.read_all() == b"".join(parts)
    assert spool.size == 3000
    assert list(tmp_path.iterdir()) == []  # unnamed: nothing left on disk
    spool.close()


def test_default_spool_rolls_over_past_spool_memory_limit() -> None:
    """The default memory limit is SPOOL_MEMORY_LIMIT."""
    at_limit = Spool()
    at_limit.write(b"a" * SPOOL_MEMORY_LIMIT)
    assert "memfd:" in os.readlink(f"/proc/self/fd/{at_limit.contents()}")
    at_limit.close()
    over = Spool()
    over.write(b"a" * SPOOL_MEMORY_LIMIT)
    over.write(b"b")
    assert "memfd:" not in os.readlink(f"/proc/self/fd/{over.contents()}")
    assert over.read_all() == b"a" * SPOOL_MEMORY_LIMIT + b"b"
    over.close()


def test_spool_over_max_size_stops_storing() -> None:
    """Past max_size the spool is too_big, keeps counting, and stores nothing more."""
    spool = Spool(max_size=10, memory_limit=5)
    spool.write(b"0123456789")
    assert not spool.too_big
    spool.write(b"abcdefghij" * 100)
    assert spool.too_big
    assert spool.size == 1010
    assert len(spool.read_all()) <= 10
    spool.close()


def test_spool_error_is_recorded_not_raised(tmp_path: Path) -> None:
    """A roll-over into a directory that does not exist records the OSError; later writes are ignored."""
    spool = Spool(memory_limit=8, directory=str(tmp_path / "missing"))
    spool.write(b"12345678")
    spool.write(b"9")
    assert isinstance(spool.error, OSError)
    assert spool.error.errno == errno.ENOENT
    spool.write(b"more")
    assert spool.size == 13
    spool.close()


def test_spool_write_error_after_roll_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk error while writing the temporary file is recorded too."""
    spool = Spool(memory_limit=4, directory=str(tmp_path))
    spool.write(b"abcdefgh")
    assert isinstance(spool.contents(), int)

    def full(data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool._file, "write", full)
    spool.write(b"ijkl")
    assert isinstance(spool.error, OSError) and spool.error.errno == errno.ENOSPC
    spool.close()


# -- spool problems through the session ----------------------------------------


def test_spool_failure_gives_451_and_delivers_nothing(tmp_path: Path) -> None:
    """When the spool cannot roll over to disk, the client gets 451 after its
    final dot, nothing is delivered, and the session goes on."""
    settings = Settings(hostname="mx.test", spool_dir=str(tmp_path / "no" / "such" / "dir"))
    big = b"x" * 1000 + b"\r\n"
    message = big * (SPOOL_MEMORY_LIMIT // 1000 + 10)
    again = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nsmall\r\n.\r\nQUIT\r\n"
    codes, recorder = session(HEAD + message + b".\r\n" + again, settings)
    assert codes == [220, 250, 250, 250, 354, 451, 250, 250, 354, 250, 221]
    answer = final_lines(recorder.raw)[5]
    assert answer.startswith(b"451 4.3.0 Cannot store the message")
    assert b"No such file or directory" in answer
    assert len(recorder.mails) == 1
    assert without_received(recorder.mails[0][1]) == b"small\n"


def test_large_message_is_delivered_from_a_file(tmp_path: Path) -> None:
    """A message over the memory limit reaches deliver complete, through the temporary file."""
    settings = Settings(hostname="mx.test", spool_dir=str(tmp_path))
    line = b"0123456789" * 99 + b"\r\n"
    count = SPOOL_MEMORY_LIMIT // len(line) + 50
    seen: List[object] = []

    def deliver(envelope: Envelope, spool: Spool) -> Reply:
        seen.append(spool.contents())
        seen.append(spool.read_all())
        return replies.DELIVERED

    connection = in_memory(io.BytesIO(HEAD + line * count + b".\r\nQUIT\r\n").read1, io.BytesIO())
    Session(connection, settings, deliver).run()
    assert isinstance(seen[0], int)
    assert isinstance(seen[1], bytes)
    assert without_received(seen[1]) == line.replace(b"\r\n", b"\n") * count
