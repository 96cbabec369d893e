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
import shlex
import socket
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import pytest

from msmtpd.delivery.pipe_command import PipeCommand
from tests import helpers

HOST = socket.gethostname()
MARKER = "pwned"  # what every shell payload below would create (relative to the working directory)
RECEIVED = re.compile(
    rb"Received: from (?P<helo>[^\n]*) \(\[local\]\)\n"
    rb"\tby " + re.escape(HOST.encode()) + rb" \(msmtpd\) with (?:ESMTP|UTF8SMTP);\n"
    rb"\t[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}\n")
TIMEOUT = 120.0


# -- the corpus --------------------------------------------------------------------


class Address(NamedTuple):
    label: str
    path: bytes  # exactly what follows "MAIL FROM:" / "RCPT TO:"
    verdict: str  # "accept": must be delivered literally; "refuse": must get 5xx; "either"
    literal: Optional[str] = None  # the argument it must become (default: the path without <>)

    def argument(self) -> str:
        if self.literal is not None:
            return self.literal
        text = self.path.decode("utf-8").strip()
        return text[1:-1] if text.startswith("<") and text.endswith(">") else text


ADDRESSES = [
    # shell syntax that is valid in an address: must arrive as one literal argument
    Address("command substitution in quotes", b'<"$(touch pwned)"@example.org>', "accept"),
    Address("backticks in quotes", b'<"`touch pwned`"@example.org>', "accept"),
    Address("backticks and $IFS unquoted", b"<`touch${IFS}pwned`@example.org>", "accept"),
    Address("semicolons in quotes", b'<"a;touch pwned;"@example.org>', "accept"),
    Address("pipe", b"<a|touch${IFS}pwned@example.org>", "accept"),
    Address("ampersands", b"<a&touch${IFS}pwned&@example.org>", "accept"),
    Address("redirection in quotes", b'<"a>pwned"@example.org>', "accept"),
    Address("input redirection in quotes", b'<"a<pwned"@example.org>', "accept"),
    Address("single quotes inside quotes", b"<\"'$(touch pwned)'\"@example.org>", "accept"),
    Address("escaped double quotes", b'<"\\"$(touch pwned)\\""@example.org>', "accept"),
    Address("escaped backslash", b'<"a\\\\b"@example.org>', "accept"),
    Address("glob star", b"<*@example.org>", "accept"),
    Address("glob star alone", b"<*>", "accept"),
    Address("glob question marks", b"<?????@example.org>", "accept"),
    Address("tilde", b"<~root@example.org>", "accept"),
    Address("braces", b"<{a}@example.org>", "accept"),
    Address("variable", b"<$HOME@example.org>", "accept"),
    Address("braced variable", b"<${PATH}>", "accept"),
    Address("%F as address", b"<%F@example.org>", "accept"),
    Address("%F alone", b"<%F>", "accept"),
    Address("space in quotes", b'<"a b"@example.org>', "accept"),
    Address("only spaces in quotes", b'<"   "@example.org>', "accept"),
    Address("hash and bang", b"<a!b#c@example.org>", "accept"),
    Address("quoted local part without domain", b'<"$(touch pwned)">', "accept"),
    Address("command substitution in an address literal", b"<user@[$(touch${IFS}pwned)]>", "accept"),
    Address("semicolons in an address literal", b"<user@[;touch${IFS}pwned;]>", "accept"),
    Address("command substitution in a source route", b"<@$(touch${IFS}pwned):user@example.org>", "accept",
            literal="user@example.org"),
    # shell syntax that is not an address
    Address("unquoted command substitution", b"<$(touch${IFS}pwned)@example.org>", "refuse"),
    Address("unquoted semicolon", b"<a;touch${IFS}pwned@example.org>", "refuse"),
    Address("unquoted space", b"<a touch pwned@example.org>", "refuse"),
    Address("brace expansion", b"<{a,b}@example.org>", "refuse"),
    Address("command after the path", b"<a@example.org>;touch pwned", "refuse"),
    Address("pipe after the path", b"<a@example.org>|touch pwned", "refuse"),
    Address("tab in quotes", b'<"a\ttouch pwned"@example.org>', "refuse"),
    # line breaks and NUL inside a quoted local part
    Address("LF in quotes", b'<"a\ntouch pwned"@example.org>', "refuse"),
    Address("CRLF in quotes", b'<"a\r\ntouch pwned"@example.org>', "refuse"),
    Address("CR in quotes", b'<"a\rtouch pwned"@example.org>', "refuse"),
    Address("backslash-newline in quotes", b'<"a\\\ntouch pwned"@example.org>', "refuse"),
    Address("NUL in quotes", b'<"a\x00touch pwned"@example.org>', "refuse"),
    Address("NUL unquoted", b"<a\x00@example.org>", "refuse"),
    # options for the delivery command
    Address("-oQ", b"<-oQ/tmp/x>", "refuse"),
    Address("-oQ with domain", b"<-oQ/tmp/x@example.org>", "refuse"),
    Address("--help", b"<--help>", "refuse"),
    Address("-f", b"<-f>", "refuse"),
    Address("-f without brackets", b"-f", "refuse"),
    Address("-oQ without brackets", b"-oQ/tmp/x@example.org", "refuse"),
    Address("lone dash", b"<->", "refuse"),
    Address("-oi with domain", b"<-oi@example.org>", "refuse"),
    Address("dash after a source route", b"<@relay.example:-f@example.org>", "refuse"),
    Address("-f as a parameter", b"<a@example.org> -f", "refuse"),
    Address("--help as a parameter", b"<a@example.org> --help", "refuse"),
    Address("quoted -f", b'<"-f"@example.org>', "accept"),
    # lengths (RFC 5321 section 4.5.3.1)
    Address("local part of 64", b"<" + b"l" * 64 + b"@example.org>", "accept"),
    Address("local part of 65", b"<" + b"l" * 65 + b"@example.org>", "refuse"),
    Address("path of 255", b"<a@" + b".".join([b"d" * 62] * 4) + b">", "accept"),
    Address("path of 257", b"<a@" + b".".join([b"d" * 62] * 4) + b"dd>", "refuse"),
    Address("domain over 255", b"<a@" + b".".join([b"d" * 63] * 5) + b">", "refuse"),
    Address("label of 70", b"<a@" + b"c" * 70 + b".example>", "either"),
    Address("line over 4 KiB", b"<" + b"a" * 5000 + b"@example.org>", "refuse"),
    # encodings
    Address("invalid UTF-8", b"<\xff\xfe@example.org>", "refuse"),
    Address("truncated UTF-8 in quotes", b'<"\xc3("@example.org>', "refuse"),
    Address("UTF-8 surrogate", b"<a@\xed\xa0\x80.example>", "refuse"),
    Address("overlong UTF-8 slash", b"<\xc0\xafetc@example.org>", "refuse"),
    Address("UTF-8 address", "<jörg@bücher.example>".encode(), "accept"),
    Address("right-to-left override", "<a\u202e@example.org>".encode(), "either"),
    Address("NEL and line separator", "<a\u0085b\u2028c@example.org>".encode(), "either"),
]


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


