"""Unit tests of CHUNKING (RFC 3030) in the session, on in-memory streams:
BDAT carries the message in exact-size chunks with DATA's guarantees, and
refused chunks are read and discarded so the stream stays in step."""

from __future__ import annotations

import re
from typing import List

import pytest

from msmtpd.smtp import replies
from msmtpd.smtp.chunking import MAX_CHUNK_SIZE_DIGITS, parse_bdat
from msmtpd.smtp.replies import Reply
from msmtpd.smtp.session import MAX_CONSECUTIVE_ERRORS, Settings
from tests.support.session_script import HOST, FakeDeliver, Result, lines, talk

ENVELOPE = ("EHLO client.test", "MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>")
MESSAGE = b"Subject: chunks\r\n\r\nfirst line\r\n.\r\n..two dots\r\nlast line\r\n"


def bdat(data: bytes, last: bool = False) -> bytes:
    """One BDAT command and its chunk."""
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


def chunked(*chunks: bytes) -> bytes:
    """The whole message in these chunks, the last one with LAST."""
    return b"".join(bdat(chunk, last=index == len(chunks) - 1) for index, chunk in enumerate(chunks))


def session(*parts: bytes, settings: Settings | None = None, deliver: FakeDeliver | None = None,
            quit: bool = True) -> Result:
    return talk(lines(*ENVELOPE) + b"".join(parts) + (b"QUIT\r\n" if quit else b""),
                settings=settings, deliver=deliver)


def undated(mail: bytes) -> bytes:
    """The mail with the Received header's date line blanked."""
    return re.sub(rb"\n\t[A-Z][a-z]{2}, [^\n]*\n", b"\n\tDATE\n", mail, count=1)


def by_data(message: bytes) -> bytes:
    """What the command reads when ``message`` is sent with DATA."""
    stuffed = re.sub(rb"(?m)^\.", b"..", message)
    result = session(b"DATA\r\n" + stuffed + b".\r\n")
    assert [m.data for m in result.mails], result.replies
    return undated(result.mails[0].data)


def test_ehlo_offers_chunking() -> None:
    result = talk(lines("EHLO client.test", "QUIT"))
    assert "CHUNKING" in result.replies[1].text.split("\n")
    assert "BINARYMIME" not in result.replies[1].text


@pytest.mark.parametrize("cuts", [[], [5], [17, 18, 19], [30, 31, 40, 50], list(range(1, len(MESSAGE)))])
def test_chunks_give_the_mail_data_gives(cuts: List[int]) -> None:
    """However the message is cut (a CR and its LF in different chunks,
    a "." line, a chunk of one octet), the mail is byte for byte DATA's."""
    bounds = [0, *cuts, len(MESSAGE)]
    chunks = [MESSAGE[a:b] for a, b in zip(bounds, bounds[1:])]
    result = session(chunked(*chunks))
    assert result.codes[4:] == [250] * len(chunks) + [221]
    assert result.replies[4] == (replies.CHUNK_OK.format(size=len(chunks[0])) if len(chunks) > 1
                                 else replies.DELIVERED)
    assert len(result.mails) == 1
    assert undated(result.mails[0].data) == by_data(MESSAGE)
    assert result.mails[0].data.endswith(b"\n.\n..two dots\nlast line\n")


def test_a_lone_dot_line_is_content_not_an_end() -> None:
    result = session(bdat(b"a\r\n.\r\nMAIL FROM:<evil@example.org>\r\n", last=True))
    assert result.codes[4:] == [250, 221]
    assert result.mails[0].data.endswith(b"a\n.\nMAIL FROM:<evil@example.org>\n")


def test_a_cr_split_from_its_lf_is_one_line_end_and_a_bare_cr_stays() -> None:
    result = session(bdat(b"one\r"), bdat(b"\ntwo\rthree\r"), bdat(b"x\r\n", last=True))
    assert result.mails[0].data.endswith(b"\none\ntwo\rthree\rx\n")


