"""DATA and BDAT split anywhere: the chunk-at-a-time conversion of
msmtpd.smtp.message (CRLF to LF, dot-unstuffing, the final dot) against a
reference model written the slow, obvious way, and the edges where a chunk
ends in a CR or in the first octets of a dot line."""

from __future__ import annotations

import errno
import io
import re
from typing import Callable, List, NamedTuple, Sequence

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from msmtpd.net.line_reader import LineReader
from msmtpd.smtp import message
from msmtpd.smtp.chunking import ChunkedMessage
from msmtpd.smtp.message import Spool, _write_all, receive_data, to_lf

# Octets that make the edges likely: CR, LF and dots, between letters.
OCTETS = st.lists(st.sampled_from([b"\r", b"\n", b".", b"x", b"\r\n", b"\r\n.", b"\r\n.\r\n"]),
                  max_size=40).map(b"".join)
CUTS = st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=12)


class Received(NamedTuple):
    complete: bool
    message: bytes
    rest: bytes


@pytest.fixture(scope="module", autouse=True, params=["bytes methods", "regular expressions"])
def search_path(request: pytest.FixtureRequest) -> object:
    """Every test runs twice: as small texts are searched (bytes methods
    alone) and as large ones are (the regular expressions), whatever the
    sizes a test uses."""
    saved = message.REGEX_WORTHWHILE
    message.REGEX_WORTHWHILE = 0 if request.param == "regular expressions" else 1 << 62
    yield request.param
    message.REGEX_WORTHWHILE = saved


def split(data: bytes, sizes: Sequence[int]) -> Callable[[int], bytes]:
    """A recv that hands out ``data`` in pieces of ``sizes`` (cycled)."""
    stream = io.BytesIO(data)
    turns = iter(sizes * (len(data) + 1))
    return lambda n: stream.read(min(n, next(turns)))


def receive(wire: bytes, sizes: Sequence[int], after_crlf: bool = True) -> Received:
    reader = LineReader(split(wire, sizes))
    spool = Spool(memory_limit=16)  # a file after 16 octets: both paths of the spool
    complete = receive_data(reader, spool, after_crlf)
    message = spool.read_all()
    spool.close()
    rest = []
    while True:
        chunk = reader.read_chunk()
        if not chunk:
            return Received(complete, message, b"".join(rest))
        rest.append(chunk)


def reference(wire: bytes, after_crlf: bool = True) -> Received:
    """RFC 5321's rules read literally: the message ends at the first
    CRLF.CRLF (counting the DATA line's own line end), CRLF becomes LF and
    nothing else changes but a dot removed from the start of each line."""
    full = (b"\r\n" if after_crlf else b"\n") + wire
    end = full.find(b"\r\n.\r\n")
    if end < 0:
        return Received(False, b"", b"")
    content = full[2 if after_crlf else 1:end + 2].replace(b"\r\n", b"\n")
    return Received(True, re.sub(rb"(?m)^\.", b"", content), full[end + 5:])


@settings(max_examples=600, derandomize=True)
@example(text=b"a\r")
@example(text=b"\r\r\n\n")
@example(text=b"x\ny\r\n")
@given(text=OCTETS)
def test_to_lf_is_replacing_crlf(text: bytes) -> None:
    """The fast conversion gives what replace(CRLF, LF) gives, for any
    mix of CRLF, bare LF, lone CR (also at the very end)."""
    assert to_lf(text) == text.replace(b"\r\n", b"\n")


@settings(max_examples=600, derandomize=True)
@example(body=b"x\r", sizes=[2], after_crlf=True)
@example(body=b"\r\n.", sizes=[3], after_crlf=True)
@example(body=b".", sizes=[1], after_crlf=False)
@given(body=OCTETS, sizes=CUTS, after_crlf=st.booleans())
def test_receive_data_matches_the_reference_split_anywhere(body: bytes, sizes: List[int],
                                                          after_crlf: bool) -> None:
    """However the wire is cut, receive_data gives the reference's
    message and leaves the same octets for the next command; without a
    final dot it reports an incomplete message."""
    wire = body + b"\r\n.\r\nQUIT\r\n"
    assert receive(wire, sizes, after_crlf) == reference(wire, after_crlf)
    if not reference(body, after_crlf).complete:
        assert receive(body, sizes, after_crlf).complete is False


