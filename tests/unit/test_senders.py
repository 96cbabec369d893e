"""--senders: the senders each user may use, in a file htpasswd never
touches.  The file's format and the session asking it (in memory), then
real daemons: a password changed with the real ``htpasswd -bB`` and a
SIGHUP keep the binding, a user missing from the file may send as nobody,
the old third field and bad files are start-up errors, SIGHUP re-reads
the file or keeps the old one, with --auth and --inetd too.
Here the part without processes; the real ones are in tests/system/test_senders.py."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest

from msmtpd.base.config import ConfigError
from msmtpd.commands.cli import parse_args
from msmtpd.policy.passwords import FailureClock, PasswordCheck
from msmtpd.policy.senders import Senders, load_senders
from msmtpd.smtp import replies
from msmtpd.smtp.session import Settings
from tests import helpers
from tests.helpers import auth_plain
from tests.support.session_script import converse


def senders_from(tmp_path: Path, text: str) -> Senders:
    path = tmp_path / "senders"
    path.write_text(text)
    return load_senders(str(path))


# -- the file -----------------------------------------------------------------


def test_addresses_and_domains_as_before(tmp_path: Path) -> None:
    senders = senders_from(tmp_path, helpers.SENDERS)
    assert sorted(senders.bindings) == ["alice", "bob"]
    assert senders.may_send("bob", "bob@example.org")
    assert senders.may_send("bob", "bob@EXAMPLE.ORG")  # the domain is case-insensitive
    assert not senders.may_send("bob", "Bob@example.org")  # the local part is not
    assert senders.may_send("bob", "anything@bob.example")
    assert senders.may_send("bob", "x@BOB.EXAMPLE")
    assert not senders.may_send("bob", "alice@example.org")
    assert not senders.may_send("bob", "bob@sub.bob.example")
    assert not senders.may_send("bob", "")  # the null sender is in no list
    assert senders.may_send("alice", "alice@example.org")
    assert not senders.may_send("alice", "bob@example.org")


def test_a_user_missing_from_the_file_may_send_as_nobody(tmp_path: Path) -> None:
    senders = senders_from(tmp_path, helpers.SENDERS)
    for sender in ("carol@example.org", "", "bob@example.org"):
        assert not senders.may_send("carol", sender)
    assert not senders.may_send("Alice", "alice@example.org")  # user names are exact


@pytest.mark.parametrize("line, complaint", [
    ("carol", "expected user: alice@example.org, @example.org"),
    (": carol@example.org", "expected user:"),
    ("car ol: carol@example.org", "expected user:"),
    ("carol: not-an-address", "invalid sender 'not-an-address'"),
    ("carol: a@b@c", "invalid sender 'a@b@c'"),
    ("carol: <>", "invalid sender '<>'"),
    ("carol: a b@example.org", "invalid sender 'a b@example.org'"),
    ("carol:", "user 'carol' has an empty list of senders"),
    ("carol: , ,", "user 'carol' has an empty list of senders"),
    ("bob: @example.net", "user 'bob' is already listed"),
])
def test_a_bad_line_is_an_error_naming_the_line(tmp_path: Path, line: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        senders_from(tmp_path, f"{helpers.SENDERS}{line}\n")
    message = str(caught.value)
    assert message.startswith("invalid --senders ") and "\n" not in message
    assert f"line 5: {complaint}" in message, message


@pytest.mark.parametrize("content, complaint", [
    (b"# nobody yet\n\n", "no users in it"),
    (b"alice: \xff@example.org\n", "not UTF-8"),
])
def test_an_empty_or_garbled_file_is_refused(tmp_path: Path, content: bytes, complaint: str) -> None:
    path = tmp_path / "senders"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=complaint):
        load_senders(str(path))


def test_a_missing_file_or_a_fifo_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read --senders .*: No such file"):
        load_senders(str(tmp_path / "absent"))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_senders(str(tmp_path / "fifo"))


def test_the_option_is_made_absolute_and_needs_authentication(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for argv in (["--auth-file=users", "--senders=senders"], ["--auth-file=users", "--senders", "senders"],
                 ["--auth=alice", "--sen=senders"]):
        assert parse_args(argv).senders == str(tmp_path / "senders")
    with pytest.raises(Exception, match="--senders needs --auth, --auth-file or --unix-login"):
        parse_args(["--senders=senders"])


# -- the session asks it ---------------------------------------------------------




def test_the_session_refuses_a_sender_outside_the_list_and_goes_on(tmp_path: Path) -> None:
    clock = FailureClock(types.SimpleNamespace(value=0.0))
    settings = Settings(hostname="mx.test", senders=senders_from(tmp_path, helpers.SENDERS),
                        auth=PasswordCheck("bob", b"bob-pw", clock))
    got = converse(settings, "EHLO client.test", f"AUTH PLAIN {auth_plain('bob', 'bob-pw')}",
                           "MAIL FROM:<alice@example.org>", "MAIL FROM:<>", "MAIL FROM:<bob@Bob.Example>",
                           "RCPT TO:<x@example.net>", "DATA", "Subject: hi\r\n\r\nhello\r\n.", "QUIT")
    refused = replies.SENDER_NOT_ALLOWED.encode().decode().rstrip()
    assert got[2] == "235 2.7.0 Authentication successful"
    assert got[3:6] == [refused, refused, "250 2.1.0 Sender OK"], got
    assert [line[:3] for line in got[6:]] == ["250", "354", "250", "221"], got


def test_without_senders_any_sender_goes(tmp_path: Path) -> None:
    clock = FailureClock(types.SimpleNamespace(value=0.0))
    settings = Settings(hostname="mx.test", auth=PasswordCheck("bob", b"bob-pw", clock))
    got = converse(settings, "EHLO client.test", f"AUTH PLAIN {auth_plain('bob', 'bob-pw')}",
                           "MAIL FROM:<ceo@victim.example>", "RSET", "MAIL FROM:<>", "QUIT")
    assert [line[:3] for line in got] == ["220", "250", "235", "250", "250", "250", "221"], got