def test_a_message_without_a_final_line_end_gets_one() -> None:
    assert session(bdat(b"no end", last=True)).mails[0].data.endswith(b"\nno end\n")
    assert session(bdat(b"cr end\r", last=True)).mails[0].data.endswith(b"\ncr end\n")
    assert undated(session(bdat(b"Subject: x\r\n\r\nbody", last=True)).mails[0].data) == \
        by_data(b"Subject: x\r\n\r\nbody\r\n")


def test_bdat_0_last_is_valid() -> None:
    empty = session(b"BDAT 0 LAST\r\n")
    assert empty.codes[4:] == [250, 221]
    assert undated(empty.mails[0].data) == by_data(b"")
    after = session(bdat(b"text\r\n"), b"BDAT 0 last\r\n")
    assert after.codes[4:] == [250, 250, 221]
    assert after.mails[0].data.endswith(b"\ntext\n")


def test_pipelined_chunks_are_answered_in_order_and_the_next_transaction_follows() -> None:
    script = (chunked(b"a\r\n", b"b\r\n", b"c\r\n") + lines(*ENVELOPE[1:]) + chunked(b"second\r\n"))
    result = session(script)
    assert result.codes[4:] == [250, 250, 250, 250, 250, 250, 221]
    assert [m.data.split(b"\n", 3)[3] for m in result.mails] == [b"a\nb\nc\n", b"second\n"]


@pytest.mark.parametrize("answer", [replies.DELIVERY_TEMPFAIL.format(why="exit 75"),
                                    replies.DELIVERY_FAILED.format(why="exit 1"),
                                    replies.QUEUED.format(id="abc")])
def test_the_reply_to_bdat_last_is_the_deliverys(answer: Reply) -> None:
    result = session(chunked(b"x\r\n"), deliver=FakeDeliver(answer))
    assert result.replies[4] == answer


@pytest.mark.parametrize("before", [(), ("EHLO client.test",),
                                    ("EHLO client.test", "MAIL FROM:<a@example.org>")])
def test_bdat_without_a_transaction_is_503_and_its_chunk_is_discarded(before: tuple) -> None:
    chunk = b"NOOP\r\nMAIL FROM:<evil@example.org>\r\n"
    result = talk(lines(*before) + bdat(chunk, last=True) + b"BDAT 3\r\nRCP" + lines("NOOP", "QUIT"))
    expected = replies.NEED_RCPT if len(before) == 2 else replies.NEED_MAIL
    assert result.replies[1 + len(before):] == [expected, expected, replies.OK,
                                                replies.BYE.format(host=HOST)]
    assert result.mails == []


def test_data_after_bdat_is_503_and_rset_starts_over() -> None:
    result = session(bdat(b"part\r\n"), lines("DATA", "RSET", *ENVELOPE[1:], "DATA"),
                     b"whole\r\n.\r\n")
    assert result.replies[5] == replies.DATA_AFTER_BDAT
    assert result.codes[6:] == [250, 250, 250, 354, 250, 221]
    assert len(result.mails) == 1 and result.mails[0].data.endswith(b"\nwhole\n")


@pytest.mark.parametrize("argument", ["", "x", "-1", "+5", "5 FIRST", "5 LAST now", "²", "0x10", "1.5"])
def test_a_size_that_is_not_a_number_is_501(argument: str) -> None:
    assert parse_bdat(argument) == replies.BDAT_SYNTAX
    result = session(lines(f"BDAT {argument}".strip(), "NOOP"))
    assert result.replies[4] == replies.BDAT_SYNTAX
    assert result.codes[5:] == [250, 221]


def test_a_size_too_large_to_be_a_number_we_accept_is_501() -> None:
    assert parse_bdat("9" * MAX_CHUNK_SIZE_DIGITS) == (int("9" * MAX_CHUNK_SIZE_DIGITS), False)
    result = session(lines("BDAT " + "9" * (MAX_CHUNK_SIZE_DIGITS + 1) + " LAST", "NOOP"))
    assert result.replies[4] == replies.BDAT_SIZE_TOO_LARGE.format(digits=MAX_CHUNK_SIZE_DIGITS)
    assert result.codes[5:] == [250, 221]


