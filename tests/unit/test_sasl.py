"""SASL decoding on its own (RFC 4954 answers, RFC 4616 PLAIN), and the
session's tables that say how it ends and which verbs wait for what."""

from __future__ import annotations

import base64

import pytest

from msmtpd.smtp import replies, sasl
from msmtpd.smtp.sasl import Credentials
from msmtpd.smtp.session import AFTER_AUTH, BEFORE_TLS, ENDINGS, Session


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_an_answer_is_strict_base64_and_equals_sign_is_empty() -> None:
    assert sasl.decode_response(b64(b"alice")) == b"alice"
    assert sasl.decode_response("=") == b""
    assert sasl.decode_response("YWxpY2U") is replies.AUTH_BAD_BASE64  # padding missing
    assert sasl.decode_response("YWxp Y2U=") is replies.AUTH_BAD_BASE64
    assert sasl.decode_response("!!!!") is replies.AUTH_BAD_BASE64


def test_bytes_are_kept_exactly_as_sent() -> None:
    raw = b"\xff\xfe caf\xc3\xa9 \x00"
    assert sasl.decode_response(b64(raw)) == raw


def test_plain_has_three_parts() -> None:
    assert sasl.plain_credentials(b"\0alice\0secret") == Credentials(b"alice", b"secret", b"")
    assert sasl.plain_credentials(b"boss\0alice\0secret") == Credentials(b"alice", b"secret", b"boss")
    assert sasl.plain_credentials(b"") is replies.AUTH_PLAIN_EMPTY
    assert sasl.plain_credentials(b"alice\0secret") is replies.AUTH_PLAIN_MALFORMED
    assert sasl.plain_credentials(b"\0alice\0se\0cret") is replies.AUTH_PLAIN_MALFORMED


@pytest.mark.parametrize("authzid, as_self", [(b"", True), (b"alice", True), (b"bob", False),
                                              (b"ALICE", False)])
def test_only_the_users_own_identity_may_be_asked_for(authzid: bytes, as_self: bool) -> None:
    assert sasl.acts_as_self(Credentials(b"alice", b"pw", authzid)) is as_self


def test_login_challenges_say_username_and_password() -> None:
    assert base64.b64decode(sasl.LOGIN_USER_CHALLENGE) == b"Username:"
    assert base64.b64decode(sasl.LOGIN_PASSWORD_CHALLENGE) == b"Password:"


def test_no_ending_is_hidden_behind_an_earlier_one() -> None:
    """ENDINGS is matched in order: a subclass must stand before its base."""
    for index, ending in enumerate(ENDINGS):
        for earlier in ENDINGS[:index]:
            assert not issubclass(ending.exception, earlier.exception), (ending, earlier)


def test_every_gated_verb_is_a_verb() -> None:
    assert (AFTER_AUTH | BEFORE_TLS) <= set(Session._verbs)
    assert not AFTER_AUTH & BEFORE_TLS
