"""Parsing of MAIL FROM / RCPT TO paths (RFC 5321 section 4.1.2, with the
UTF-8 extensions of RFC 6531 when SMTPUTF8 is in play).

The parser accepts what RFC 5321 allows, plus an unqualified local part
(``<root>``) because local programs send those, and refuses anything a
delivery command could mistake for an option or that could not be a real
address: a leading ``-``, control characters, over-long parts.
"""

from __future__ import annotations

# RFC 5321 section 4.5.3.1.1: local part at most 64 octets.
MAX_LOCAL_PART = 64
# RFC 5321 section 4.5.3.1.2: domain at most 255 octets.
MAX_DOMAIN = 255
# RFC 5321 section 4.5.3.1.3: path at most 256 octets including the brackets.
MAX_PATH = 256

# The grammar of RFC 5321 section 4.1.2, read by hand rather than by a
# regular expression: re (with enum, functools and collections) and the
# compiling of the pattern cost a one-mail --inetd process some 3 ms.
# tests/unit/test_address.py holds the same grammar as a regular expression
# and checks that both agree.
# Letters and digits spelt out: the string module imports re.
_LET_DIG = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
# atext: letters, digits and these.
_ATEXT = _LET_DIG | frozenset("!#$%&'*+/=?^_`{|}~-")
# qtextSMTP: %d32-33 / %d35-91 / %d93-126 (no DQUOTE, no backslash).
_QTEXT = frozenset(chr(c) for c in range(0x20, 0x7F)) - frozenset('"\\')
# quoted-pairSMTP: a backslash, then %d32-126.
_QUOTABLE = frozenset(chr(c) for c in range(0x20, 0x7F))
# An address literal's content, loosely: %d33-90 / %d94-126 (no [ \ ]).
_LITERAL_TEXT = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset("[\\]")


def _as_ascii(text: str) -> str:
    """RFC 6531 allows UTF-8 wherever RFC 5321 allows a letter (atext,
    qtext, U-labels), so a non-ASCII address is checked with every
    non-ASCII character standing in as a letter."""
    return text if text.isascii() else "".join(c if c < "\x80" else "a" for c in text)


def _local_part_end(text: str) -> int:
    """Where the Dot-string or Quoted-string at the start of ``text`` ends,
    or -1 when it is neither."""
    if text.startswith('"'):
        index = 1
        while index < len(text):
            char = text[index]
            if char == '"':
                return index + 1
            if char == "\\":
                if index + 1 == len(text) or text[index + 1] not in _QUOTABLE:
                    return -1
                index += 2
            elif char in _QTEXT:
                index += 1
            else:
                return -1
        return -1  # no closing quote
    at = text.find("@")
    end = len(text) if at < 0 else at
    atoms = text[:end].split(".")
    if all(atom and _ATEXT.issuperset(atom) for atom in atoms):
        return end
    return -1


def _is_domain(text: str) -> bool:
    """sub-domain *("." sub-domain), each Let-dig [Ldh-str]; or an address
    literal in brackets."""
    if text.startswith("["):
        return len(text) > 2 and text.endswith("]") and _LITERAL_TEXT.issuperset(text[1:-1])
    return all(label and label[0] in _LET_DIG and label[-1] in _LET_DIG
               and _LET_DIG.issuperset(label.replace("-", "a")) for label in text.split("."))


def _mailbox_parts(text: str) -> tuple[int, int] | None:
    """For a Mailbox (or a bare local part): where its local part ends and
    its domain starts (-1: no domain); None when ``text`` is no mailbox."""
    end = _local_part_end(text)
    if end < 0:
        return None
    if end == len(text):
        return end, -1
    if text[end] != "@" or not _is_domain(text[end + 1:]):
        return None
    return end, end + 1


def _source_route_end(text: str) -> int:
    """RFC 5321 section 4.1.2: the length of an A-d-l (``@a,@b:``) at the
    start of ``text``, a source route to be accepted and ignored; 0 when
    there is none.  Each hop is ``@`` and at least one character that is
    neither ``,`` nor ``:``."""
    colon = text.find(":")
    if not text.startswith("@") or colon < 0:
        return 0
    hops = text[:colon].split(",")
    return colon + 1 if all(len(hop) > 1 and hop[0] == "@" for hop in hops) else 0


# C0 controls and DEL have no place in a path (a TAB included, which a command line may hold).
_CONTROL = frozenset(chr(c) for c in (*range(32), 127))


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
    end = text.find(">")
    if end >= 0 and '"' not in text[:end]:
        return end  # no quoted string before it: the usual path, without a loop per character
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
    if not _CONTROL.isdisjoint(path):
        raise AddressError("control characters are not allowed")
    if len(path.encode("utf-8")) > MAX_PATH:
        raise AddressError(f"path longer than {MAX_PATH} octets")
    inner = path[1:-1] if path.startswith("<") and path.endswith(">") else path
    if not inner:
        if allow_null and path == "<>":
            return Path("")
        raise AddressError("empty address")
    inner = inner[_source_route_end(inner):]
    if inner.startswith("-"):
        raise AddressError("an address must not begin with '-'", policy=True)
    parts = _mailbox_parts(_as_ascii(inner))
    if parts is None:
        raise AddressError("not a valid mailbox")
    if not utf8 and not inner.isascii():
        raise AddressError("non-ASCII address without SMTPUTF8", needs_utf8=True)
    local_end, domain_start = parts
    if len(inner[:local_end].encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError(f"local part longer than {MAX_LOCAL_PART} octets")
    domain = inner[domain_start:] if domain_start >= 0 else None
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