@pytest.mark.parametrize(("pieces", "expected"), [
    ([b"a\r", b"b\r\n.\r\n"], b"a\rb\n"),  # a lone CR ending a chunk stays
    ([b"a\r", b"\nb\r\n.\r\n"], b"a\nb\n"),  # a CR ending a chunk, its LF starting the next
    ([b"a\r", b"\r", b"\n.\r\n"], b"a\r\n"),  # two CRs across chunks, the second ends the line
    ([b"a\r\n.", b"\r\n"], b"a\n"),  # the final dot line split after its dot
    ([b"a\r\n.\r", b"\n"], b"a\n"),  # ... after its CR
    ([b"a\r", b"\n.", b"\r", b"\n"], b"a\n"),  # ... everywhere
    ([b"a\r\n.", b"b\r\n.\r\n"], b"a\nb\n"),  # a stuffed line split after its dot
    ([b"a\r\n.", b"\rb\r\n.\r\n"], b"a\n\rb\n"),  # ".\r" then not LF: content
    ([b"a\r\n..", b"\r\n.\r\n"], b"a\n.\n"),
    ([b".", b"abc", b"def\r\n.\r\n"], b"abcdef\n"),  # a dot line longer than its first chunk
    ([b"a\n.", b"\r\n", b"b\r\n.\r\n"], b"a\n\nb\n"),  # bare LF then ".": content, unstuffed
])
def test_chunk_edges(pieces: List[bytes], expected: bytes) -> None:
    """Chunks that end in a CR or inside a line that starts with a dot."""
    assert receive(b"".join(pieces), [len(piece) for piece in pieces]) == Received(True, expected, b"")


@pytest.mark.parametrize(("after_crlf", "expected"), [(True, Received(True, b"", b"x\r\n.\r\n")),
                                                      (False, Received(True, b"\nx\n", b""))])
def test_dot_line_split_right_after_the_data_command(after_crlf: bool, expected: Received) -> None:
    """A "." line first is the end only when the DATA line ended in CRLF."""
    assert receive(b".\r\nx\r\n.\r\n", [1, 1, 1], after_crlf) == expected


@pytest.mark.parametrize("tail", [b"", b"\r"])
def test_an_unfinished_line_is_stored_as_it_arrives(tail: bytes) -> None:
    """No line is buffered whole: what arrived is in the spool already
    (all but a final CR) when the input ends mid-line."""
    reader = LineReader(split(b"y" * 5000 + tail, [1000]))
    spool = Spool()
    assert receive_data(reader, spool) is False
    assert spool.size == 5000
    spool.close()


@settings(max_examples=300, derandomize=True)
@given(message=OCTETS, sizes=CUTS)
def test_bdat_pieces_give_the_whole_converted(message: bytes, sizes: List[int]) -> None:
    """BDAT's pieces, cut anywhere, convert like the whole message; a final
    CR or unfinished last line is ended with LF."""
    chunked = ChunkedMessage(Spool(memory_limit=16))
    recv = split(message, sizes)
    while True:
        piece = recv(1 << 20)
        if not piece:
            break
        chunked.add(piece)
    chunked.finish()
    expected = message.replace(b"\r\n", b"\n")
    if expected.endswith(b"\r"):
        expected = expected[:-1] + b"\n"
    elif expected and not expected.endswith(b"\n"):
        expected += b"\n"
    assert chunked.spool.read_all() == expected
    chunked.close()


class Trickle(io.RawIOBase):
    """An unbuffered file that takes at most ``most`` octets a write."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.data = b""

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        taken = bytes(data)[:self.most]  # type: ignore[call-overload]
        self.data += taken
        return len(taken)


def test_short_writes_are_continued() -> None:
    file = Trickle(3)
    _write_all(file, b"0123456789")  # type: ignore[arg-type]
    assert file.data == b"0123456789"


def test_a_write_that_takes_nothing_is_a_full_disk() -> None:
    with pytest.raises(OSError) as raised:
        _write_all(Trickle(0), b"x")  # type: ignore[arg-type]
    assert raised.value.errno == errno.ENOSPC


@pytest.mark.parametrize("kinds", [["sparse", "dense", "dense", "sparse", "sparse"],
                                   ["dense", "sparse", "dense"]])
def test_dense_and_sparse_dot_lines_alike(kinds: List[str]) -> None:
    """Chunks thick with dot-stuffed lines (unstuffed by bytes.replace) and
    chunks with few (by the regular expression) give the same message."""
    blocks = {"dense": b"..\r\n.x\r\n" * 40, "sparse": b"w" * 300 + b"\r\n..y\r\n"}
    body = b"".join(blocks[kind] for kind in kinds)
    sizes = [len(blocks[kind]) for kind in kinds]
    wire = body + b".\r\n"
    assert receive(wire, sizes) == reference(wire)