def test_body_binarymime_is_refused_555() -> None:
    result = talk(lines("EHLO client.test", "MAIL FROM:<a@example.org> BODY=BINARYMIME", "QUIT"))
    assert result.replies[2] == replies.BINARYMIME_REFUSED


def test_the_chunk_that_crosses_max_size_is_discarded_552_and_the_transaction_is_over() -> None:
    """The chunks pipelined behind it are read, discarded and answered
    alike, without counting as mistakes; the next MAIL starts afresh."""
    too_big = replies.MESSAGE_TOO_BIG.format(limit=100)
    behind = b"".join(bdat(b"MAIL FROM:<x@example.org>\r\n") for _ in range(MAX_CONSECUTIVE_ERRORS + 5))
    script = (bdat(b"a" * 60 + b"\r\n") + bdat(b"b" * 60 + b"\r\n") + behind + bdat(b"end\r\n", last=True)
              + lines("BDAT 4 LAST") + b"next" + lines(*ENVELOPE[1:]) + chunked(b"small\r\n"))
    result = session(script, settings=Settings(hostname=HOST, max_size=100))
    codes = result.codes[4:]
    assert result.replies[5] == too_big
    assert result.replies[6:6 + MAX_CONSECUTIVE_ERRORS + 6] == [too_big] * (MAX_CONSECUTIVE_ERRORS + 6)
    assert codes[-5:] == [503, 250, 250, 250, 221]  # after LAST the old failure is forgotten
    assert [m.data.split(b"\n", 3)[3] for m in result.mails] == [b"small\n"]


def test_a_single_chunk_over_max_size_is_552_after_reading_it() -> None:
    result = session(bdat(b"x" * 500, last=True), lines("NOOP"),
                     settings=Settings(hostname=HOST, max_size=100))
    assert result.replies[4] == replies.MESSAGE_TOO_BIG.format(limit=100)
    assert result.codes[5:] == [250, 221]
    assert result.mails == []


@pytest.mark.parametrize("cut", [b"BDAT 10 LAST\r\nabc", b"BDAT 3\r\nabc", b"BDAT 3\r\nabcBDAT 5 LAST\r\n",
                                 b"BDAT 3\r\nabcBDAT 0"])
def test_a_client_that_goes_away_before_bdat_last_is_answered_delivers_nothing(cut: bytes) -> None:
    result = session(cut, quit=False)
    assert result.mails == []
    assert not result.quit


def test_rset_drops_the_chunks_received() -> None:
    result = session(bdat(b"dropped\r\n"), lines("RSET", *ENVELOPE[1:]), chunked(b"kept\r\n"))
    assert [m.data.split(b"\n", 3)[3] for m in result.mails] == [b"kept\n"]


def test_a_large_message_in_chunks_rolls_over_to_a_file_and_arrives_whole() -> None:
    line = b"0123456789" * 7 + b"\r\n"
    big = line * 40_000  # about 2.9 MB, past the spool's memory limit
    third = len(big) // 3 + 1  # cuts inside lines
    result = session(chunked(big[:third], big[third:2 * third], big[2 * third:]))
    assert result.codes[4:] == [250, 250, 250, 221]
    assert result.mails[0].data.split(b"\n", 3)[3] == big.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("settings", [
    Settings(hostname=HOST, tls_required=True),
    Settings(hostname=HOST, auth=object()),  # type: ignore[arg-type]
])
def test_a_gated_bdat_is_530_and_its_chunk_is_still_discarded(settings: Settings) -> None:
    script = lines("EHLO client.test") + bdat(b"QUIT\r\nQUIT\r\n", last=True) + lines("NOOP", "QUIT")
    result = talk(script, settings=settings)
    assert result.codes[2:] == [530, 250, 221]