def shell_command(out: Path, sender: str) -> str:
    """A command with shell syntax: stores the mail and its NUL-separated
    arguments (-f SENDER -- RECIPIENT...) in a new directory under ``out``."""
    return (f"d=$(mktemp -d {shlex.quote(str(out))}/m.XXXXXX) && cat > \"$d/mail\" && "
            f"printf '%s\\0' -f {sender} -- > \"$d/args\"")


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


class Delivery(NamedTuple):
    sender: str
    recipients: List[str]
    mail: bytes  # what msmtpd piped to the command


def deliveries(kind: str, tmp_path: Path) -> List[Delivery]:
    found = []
    if kind == "direct":
        for stored in helpers.delivered(tmp_path / "Maildir"):
            # msmtpd-maildir writes its -f argument as Return-Path and each
            # recipient argument as Delivered-To, then the mail as piped
            head = re.match(rb"Return-Path: <(?P<sender>[^\n]*)>\n(?P<rcpts>(?:Delivered-To: [^\n]*\n)*)",
                            stored)
            assert head, stored[:300]
            recipients = [line[len(b"Delivered-To: "):].decode("utf-8")
                          for line in head["rcpts"].splitlines()]
            found.append(Delivery(head["sender"].decode("utf-8"), recipients, stored[head.end():]))
        return found
    for directory in sorted((tmp_path / "out").iterdir()):
        words = (directory / "args").read_bytes().split(b"\0")
        assert words[-1] == b"", words
        arguments = [w.decode("utf-8") for w in words[:-1]]
        assert arguments[0] == "-f" and arguments[2] == "--", arguments
        found.append(Delivery(arguments[1], arguments[3:], (directory / "mail").read_bytes()))
    return found


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
