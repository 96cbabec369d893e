"""Decoding what a client sends in AUTH (RFC 4954): base64 answers, the
PLAIN message's three parts (RFC 4616) and LOGIN's two challenges.

Kept apart from the session's verbs, which decide who may authenticate and
when: this module only turns text into bytes, exactly, so that nothing is
decoded before the comparison and two different passwords can never
become equal.
"""

from __future__ import annotations

from msmtpd.smtp import replies
from msmtpd.smtp.replies import Reply

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Optional, Union

# LOGIN's challenges, in base64: "Username:" and "Password:".
LOGIN_USER_CHALLENGE = "VXNlcm5hbWU6"
LOGIN_PASSWORD_CHALLENGE = "UGFzc3dvcmQ6"
# RFC 4954 section 4: "=" is an empty (initial) response, "*" cancels.
EMPTY_RESPONSE = "="
CANCEL = "*"
# RFC 4616 section 2: authzid NUL authcid NUL passwd.
PLAIN_SEPARATOR = b"\0"
PLAIN_PARTS = 3


class Credentials:
    """What the client sent, exactly as bytes; ``authzid`` is AUTH PLAIN's
    authorization identity (RFC 4616)."""

    __slots__ = ("user", "password", "authzid")

    def __init__(self, user: bytes, password: bytes, authzid: bytes = b"") -> None:
        self.user = user
        self.password = password
        self.authzid = authzid

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credentials) and (
            (other.user, other.password, other.authzid) == (self.user, self.password, self.authzid))

    __hash__ = None  # type: ignore[assignment]  # compared, never a key

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, authzid={self.authzid!r})"  # never the password


def decode_response(text: str) -> Union[bytes, Reply]:
    """A client's answer (or initial response) as bytes: ``=`` is empty,
    anything that is not strict base64 is refused (501)."""
    if text == EMPTY_RESPONSE:
        return b""
    decoded = b64decode(text)
    return replies.AUTH_BAD_BASE64 if decoded is None else decoded


def plain_credentials(message: bytes) -> Union[Credentials, Reply]:
    """The three parts of a decoded PLAIN message; an empty message or
    one with another number of parts is refused."""
    if not message:
        return replies.AUTH_PLAIN_EMPTY
    parts = message.split(PLAIN_SEPARATOR)
    if len(parts) != PLAIN_PARTS:
        return replies.AUTH_PLAIN_MALFORMED
    authzid, user, password = parts
    return Credentials(user, password, authzid)


def acts_as_self(credentials: Credentials) -> bool:
    """RFC 4616 section 2: an authorization identity other than the user's
    own would be acting as someone else, which no one may."""
    return credentials.authzid in (b"", credentials.user)


def b64decode(text: str) -> Optional[bytes]:
    """Strict base64 (no stray characters), or None."""
    import base64  # with struct, some 0.7 ms: only a session that sends AUTH pays it

    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error is one
        return None
