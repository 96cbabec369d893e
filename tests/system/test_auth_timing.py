"""AUTH time tells nothing: every AUTH does the same bcrypt work whatever
the name and the password, measured on a real daemon with real smtplib
sessions (the bcrypt rounds are counted in tests/unit/test_auth_timing.py):
the medians of 10 tries for a known user, an unknown one, a user whose hash is
cheaper than the file's dearest, a password with a NUL, an over-long
password and a malformed exchange differ by less than 10 %.

The brute-force delay (one second after any failure, for every AUTH of
the daemon) would dominate such a measurement and make it take minutes:
a first failure turns it on for all, each try's time minus that delay is
the work compared, and the tries run in overlapping sessions, one AUTH
every GAP seconds, so that their delays overlap but their bcrypt checks
do not."""

from __future__ import annotations

import smtplib
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import bcrypt

from msmtpd.policy.passwords import FAILURE_DELAY
from tests import helpers
from tests.helpers import auth_plain, b64

# ~120 ms a check on this kind of machine: far above a loopback round trip.
HIGH_COST = 11
TRIES = 10
# Between two AUTH commands: more than one check at HIGH_COST, so the
# checks never run at once and compete for the CPU.
GAP = 0.25
# A session connects and says EHLO this long before its AUTH.
LEAD = 0.5
TOLERANCE = 0.10
# Measurements before the verdict (see the test).
MEASUREMENTS = 2




def test_a_cost_above_14_is_refused_at_start_naming_the_line(tmp_path: Path) -> None:
    users = tmp_path / "users"
    fine = bcrypt.hashpw(b"pw", bcrypt.gensalt(helpers.LOW_BCRYPT_COST)).decode()
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
    return "AUTH PLAIN " + auth_plain(user, password)


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
    helpers.htpasswd(users, "carol", "carol-pw", "-B", "-C", str(helpers.LOW_BCRYPT_COST))
    log = tmp_path / "msmtpd.log"
    args = [f"--auth-file={users}", "--command=cat >/dev/null", f"--log={log}",
            # Room for every overlapping session even on a slow machine: a full
            # pool with clients waiting would end sessions with 421 (overload).
            "--max-sessions=64", "--spare-workers=16"]
    with helpers.Server(args) as server:
        helpers.wait_for_log(log, "listening on")
        with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:  # turns the delay on
            smtp.ehlo("timing.test")
            assert smtp.docmd(plain(b"mallory", b"first"))[0] == 535
        # A busy machine (another process taking a core for a while) can
        # slow one group's checks: one measurement is repeated before the
        # verdict, never more, so a real difference still fails.
        verdicts = []
        for _ in range(MEASUREMENTS):
            differs, shown = measure(server)
            verdicts.append(shown)
            if not differs:
                break
        else:
            raise AssertionError(f"{differs} differs in every measurement: {verdicts}")
    print(f"median work after the {FAILURE_DELAY:g} s delay: {verdicts[-1]}")


def measure(server: helpers.Server) -> Tuple[str, str]:
    """The tries of every group, interleaved; the first group whose median
    work differs from the unknown user's by TOLERANCE or more ("" when none
    does) and the medians as text."""
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
    differing = [group for group, seconds in work.items()
                 if abs(seconds - reference) >= TOLERANCE * reference]
    return (differing[0] if differing else ""), shown
