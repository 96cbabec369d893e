"""AUTH PLAIN by the RFCs: an authorization identity other than the
login's own fails (RFC 4616 section 2) and counts as a failure; ``=``, the
empty initial response of RFC 4954 section 4, is answered as what it is.
Real daemons and smtplib, then the session in memory.
Here the part without processes; the real ones are in tests/system/test_auth_plain.py."""

from __future__ import annotations

import types

import pytest

from msmtpd.policy.passwords import FailureClock, PasswordCheck
from msmtpd.smtp import replies
from msmtpd.smtp.session import Settings
from tests.helpers import auth_plain, b64
from tests.support.session_script import converse


def reply_line(reply: replies.Reply) -> str:
    return reply.encode().decode().rstrip("\r\n")


# -- the session in memory ----------------------------------------------------------


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setattr("msmtpd.policy.passwords.time.sleep", lambda seconds: None)
    clock = FailureClock(types.SimpleNamespace(value=0.0))
    return Settings(hostname="mx.test", auth=PasswordCheck("mailer", b"pw", clock))


@pytest.mark.parametrize("exchange, answer", [
    (["AUTH PLAIN ="], replies.AUTH_PLAIN_EMPTY),
    (["AUTH PLAIN", ""], replies.AUTH_PLAIN_EMPTY),  # an empty line after 334
    (["AUTH PLAIN", "="], replies.AUTH_PLAIN_EMPTY),
    (["AUTH PLAIN " + b64("no separators")], replies.AUTH_PLAIN_MALFORMED),
    (["AUTH PLAIN " + b64("mailer\0pw")], replies.AUTH_PLAIN_MALFORMED),
    (["AUTH PLAIN " + b64("\0mailer\0pw\0more")], replies.AUTH_PLAIN_MALFORMED),
    (["AUTH PLAIN !!!"], replies.AUTH_BAD_BASE64),
    ([f"AUTH PLAIN {auth_plain('mailer', 'pw', authzid='Mailer')}"], replies.AUTH_OTHER_IDENTITY),
    ([f"AUTH PLAIN {auth_plain('mailer', 'pw', authzid='mailer')}"], replies.AUTH_OK),
    ([f"AUTH PLAIN {auth_plain('mailer', 'pw')}"], replies.AUTH_OK),
])
def test_plain_answers(settings: Settings, exchange: list[str], answer: replies.Reply) -> None:
    got = converse(settings, "EHLO client.test", *exchange, "QUIT")
    assert got[-2] == reply_line(answer), got
    assert got[-1].startswith("221 ")
