"""Hostile addresses and EHLO names through a real ``msmtpd --inetd``.

Each corpus entry is sent in its own transaction of one pipelined session
per delivery command; the commands cover both ways msmtpd starts them:
directly (``msmtpd-maildir DIR -f %F --``, no shell syntax) and through
``/bin/sh -c`` (the sender written as ``%F``, ``"%F"`` and ``'%F'``; the
command records its arguments NUL-separated).  For every address the
outcome must be a 5xx reply to the command that carried it, or a delivery
whose arguments are the address text itself: no expansion, no word
splitting, no globbing, no option.  Every shell payload would create the
file ``pwned`` in the working directory; it must never appear (nor any file
but the ones the commands write).  For every EHLO name the delivered mail
must be the client's lines after exactly one ``Received:`` header naming
the sanitised EHLO name: no header injection.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import pytest

from msmtpd.delivery.pipe_command import PipeCommand
from tests import helpers
from tests.support.hostile import ADDRESSES, Delivery, deliveries, shell_command

HOST = socket.gethostname()
MARKER = "pwned"  # what every shell payload below would create (relative to the working directory)
RECEIVED = re.compile(
    rb"Received: from (?P<helo>[^\n]*) \(\[local\]\)\n"
    rb"\tby " + re.escape(HOST.encode()) + rb" \(msmtpd\) with (?:ESMTP|UTF8SMTP);\n"
    rb"\t[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}\n")
TIMEOUT = 120.0


# -- the corpus --------------------------------------------------------------------






class Name(NamedTuple):
    label: str
    name: bytes  # exactly what follows "EHLO "
    received_from: Optional[str]  # the name in Received:; None: the EHLO before it stays


EHLO_NAMES = [
    Name("command substitution", b"$(touch pwned)", "$?touch?pwned?"),
    Name("backticks", b"`touch pwned`", "`touch?pwned`"),
    Name("shell operators", b"a;touch pwned|b&c>d", "a;touch?pwned|b&c>d"),
    Name("CRLF and a header", b"a\r\nX-Injected: yes", "a"),
    Name("LF and a header", b"a\nX-Injected: yes", "a"),
    Name("CRLF, TAB and a continuation", b"a\r\n\tX-Injected: yes", "a"),
    Name("CR and a header", b"a\rX-Injected: yes", None),
    Name("NUL and a header", b"a\x00X-Injected: yes", None),
    Name("vertical tab", b"a\x0bX-Injected: yes", None),
    Name("trailing CR", b"a\r", None),
    Name("line separator and a header", "a\u2028X-Injected: yes".encode(), "a?X-Injected:?yes"),
    Name("NEL and a header", "a\u0085X-Injected: yes".encode(), "a?X-Injected:?yes"),
    Name("comment delimiters and backslash", b'evil (comment) \\ "q"', 'evil??comment????"q"'),
    Name("a header as the name", b"Received: from evil", "Received:?from?evil"),
    Name("TAB", b"a\tb", "a?b"),
    Name("300 characters", b"x" * 300, "x" * 255),
    Name("line over 4 KiB", b"y" * 5000, None),
    Name("invalid UTF-8", b"\xff\xfe", None),
    Name("UTF-8", "bücher.example".encode(), "b?cher.example"),
    Name("address literal", b"[127.0.0.1]", "[127.0.0.1]"),
    Name("option-like", b"-oQ/tmp/x", "-oQ/tmp/x"),
]


# -- delivery commands ----------------------------------------------------------------




SENDER_FORMS = {"shell-unquoted": "%F", "shell-double-quoted": '"%F"', "shell-single-quoted": "'%F'"}


def command_for(kind: str, tmp_path: Path) -> str:
    if kind == "direct":
        command = helpers.maildir_command(tmp_path / "Maildir")
        assert not PipeCommand(command).shell, "the direct path must not involve a shell"
        return command
    (tmp_path / "out").mkdir()
    command = shell_command(tmp_path / "out", SENDER_FORMS[kind])
    assert PipeCommand(command).shell
    return command






def content(case: int) -> bytes:
    """The client's DATA lines of one transaction, and the final dot."""
    return f"X-Case: {case}\r\nSubject: hostile case {case}\r\n\r\nbody of case {case}\r\n.\r\n".encode()


