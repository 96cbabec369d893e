"""AUTH time tells nothing: every AUTH does the same bcrypt work whatever
the name and the password.  Counted here, in memory and exactly: the bcrypt
rounds each kind of AUTH costs.  Measured on a real daemon in
tests/system/test_auth_timing.py."""

from __future__ import annotations

import types
from pathlib import Path
from typing import List

import bcrypt
import pytest

from msmtpd.policy.passwords import FailureClock
from msmtpd.policy.users_file import Accounts, load_accounts
from msmtpd.smtp.session import Settings
from tests import helpers
from tests.helpers import b64
from tests.support.session_script import converse

# -- the work, counted ----------------------------------------------------------------


@pytest.fixture
def rounds(monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """2**cost of every bcrypt check made (what its time is proportional to)."""
    made: List[int] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        made.append(2 ** int(hashed[4:6]))
        return bool(real(password, hashed))

    monkeypatch.setattr("msmtpd.policy.users_file.bcrypt.checkpw", counting)
    monkeypatch.setattr("msmtpd.policy.passwords.time.sleep", lambda seconds: None)
    return made


def mixed_accounts(tmp_path: Path) -> Accounts:
    path = tmp_path / "users"
    cheap = bcrypt.hashpw(b"carol-pw", bcrypt.gensalt(helpers.LOW_BCRYPT_COST)).decode()
    dear = bcrypt.hashpw(b"alice-pw", bcrypt.gensalt(8)).decode()
    middle = bcrypt.hashpw(b"bob-pw", bcrypt.gensalt(6)).decode()
    path.write_text(f"carol:{cheap}\nalice:{dear}\nbob:{middle}\n")
    return load_accounts(str(path), FailureClock(types.SimpleNamespace(value=0.0)))


@pytest.mark.parametrize("user, password, matches", [
    (b"alice", b"alice-pw", True), (b"alice", b"wrong", False),
    (b"bob", b"bob-pw", True), (b"carol", b"carol-pw", True), (b"carol", b"wrong", False),
    (b"mallory", b"wrong", False), (b"carol", b"carol-pw\0", False), (b"alice", b"\0", False),
    (b"mallory", b"\0" * 50, False), (b"carol", b"x" * 5000, False), (b"\xff\xfe", b"pw", False),
    (b"", b"", False),
])
def test_every_check_costs_one_check_at_the_highest_cost(tmp_path: Path, rounds: List[int],
                                                         user: bytes, password: bytes,
                                                         matches: bool) -> None:
    accounts = mixed_accounts(tmp_path)
    assert accounts.check(user, password) is matches
    assert sum(rounds) == 2 ** 8, rounds


@pytest.mark.parametrize("exchange", [
    ["AUTH PLAIN !!!"], ["AUTH PLAIN ="], [f"AUTH PLAIN {b64(b'no nul at all')}"],
    [f"AUTH PLAIN {b64(b'a' + bytes(1) + b'carol' + bytes(1) + b'pw' + bytes(1))}"],
    [f"AUTH PLAIN {b64(b'mallory' + bytes(1) + b'carol' + bytes(1) + b'carol-pw')}"],
    ["AUTH LOGIN", "*"], ["AUTH LOGIN", b64(b"carol"), "%%%"], ["AUTH PLAIN", ""],
    [f"AUTH LOGIN {b64(b'carol')}", b64(b"carol-pw" + bytes(1))],
    [f"AUTH PLAIN {b64(bytes(1) + b'carol' + bytes(1) + b'carol-pw')}"],
])
def test_every_exchange_costs_the_same_through_the_session(tmp_path: Path, rounds: List[int],
                                                           exchange: List[str]) -> None:
    """Malformed, cancelled, refused or accepted: one check's worth of work."""
    settings = Settings(hostname="mx.test", auth=mixed_accounts(tmp_path))
    got = converse(settings, "EHLO client.test", *exchange, "QUIT")
    assert got[-1].startswith("221 "), got
    assert sum(rounds) == 2 ** 8, (got, rounds)
