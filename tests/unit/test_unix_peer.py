"""The peer of a Unix-socket session and --unix-login, in memory (issue 19):
what the log and the Received header say of a caller known by its uid,
that such a caller is local (the remote-AUTH rule) and passes --allow, that
--unix-login logs it in as its uid's user, bound by --senders, and the
option checks.  The real sockets and clients are in
tests/system/test_unix_socket.py."""

from __future__ import annotations

import pytest

from msmtpd.base.config import ConfigError, parse_interface, parse_mode, parse_network
from msmtpd.commands.cli import UsageError, parse_args
from msmtpd.net.peer import Peer
from msmtpd.policy.allow_list import AllowList
from msmtpd.policy.passwords import FailureClock, PasswordCheck
from msmtpd.policy.senders import Senders, parse_line
from msmtpd.smtp.session import Settings
from tests.helpers import auth_plain
from tests.support.session_script import HOST, lines, talk, transaction

ALICE = Peer(uid=1000, gid=1000, pid=4242, user="alice")


def test_a_unix_caller_is_named_by_user_uid_and_pid_and_is_local() -> None:
    assert ALICE.name == "local user alice (uid 1000, pid 4242)"
    assert ALICE.address_literal == "uid 1000"
    assert ALICE.is_unix and ALICE.is_local
    assert Peer(uid=7, pid=1).name == "local user with no name (uid 7, pid 1)"


@pytest.mark.parametrize("address, local", [("127.0.0.1", True), ("::1", True),
                                            ("::ffff:127.0.0.2", True), ("192.0.2.7", False),
                                            ("2001:db8::1", False), ("", True)])
def test_an_ip_peer_is_local_on_loopback_only(address: str, local: bool) -> None:
    peer = Peer(address)
    assert peer.is_local is local and not peer.is_unix and peer.name == address


def test_the_received_header_has_the_uid_and_no_address() -> None:
    result = talk(lines("EHLO client.test", *transaction(), "QUIT"), peer=ALICE)
    header = result.mails[0].data.split(b"\n")[0]
    assert header == b"Received: from client.test (uid 1000)"


def test_allow_does_not_apply_to_a_unix_socket() -> None:
    settings = Settings(hostname=HOST, allow=AllowList([parse_network("192.0.2.0/24")]))
    assert talk(lines("QUIT"), settings, peer=ALICE).codes == [220, 221]
    assert talk(lines("QUIT"), settings, peer="198.51.100.1").codes == [554]


def auth_settings(unix_login: bool) -> Settings:
    check = PasswordCheck("bob", b"bob-pw", FailureClock())
    senders = Senders(dict([parse_line("alice: alice@example.org"), parse_line("bob: bob@example.org")]))
    return Settings(hostname=HOST, auth=check, senders=senders, unix_login=unix_login)


def test_unix_login_is_logged_in_as_the_uids_user_and_bound_by_senders() -> None:
    result = talk(lines("EHLO client.test", *transaction(sender="<alice@example.org>"),
                        "MAIL FROM:<bob@example.org>", "AUTH PLAIN " + auth_plain("bob", "bob-pw"),
                        "QUIT"), auth_settings(True), peer=ALICE)
    assert result.codes == [220, 250, 250, 250, 354, 250, 553, 503, 221]
    assert result.replies[6].text.startswith("5.7.1 ")
    header = result.mails[0].data.split(b"\n")
    assert header[0] == b"Received: from client.test (uid 1000, user alice)"
    assert b"with ESMTPA;" in header[1]


def test_without_unix_login_a_unix_caller_authenticates_like_loopback() -> None:
    result = talk(lines("EHLO client.test", "MAIL FROM:<alice@example.org>", "QUIT"),
                  auth_settings(False), peer=ALICE)
    assert result.codes == [220, 250, 530, 221]


def test_unix_login_does_not_log_in_a_tcp_client_or_a_nameless_uid() -> None:
    for peer in (Peer("127.0.0.1", 2525), Peer(uid=4242, pid=1)):
        result = talk(lines("EHLO client.test", "MAIL FROM:<alice@example.org>", "QUIT"),
                      auth_settings(True), peer=peer)
        assert result.codes == [220, 250, 530, 221]


def test_paths_and_modes_on_the_command_line() -> None:
    assert parse_interface("/run/msmtpd/smtp.sock") == "/run/msmtpd/smtp.sock"
    with pytest.raises(ConfigError, match="at most 107 octets"):
        parse_interface("/" + "x" * 107)
    assert parse_mode("0660", "--socket-mode") == 0o660 and parse_mode("600", "--socket-mode") == 0o600
    for bad in ("0999", "1777", "rw", "", "+660", "07777"):
        with pytest.raises(ConfigError):
            parse_mode(bad, "--socket-mode")
    config = parse_args(["--interface=/run/a.sock", "--interface=::1", "--socket-mode=0600",
                         "--unix-login", "--senders=/dev/null"])
    assert config.interfaces == ["/run/a.sock", "::1"] and config.socket_mode == 0o600
    assert parse_args([]).socket_mode == 0o666 and not parse_args([]).unix_login
    with pytest.raises(UsageError, match="--senders needs --auth, --auth-file or --unix-login"):
        parse_args(["--senders=/dev/null"])
