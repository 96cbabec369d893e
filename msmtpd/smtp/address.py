"""Parsing of MAIL FROM / RCPT TO paths (RFC 5321 section 4.1.2, with the
UTF-8 extensions of RFC 6531 when SMTPUTF8 is in play).

The parser accepts what RFC 5321 allows, plus an unqualified local part
(``<root>``) because local programs send those, and refuses anything a
delivery command could mistake for an option or that could not be a real
address: a leading ``-``, control characters, over-long parts.
"""

from __future__ import annotations

import re

# RFC 5321 section 4.5.3.1.1: local part at most 64 octets.
MAX_LOCAL_PART = 64
# RFC 5321 section 4.5.3.1.2: domain at most 255 octets.
MAX_DOMAIN = 255
# RFC 5321 section 4.5.3.1.3: path at most 256 octets including the brackets.
MAX_PATH = 256

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_STRING = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = re.compile(
    rf"(?P<local>{_DOT_STRING}|{_QUOTED})(?:@(?P<domain>{_LABEL}(?:\.{_LABEL})*|{_LITERAL}))?")
# RFC 6531 allows UTF-8 wherever RFC 5321 allows a letter (atext, qtext,
# U-labels), so a non-ASCII address is checked with every non-ASCII
# character standing in as a letter.
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _as_ascii(text: str) -> str:
    return _NON_ASCII.sub("a", text)


# RFC 5321 section 4.1.2: A-d-l, a source route to be accepted and ignored.
_SOURCE_ROUTE = re.compile(r"@[^,:]+(?:,@[^,:]+)*:")


class AddressError(ValueError):
    """The path is unacceptable; ``str()`` says why, ``policy`` tells a
    refusal (553) from a syntax error (501)."""

    def __init__(self, reason: str, policy: bool = False, needs_utf8: bool = False) -> None:
        super().__init__(reason)
        self.policy = policy
        self.needs_utf8 = needs_utf8


class Path:
    """A parsed path: ``address`` is "" for the null path <>.  (A plain
    class: a ``NamedTuple`` imports ``typing``, some 4 ms of an --inetd
    session.)"""

    __slots__ = ("address",)

    def __init__(self, address: str) -> None:
        self.address = address

    @property
    def is_null(self) -> bool:
        return not self.address

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Path) and other.address == self.address

    def __hash__(self) -> int:
        return hash(self.address)

    def __repr__(self) -> str:
        return f"Path(address={self.address!r})"


def split_path(argument: str) -> tuple[str, str]:
    """Split ``<path> params`` (or a bare path) into the path and the
    parameter text."""
    argument = argument.lstrip()
    if argument.startswith("<"):
        end = _closing_bracket(argument)
        if end < 0:
            raise AddressError("missing '>'")
        return argument[: end + 1], argument[end + 1 :].strip()
    path, _, params = argument.partition(" ")
    return path, params.strip()


def _closing_bracket(text: str) -> int:
    """Index of the '>' closing the path, skipping quoted strings."""
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index
    return -1


def parse_path(path: str, utf8: bool, allow_null: bool) -> Path:
    """Validate one path as given in MAIL FROM or RCPT TO."""
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise AddressError("control characters are not allowed")
    if len(path.encode("utf-8")) > MAX_PATH:
        raise AddressError(f"path longer than {MAX_PATH} octets")
    inner = path[1:-1] if path.startswith("<") and path.endswith(">") else path
    if not inner:
        if allow_null and path == "<>":
            return Path("")
        raise AddressError("empty address")
    route = _SOURCE_ROUTE.match(inner)
    if route:
        inner = inner[route.end() :]
    if inner.startswith("-"):
        raise AddressError("an address must not begin with '-'", policy=True)
    match = _MAILBOX.fullmatch(_as_ascii(inner))
    if not match:
        raise AddressError("not a valid mailbox")
    if not utf8 and not inner.isascii():
        raise AddressError("non-ASCII address without SMTPUTF8", needs_utf8=True)
    local = inner[: match.end("local")]
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError(f"local part longer than {MAX_LOCAL_PART} octets")
    domain = inner[match.start("domain") :] if match.group("domain") is not None else None
    if domain is not None and len(domain.encode("utf-8")) > MAX_DOMAIN:
        raise AddressError(f"domain longer than {MAX_DOMAIN} octets")
    return Path(inner)


# --shell-safe-addresses: characters a POSIX shell (or bash, or a Bourne
# shell's ``^``) gives a meaning to, and quotes.  Letters and digits of any
# script and ``. @ _ + / = -`` (the C msmtpd's set, which VERP needs) always pass.
SHELL_SPECIAL = frozenset("$`\\;&|<>()*?[]#~{}!^\"'")


def shell_unsafe_character(address: str) -> str | None:
    """The first character of ``address`` that a shell could interpret (as
    it would be shown in a reply), or None when a command that hands its
    arguments to another shell (``ssh relay sendmail``) cannot be fooled."""
    for char in address:
        if char.isalnum() or char in ".@_+/=-":
            continue
        if char in SHELL_SPECIAL or char.isspace() or not char.isprintable():
            return repr(char) if char.isprintable() and not char.isspace() else f"U+{ord(char):04X}"
    return None
