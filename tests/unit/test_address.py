"""RFC 5321 path parsing: what MAIL FROM and RCPT TO accept and refuse."""

from __future__ import annotations

import re
from typing import Tuple

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from msmtpd.smtp.address import (
    MAX_DOMAIN,
    MAX_LOCAL_PART,
    MAX_PATH,
    AddressError,
    _mailbox_parts,
    _source_route_end,
    parse_path,
    split_path,
)


def long_domain(octets: int) -> str:
    """A syntactically valid domain of exactly ``octets`` octets."""
    labels = []
    remaining = octets
    while remaining > 0:
        size = min(63, remaining)
        if remaining - size == 1:  # never leave a lone dot
            size -= 1
        labels.append("d" * size)
        remaining -= size + 1
    domain = ".".join(labels)
    assert len(domain) == octets
    return domain


VALID = [
    # (path, utf8, allow_null, address)
    ("<user@example.com>", False, False, "user@example.com"),
    ("<first.last+tag@sub.example.org>", False, False, "first.last+tag@sub.example.org"),
    ("<o'brien@example.ie>", False, False, "o'brien@example.ie"),
    ("<a!#$%&'*+/=?^_`{|}~b@example.com>", False, False, "a!#$%&'*+/=?^_`{|}~b@example.com"),
    ("<root>", False, False, "root"),
    ("<postmaster>", False, False, "postmaster"),
    ("user@example.com", False, False, "user@example.com"),
    ('<"john doe"@example.com>', False, False, '"john doe"@example.com'),
    ('<"a;b"@example.com>', False, False, '"a;b"@example.com'),
    ('<"$(touch x)"@example.com>', False, False, '"$(touch x)"@example.com'),
    ('<"quote\\"inside"@example.com>', False, False, '"quote\\"inside"@example.com'),
    ('<"back\\\\slash"@example.com>', False, False, '"back\\\\slash"@example.com'),
    ('<"-looks-like-option"@example.com>', False, False, '"-looks-like-option"@example.com'),
    ("<user@[192.0.2.1]>", False, False, "user@[192.0.2.1]"),
    ("<user@[IPv6:2001:db8::1]>", False, False, "user@[IPv6:2001:db8::1]"),
    ("<user@xn--bcher-kva.example>", False, False, "user@xn--bcher-kva.example"),
    ("<user@a-b.c-d.example>", False, False, "user@a-b.c-d.example"),
    ("<user@localhost>", False, False, "user@localhost"),
    ("<@relay.example:user@example.com>", False, False, "user@example.com"),
    ("<@one.example,@two.example:user@example.com>", False, False, "user@example.com"),
    ("<>", False, True, ""),
    ("<jörg@exämple.de>", True, False, "jörg@exämple.de"),
    ("<δοκιμή@παράδειγμα.δοκιμή>", True, False, "δοκιμή@παράδειγμα.δοκιμή"),
    ('<"ünïcode quoted"@example.com>', True, False, '"ünïcode quoted"@example.com'),
    ("<用户@例子.广告>", True, False, "用户@例子.广告"),
    ("<ascii@example.com>", True, False, "ascii@example.com"),
    ("<" + "l" * MAX_LOCAL_PART + "@example.com>", False, False, "l" * MAX_LOCAL_PART + "@example.com"),
    ("<" + "ö" * (MAX_LOCAL_PART // 2) + "@example.com>", True, False,
     "ö" * (MAX_LOCAL_PART // 2) + "@example.com"),
    ("<a@" + long_domain(MAX_PATH - 4) + ">", False, False, "a@" + long_domain(MAX_PATH - 4)),
]


@pytest.mark.parametrize(("path", "utf8", "allow_null", "address"), VALID)
def test_valid_paths(path: str, utf8: bool, allow_null: bool, address: str) -> None:
    """Valid paths are accepted and give the address without brackets or source route."""
    parsed = parse_path(path, utf8, allow_null)
    assert parsed.address == address
    assert parsed.is_null == (address == "")


INVALID = [
    # (path, utf8, allow_null, policy, needs_utf8)
    ("<>", False, False, False, False),
    ("", False, True, False, False),
    ("<", False, False, False, False),
    ("<user@example.com", False, False, False, False),
    ("<a b@example.com>", False, False, False, False),
    ("<a@b@example.com>", False, False, False, False),
    ("<.a@example.com>", False, False, False, False),
    ("<a.@example.com>", False, False, False, False),
    ("<a..b@example.com>", False, False, False, False),
    ("<a@>", False, False, False, False),
    ("<@example.com>", False, False, False, False),
    ("<a@-example.com>", False, False, False, False),
    ("<a@example-.com>", False, False, False, False),
    ("<a@exa mple.com>", False, False, False, False),
    ("<a@example..com>", False, False, False, False),
    ("<a@.example.com>", False, False, False, False),
    ("<a@[1.2.3.4>", False, False, False, False),
    ("<a(comment)@example.com>", False, False, False, False),
    ("<a,b@example.com>", False, False, False, False),
    ("<a;b@example.com>", False, False, False, False),
    ("<a<b@example.com>", False, False, False, False),
    ("<$(touch x)@example.com>", False, False, False, False),
    ('<"unterminated@example.com>', False, False, False, False),
    ('<"bad"quote"@example.com>', False, False, False, False),
    ("<a\x00b@example.com>", False, False, False, False),
    ("<a\rb@example.com>", False, False, False, False),
    ("<a\nb@example.com>", False, False, False, False),
    ("<a\tb@example.com>", False, False, False, False),
    ("<a\x7f@example.com>", False, False, False, False),
    ('<"a\x01b"@example.com>', False, False, False, False),
    ("<a@exa\x1bmple.com>", True, False, False, False),
    ("<-oProxyCommand=x@example.com>", False, False, True, False),
    ("<-f>", False, True, True, False),
    ("<-@example.com>", False, False, True, False),
    ("<@relay.example:-x@example.com>", False, False, True, False),
    ("<jörg@example.de>", False, False, False, True),
    ("<user@exämple.de>", False, False, False, True),
    ('<"jörg"@example.de>', False, False, False, True),
    ("<" + "l" * (MAX_LOCAL_PART + 1) + "@example.com>", False, False, False, False),
    ("<" + "ö" * (MAX_LOCAL_PART // 2 + 1) + "@example.com>", True, False, False, False),
    ("<a@" + long_domain(MAX_PATH - 3) + ">", False, False, False, False),
    ("<a@" + long_domain(MAX_DOMAIN + 1) + ">", False, False, False, False),
    ("<" + "l" * 64 + "@" + long_domain(200) + ">", False, False, False, False),
]


@pytest.mark.parametrize(("path", "utf8", "allow_null", "policy", "needs_utf8"), INVALID)
def test_invalid_paths(path: str, utf8: bool, allow_null: bool, policy: bool, needs_utf8: bool) -> None:
    """Invalid paths raise AddressError, flagged as a refusal (553) or a
    missing SMTPUTF8 where that is the reason."""
    with pytest.raises(AddressError) as caught:
        parse_path(path, utf8, allow_null)
    assert caught.value.policy is policy
    assert caught.value.needs_utf8 is needs_utf8
    assert str(caught.value)


def test_path_length_limit_counts_octets_with_brackets() -> None:
    """A path of MAX_PATH octets (brackets included) is accepted, one more is not."""
    domain = long_domain(MAX_PATH - 4)
    assert len(f"<a@{domain}>") == MAX_PATH
    parse_path(f"<a@{domain}>", False, False)
    with pytest.raises(AddressError):
        parse_path(f"<ab@{domain}>", False, False)


def test_local_part_limit_counts_octets_not_characters() -> None:
    """With SMTPUTF8, the 64-octet local part limit counts UTF-8 octets."""
    parse_path("<" + "é" * 32 + "@example.com>", True, False)
    with pytest.raises(AddressError):
        parse_path("<" + "é" * 33 + "@example.com>", True, False)


SPLITS = [
    ("<a@example.com>", ("<a@example.com>", "")),
    ("<a@example.com> SIZE=100 BODY=8BITMIME", ("<a@example.com>", "SIZE=100 BODY=8BITMIME")),
    ("  <a@example.com>   SMTPUTF8  ", ("<a@example.com>", "SMTPUTF8")),
    ('<"x>y"@example.com> SIZE=1', ('<"x>y"@example.com>', "SIZE=1")),
    ('<"a\\">"@example.com>', ('<"a\\">"@example.com>', "")),
    ("<>", ("<>", "")),
    ("<> BODY=7BIT", ("<>", "BODY=7BIT")),
    ("a@example.com SIZE=1", ("a@example.com", "SIZE=1")),
]


@pytest.mark.parametrize(("argument", "expected"), SPLITS)
def test_split_path(argument: str, expected: Tuple[str, str]) -> None:
    """split_path separates the path (finding the right '>' past quoted strings) from the parameters."""
    assert split_path(argument) == expected


@pytest.mark.parametrize("argument", ["<a@example.com", '<"a>b@example.com', "<"])
def test_split_path_without_closing_bracket(argument: str) -> None:
    """A path whose '>' is missing (or only inside quotes) is an error."""
    with pytest.raises(AddressError):
        split_path(argument)


# The grammar of RFC 5321 section 4.1.2 as regular expressions (what the
# parser used before it read the grammar by hand, to spare --inetd the
# import of re): the hand-written reading must agree with them.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_STRING = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
MAILBOX = re.compile(
    rf"(?P<local>{_DOT_STRING}|{_QUOTED})(?:@(?P<domain>{_LABEL}(?:\.{_LABEL})*|{_LITERAL}))?")
SOURCE_ROUTE = re.compile(r"@[^,:]+(?:,@[^,:]+)*:")
# Every character the grammar gives a meaning to, some it refuses, and
# a few that stand for any other.
GRAMMAR_TEXT = st.text(st.sampled_from(list('aZ09.-@"\\[]:, !#~_`{|}()<>;\x7e\x7f\x1f')), max_size=24)


@settings(max_examples=3000, deadline=None)
@given(GRAMMAR_TEXT)
@example('"a\\"b"@[1.2.3.4]')
@example("a.b@x-y.z")
@example('"\\')
@example("a@[]")
@example("a@b.-c")
def test_the_hand_written_grammar_agrees_with_the_regular_expressions(text: str) -> None:
    match = MAILBOX.fullmatch(text)
    expected = None if match is None else (
        match.end("local"), match.start("domain") if match.group("domain") is not None else -1)
    assert _mailbox_parts(text) == expected
    route = SOURCE_ROUTE.match(text)
    assert _source_route_end(text) == (route.end() if route else 0)
