"""AUTH time tells nothing: every AUTH does the same bcrypt work whatever
the name and the password.

First counted (in memory, exact): the bcrypt rounds each kind of AUTH
costs.  Then measured on a real daemon with real smtplib sessions: the
medians of 10 tries for a known user, an unknown one, a user whose hash is
cheaper than the file's dearest, a password with a NUL, an over-long
password and a malformed exchange differ by less than 10 %.

The brute-force delay (one second after any failure, for every AUTH of
the daemon) would dominate such a measurement and make it take minutes:
a first failure turns it on for all, each try's time minus that delay is
the work compared, and the tries run in overlapping sessions, one AUTH
every GAP seconds, so that their delays overlap but their bcrypt checks
do not."""

from __future__ import annotations

import base64
import smtplib
import statistics
import subprocess
import threading
import time
import types
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import bcrypt
import pytest

from msmtpd.policy.passwords import FAILURE_DELAY, FailureClock
from msmtpd.policy.users_file import Accounts, load_accounts
from msmtpd.smtp.session import Settings
from tests import helpers

# ~120 ms a check on this kind of machine: far above a loopback round trip.
HIGH_COST = 11
LOW_COST = 4
TRIES = 10
# Between two AUTH commands: more than one check at HIGH_COST, so the
# checks never run at once and compete for the CPU.
GAP = 0.25
# A session connects and says EHLO this long before its AUTH.
LEAD = 0.5
TOLERANCE = 0.10


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


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
    cheap = bcrypt.hashpw(b"carol-pw", bcrypt.gensalt(LOW_COST)).decode()
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
    got = helpers.converse(settings, "EHLO client.test", *exchange, "QUIT")
    assert got[-1].startswith("221 "), got
    assert sum(rounds) == 2 ** 8, (got, rounds)


def test_a_cost_above_14_is_refused_at_start_naming_the_line(tmp_path: Path) -> None:
    users = tmp_path / "users"
    fine = bcrypt.hashpw(b"pw", bcrypt.gensalt(LOW_COST)).decode()
    users.write_text(f"# users\nalice:{fine}\nbob:{fine.replace('$04$', '$14$')}\n"
                     f"carol:{fine.replace('$04$', '$15$')}\n")
    for args in ([f"--auth-file={users}"], ["--inetd", f"--auth-file={users}"]):
        done = subprocess.run([helpers.program("msmtpd"), f"--port={helpers.free_port()}", *args],
                              capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
        assert done.returncode == 3, done
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert (f"invalid --auth-file {users} line 4: user 'carol' has a bcrypt cost of 15;"
                " at most 14") in done.stderr, done.stderr


# -- the time, measured ------------------------------------------------------------------


class Try:
    """One AUTH in a session of its own: what to send before the timed
    line, and the timed line."""

    def __init__(self, group: str, setup: List[str], timed: str) -> None:
        self.group, self.setup, self.timed = group, setup, timed
        self.seconds = -1.0
        self.code = 0
        self.error = ""

    def run(self, host: str, port: int, start: float) -> None:
        try:
            _pause_until(start - LEAD)
            with smtplib.SMTP(host, port, local_hostname="timing.test", timeout=30) as smtp:
                smtp.ehlo()
                for line in self.setup:
                    code, _ = smtp.docmd(line)
                    assert code == 334, (line, code)
                _pause_until(start)
                began = time.perf_counter()
                smtp.putcmd(self.timed)
                self.code, _ = smtp.getreply()
                self.seconds = time.perf_counter() - began
        except Exception as exc:  # reported by the test, with the group
            self.error = f"{type(exc).__name__}: {exc}"


def _pause_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.perf_counter()))


def plain(user: bytes, password: bytes) -> str:
    return "AUTH PLAIN " + b64(bytes(1) + user + bytes(1) + password)


GROUPS: Dict[str, Callable[[], Tuple[List[str], str]]] = {
    "unknown user": lambda: ([], plain(b"mallory", b"wrong-pw")),
    "known user": lambda: ([], plain(b"alice", b"wrong-pw")),
    "known user, cheaper hash": lambda: ([], plain(b"carol", b"wrong-pw")),
    "known user, NUL in the password": lambda: ([f"AUTH LOGIN {b64(b'alice')}"],
                                                b64(b"alice-pw" + bytes(1) + b"x")),
    "known user, over-long password": lambda: ([], plain(b"alice", b"y" * 3000)),
    "malformed exchange": lambda: ([], "AUTH PLAIN " + b64(b"alice alice-pw")),
}


def test_known_and_unknown_users_take_the_same_time(tmp_path: Path) -> None:
    users = tmp_path / "users"
    helpers.htpasswd(users, "alice", "alice-pw", "-B", "-C", str(HIGH_COST))
    helpers.htpasswd(users, "carol", "carol-pw", "-B", "-C", str(LOW_COST))
    log = tmp_path / "msmtpd.log"
    args = [f"--auth-file={users}", "--command=cat >/dev/null", f"--log={log}",
            "--max-sessions=12", "--spare-workers=12"]
    with helpers.Server(args) as server:
        helpers.wait_for_log(log, "listening on")
        with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:  # turns the delay on
            smtp.ehlo("timing.test")
            assert smtp.docmd(plain(b"mallory", b"first"))[0] == 535
        tries = [Try(group, *make()) for _ in range(TRIES) for group, make in GROUPS.items()]
        first = time.perf_counter() + LEAD + 0.1
        threads = [threading.Thread(target=one.run, args=(server.host, server.port, first + i * GAP))
                   for i, one in enumerate(tries)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not [t.error for t in tries if t.error], [(t.group, t.error) for t in tries if t.error]
    for one in tries:
        expected = 501 if one.group == "malformed exchange" else 535
        assert one.code == expected, (one.group, one.code)
        assert one.seconds >= FAILURE_DELAY, (one.group, one.seconds)  # every try was delayed
    work = {group: statistics.median(t.seconds - FAILURE_DELAY for t in tries if t.group == group)
            for group in GROUPS}
    shown = ", ".join(f"{group} {seconds * 1000:.1f} ms" for group, seconds in work.items())
    reference = work["unknown user"]
    assert reference > 0.02, f"bcrypt does not dominate the measurement: {shown}"
    for group, seconds in work.items():
        assert abs(seconds - reference) < TOLERANCE * reference, f"{group} differs: {shown}"
    print(f"median work after the {FAILURE_DELAY:g} s delay: {shown}")