def piped(case: int) -> bytes:
    """What the command must get after the Received: header."""
    return f"X-Case: {case}\nSubject: hostile case {case}\n\nbody of case {case}\n".encode()


def by_case(found: List[Delivery]) -> Dict[int, Delivery]:
    result: Dict[int, Delivery] = {}
    for delivery in found:
        match = re.search(rb"^X-Case: (\d+)$", delivery.mail, re.M)
        assert match, delivery.mail[:300]
        case = int(match[1])
        assert case not in result, f"case {case} delivered twice"
        result[case] = delivery
    return result


# -- running a session ------------------------------------------------------------------


def reply_codes(output: bytes) -> List[int]:
    """The code of each reply; every line must be a well-formed reply line."""
    codes = []
    assert output.endswith(b"\r\n"), output[-200:]
    for line in output[:-2].split(b"\r\n"):
        assert re.fullmatch(rb"[2-5][0-9][0-9][ -][^\r\n]*", line), line
        if line[3:4] == b" ":
            codes.append(int(line[:3]))
    return codes


def lines_of(text: bytes) -> int:
    """How many command lines ``text`` (without its CRLF) is read as."""
    return text.count(b"\n") + 1


def converse(command: str, script: bytes) -> List[int]:
    result = helpers.run_inetd([f"--command={command}"], script, timeout=TIMEOUT)
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stderr == b""
    return reply_codes(result.stdout)


def payload_traces(tmp_path: Path, kind: str) -> List[str]:
    """Signs that a shell ran something it got from the client: the marker
    file, or any other file beside the command's own output."""
    problems = []
    if (tmp_path / MARKER).exists():
        problems.append(f"a shell ran a payload: {tmp_path / MARKER} exists")
    unexpected = set(os.listdir(tmp_path)) - ({"Maildir"} if kind == "direct" else {"out"})
    if unexpected:
        problems.append(f"files appeared in the working directory: {sorted(unexpected)}")
    return problems


def take(codes: List[int], count: int) -> List[int]:
    assert len(codes) >= count, f"replies missing: wanted {count} more, have {codes}"
    group = codes[:count]
    del codes[:count]
    return group


