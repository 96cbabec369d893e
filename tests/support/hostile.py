"""Hostile addresses and the pipe commands that would betray a shell
interpreting them: shared by the system tests of --inetd sessions and of the
limits."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import List, NamedTuple, Optional

from tests import helpers


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



def shell_command(out: Path, sender: str) -> str:
    """A command with shell syntax: stores the mail and its NUL-separated
    arguments (-f SENDER -- RECIPIENT...) in a new directory under ``out``."""
    return (f"d=$(mktemp -d {shlex.quote(str(out))}/m.XXXXXX) && cat > \"$d/mail\" && "
            f"printf '%s\\0' -f {sender} -- > \"$d/args\"")



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

