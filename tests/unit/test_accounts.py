"""Unit tests of --auth-file users and --allow, and of the session asking
them (on in-memory streams; no sockets).  The senders of each user:
tests/unit/test_senders.py."""

from __future__ import annotations

import types
from pathlib import Path
from typing import List

import bcrypt
import pytest

from msmtpd.base.config import ConfigError, parse_network
from msmtpd.policy.allow_list import AllowList
from msmtpd.policy.passwords import FailureClock
from msmtpd.policy.users_file import Accounts, load_accounts, parse_line
from msmtpd.smtp.session import Settings
from tests.helpers import b64
from tests.support.session_script import HOST, lines, talk, transaction

# Cost 4 keeps the unit tier fast; htpasswd -B writes cost 5 with $2y$.
ALICE_HASH = bcrypt.hashpw(b"alice-pw", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
BOB_HASH = bcrypt.hashpw(b"bob-pw", bcrypt.gensalt(4)).decode()


def clock() -> FailureClock:
    return FailureClock(types.SimpleNamespace(value=0.0))


def accounts_from(tmp_path: Path, text: str) -> Accounts:
    path = tmp_path / "users"
    path.write_text(text)
    return load_accounts(str(path), clock())


@pytest.fixture
def users(tmp_path: Path) -> Accounts:
    return accounts_from(tmp_path, f"""# household
alice:{ALICE_HASH}

bob:{BOB_HASH}
""")




# -- the file --------------------------------------------------------------


def test_comments_and_blank_lines_are_ignored(users: Accounts) -> None:
    assert sorted(users.users) == ["alice", "bob"]


def test_passwords_are_checked_against_the_bcrypt_hash(users: Accounts) -> None:
    assert users.check(b"alice", b"alice-pw")
    assert users.check(b"bob", b"bob-pw")
    assert not users.check(b"alice", b"bob-pw")
    assert not users.check(b"alice", b"alice-pw ")
    assert not users.check(b"carol", b"alice-pw")  # unknown user: a decoy check, then no


def test_hostile_passwords_are_refused_not_crashed(users: Accounts) -> None:
    """bcrypt raises for a NUL or for more than 72 bytes; neither may reach the session."""
    assert not users.check(b"alice", b"alice-pw\0")
    assert not users.check(b"alice", b"alice\0-pw")
    assert not users.check(b"alice", b"x" * 10_000)
    assert not users.check(b"carol", b"\0" * 100)
    assert not users.check(b"\xff", b"alice-pw")  # not UTF-8: no user's name


def test_a_long_password_matches_as_htpasswd_stored_it(tmp_path: Path) -> None:
    """htpasswd -B keeps the first 72 bytes of a password, and so do we."""
    long_password = "p" * 72
    hashed = bcrypt.hashpw(long_password.encode(), bcrypt.gensalt(4)).decode()
    accounts = accounts_from(tmp_path, f"long:{hashed}\n")
    assert accounts.check(b"long", (long_password + "anything after the 72nd byte").encode())


@pytest.mark.parametrize("line, complaint", [
    ("alice:plaintext", "plain-text password"),
    ("alice:$apr1$phKJ7Wt/$YlM/lUMuK42z2pF1wLtcg1", "MD5 hash (htpasswd -m)"),
    ("alice:{SHA}EfatjsUqKYSrqv18O1FlA3hcIHI=", "SHA-1 hash (htpasswd -s)"),
    ("alice:.u7fcxH.gojSk", "crypt() hash"),
    ("alice:$2y$05$tooshort", "malformed bcrypt hash"),
    ("alice:$6$salt$hash", "unknown hash scheme"),
    ("alice", "no password hash"),
    (":" + BOB_HASH, "expected user:hash"),
    (f"bob:{BOB_HASH}:bob@example.org", "user 'bob' has a third field: the senders a user"
                                        " may use now go in a --senders file"),
    (f"bob:{BOB_HASH}:", "user 'bob' has a third field"),
    ("bob:" + BOB_HASH.replace("$04$", "$15$"), "user 'bob' has a bcrypt cost of 15; at most 14"),
])
def test_a_bad_line_is_a_start_up_error_naming_the_line(tmp_path: Path, line: str,
                                                        complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        accounts_from(tmp_path, f"# first\nalice2:{ALICE_HASH}\n{line}\n")
    message = str(caught.value)
    assert "line 3" in message and complaint in message, message
    assert "\n" not in message
    assert "EfatjsUqKYSrqv18O1FlA3hcIHI" not in message  # never the hash itself


def test_a_user_defined_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 2: user 'alice' is already defined"):
        accounts_from(tmp_path, f"alice:{ALICE_HASH}\nalice:{BOB_HASH}\n")


@pytest.mark.parametrize("content, complaint", [
    (b"# nobody yet\n", "no users in it"),
    (b"alice:\xff\xfe\n", "not UTF-8"),
])
def test_an_empty_or_garbled_file_is_refused(tmp_path: Path, content: bytes, complaint: str) -> None:
    path = tmp_path / "users"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=complaint):
        load_accounts(str(path), clock())


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read --auth-file .*: No such file"):
        load_accounts(str(tmp_path / "absent"), clock())


def test_a_fifo_or_a_device_is_refused_without_waiting(tmp_path: Path) -> None:
    """A FIFO named by mistake would block the read (and a SIGHUP) forever."""
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero"):
        with pytest.raises(ConfigError, match="not a regular file"):
            load_accounts(path, clock())


def test_parse_line_keeps_the_hash_for_bcrypt() -> None:
    user, account = parse_line(f"alice:{ALICE_HASH}")
    assert user == "alice" and account.password_hash == ALICE_HASH.encode()
    assert account.cost == 4


# -- the session asks them --------------------------------------------------


def test_auth_login_with_a_file_user(users: Accounts, sleeps: List[float]) -> None:
    settings = Settings(hostname=HOST, auth=users)
    result = talk(lines("EHLO client.test", "AUTH LOGIN", b64("alice"), b64("alice-pw"),
                        *transaction(sender="<someone@else.test>"), "QUIT"), settings)
    assert result.codes == [220, 250, 334, 334, 235, 250, 250, 354, 250, 221], result.replies
    assert len(result.mails) == 1


# -- --allow ---------------------------------------------------------------


def test_allow_networks_and_plain_addresses() -> None:
    allow = AllowList([parse_network("10.1.0.0/16"), parse_network("192.0.2.7"),
                       parse_network("2001:db8::/32"), parse_network("::1")])
    assert allow.permits("10.1.200.3") and allow.permits("192.0.2.7")
    assert not allow.permits("192.0.2.8") and not allow.permits("10.2.0.1")
    assert allow.permits("2001:db8:5::9") and allow.permits("::1")
    assert not allow.permits("2001:db9::1")
    assert allow.permits("::ffff:10.1.0.9")  # an IPv4 client on a dual-stack socket
    assert allow.permits("fe80::1%eth0") is False
    assert not allow.permits("")  # a pipe or a Unix socket: no address to match
    assert not allow.permits("not an address")


@pytest.mark.parametrize("text", ["10.0.0.0/33", "example.org", "10.0.0", "::g", ""])
def test_a_bad_allow_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid --allow"):
        parse_network(text)


def test_a_refused_client_gets_554_before_anything_else() -> None:
    settings = Settings(hostname=HOST, allow=AllowList([parse_network("10.0.0.0/8")]))
    result = talk(lines("EHLO client.test", *transaction(), "QUIT"), settings, peer="192.0.2.7")
    assert result.raw == b"554 5.7.1 Access denied\r\n"
    assert not result.quit and not result.mails
    allowed = talk(lines("QUIT"), settings, peer="10.9.8.7")
    assert allowed.codes == [220, 221]