# -- the tests --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["direct", "shell-unquoted", "shell-double-quoted", "shell-single-quoted"])
def test_hostile_addresses_are_refused_or_passed_literally(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each address is tried as the sender and as a recipient; a fallback
    sender and a plain second recipient make sure every transaction is
    delivered, so what reached the command is always visible."""
    monkeypatch.chdir(tmp_path)  # where the payloads would create the marker
    command = command_for(kind, tmp_path)
    script = b""
    for case, entry in enumerate(ADDRESSES):
        script += (b"RSET\r\n" + f"EHLO case{case}.example\r\n".encode()
                   + b"MAIL FROM:" + entry.path + b" SMTPUTF8\r\n"
                   + f"MAIL FROM:<fallback{case}@example.org> SMTPUTF8\r\n".encode()
                   + b"RCPT TO:" + entry.path + b"\r\n"
                   + f"RCPT TO:<rcpt{case}@example.org>\r\nDATA\r\n".encode() + content(case))
    codes = converse(command, script + b"QUIT\r\n")
    assert take(codes, 1) == [220]

    problems: List[str] = []
    expected: Dict[int, Tuple[str, List[str]]] = {}
    for case, entry in enumerate(ADDRESSES):
        assert take(codes, 2) == [250, 250], entry.label
        as_sender = take(codes, lines_of(entry.path))
        fallback = take(codes, 1)
        as_recipient = take(codes, lines_of(entry.path))
        assert take(codes, 3) == [250, 354, 250], entry.label
        sender_accepted = as_sender == [250] and fallback == [503]
        sender_refused = all(500 <= c < 600 for c in as_sender) and fallback == [250]
        recipient_accepted = as_recipient == [250]
        recipient_refused = all(500 <= c < 600 for c in as_recipient)
        for role, accepted, refused, replies in (("sender", sender_accepted, sender_refused, as_sender),
                                                 ("recipient", recipient_accepted, recipient_refused,
                                                  as_recipient)):
            if not (accepted or refused):
                problems.append(f"{entry.label} as {role}: replies {replies}, neither 250 nor 5xx")
            elif entry.verdict == "accept" and not accepted:
                problems.append(f"{entry.label} as {role}: refused ({replies}), but it is a valid address")
            elif entry.verdict == "refuse" and not refused:
                problems.append(f"{entry.label} as {role}: accepted, but it must be refused")
        sender = entry.argument() if sender_accepted else f"fallback{case}@example.org"
        recipients = ([entry.argument()] if recipient_accepted else []) + [f"rcpt{case}@example.org"]
        expected[case] = (sender, recipients)
    assert codes == [221]

    delivered = by_case(deliveries(kind, tmp_path))
    assert sorted(delivered) == list(range(len(ADDRESSES)))
    for case, entry in enumerate(ADDRESSES):
        got = delivered[case]
        if (got.sender, got.recipients) != expected[case]:
            problems.append(f"{entry.label}: the command got -f {got.sender!r} -- {got.recipients!r}, "
                            f"not {expected[case]!r}")
        match = RECEIVED.match(got.mail)
        if not match or got.mail[match.end():] != piped(case):
            problems.append(f"{entry.label}: piped mail is not Received: + the client's lines: {got.mail!r}")
    problems.extend(payload_traces(tmp_path, kind))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kind", ["direct", "shell-unquoted"])
def test_hostile_ehlo_names_cannot_inject_headers(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a plain EHLO, the hostile one; the mail that follows must hold
    exactly one Received: header, naming the sanitised hostile name (or the
    plain one where the hostile line was refused), then the client's lines."""
    monkeypatch.chdir(tmp_path)
    command = command_for(kind, tmp_path)
    script = b""
    for case, entry in enumerate(EHLO_NAMES):
        script += (b"RSET\r\n" + f"EHLO case{case}.example\r\n".encode()
                   + b"EHLO " + entry.name + b"\r\n"
                   + f"MAIL FROM:<sender{case}@example.org>\r\nRCPT TO:<rcpt{case}@example.org>\r\n"
                     f"DATA\r\n".encode() + content(case))
    codes = converse(command, script + b"QUIT\r\n")
    assert take(codes, 1) == [220]
    for entry in EHLO_NAMES:
        assert take(codes, 2) == [250, 250], entry.label
        group = take(codes, lines_of(entry.name))
        if entry.received_from is None:
            assert all(500 <= c < 600 for c in group), (entry.label, group)
        else:
            assert group[0] == 250 and all(500 <= c < 600 for c in group[1:]), (entry.label, group)
        assert take(codes, 4) == [250, 250, 354, 250], entry.label
    assert codes == [221]

    delivered = by_case(deliveries(kind, tmp_path))
    assert sorted(delivered) == list(range(len(EHLO_NAMES)))
    problems = []
    for case, entry in enumerate(EHLO_NAMES):
        got = delivered[case]
        assert (got.sender, got.recipients) == (f"sender{case}@example.org", [f"rcpt{case}@example.org"])
        match = RECEIVED.match(got.mail)
        name = entry.received_from if entry.received_from is not None else f"case{case}.example"
        if not match or match["helo"] != name.encode() or got.mail[match.end():] != piped(case):
            problems.append(f"{entry.label}: wanted Received: from {name} and the client's lines, "
                            f"got {got.mail!r}")
    problems.extend(payload_traces(tmp_path, kind))
    assert not problems, "\n".join(problems)
