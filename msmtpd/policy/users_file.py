"""``--auth-file``: several users from an htpasswd file.

A line is ``user:hash`` as ``htpasswd -B`` writes it.  Only bcrypt hashes
are accepted: a plain-text password or another scheme is refused at
start-up, naming the line.  The senders a user may use are in ``--senders``
(a third field here is refused: htpasswd drops it when it changes a
password).  ``bcrypt`` is imported only on this path.

Timing tells nothing.  Every AUTH costs the bcrypt work of one check at the
highest cost in the file, whatever the name and the password: a user whose
hash is cheaper (cost c, highest cost M) is checked against its own hash,
then against decoy hashes of costs c, c+1, ..., M-1, whose work (2^c + ...
+ 2^(M-1) = 2^M - 2^c rounds) tops it up to exactly 2^M; an unknown name, a
password with a NUL or a malformed exchange is checked against one decoy of
cost M.  The decoys are made when the file is read (in the master, before
the workers fork), so no first AUTH in a worker costs more.
"""

from __future__ import annotations

import re
from typing import Dict, Tuple

# Imported with this module, before any process drops privileges (the
# sessions' user may not be able to read the Python installation).
import bcrypt

from msmtpd.policy.config_files import read_user_lines
from msmtpd.policy.passwords import FailureClock, delay_after_failure

# What htpasswd -B writes ($2y$), and the other bcrypt prefixes: cost, then
# 22 characters of salt and 31 of hash in bcrypt's base64 alphabet.
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# Each step doubles a check: 12 is about a quarter of a second, 14 one
# second; above that every AUTH (and every decoy) would take seconds to days.
MAX_BCRYPT_COST = 14
# bcrypt uses the first 72 bytes of a password; htpasswd -B truncates the
# same way, so a longer password still matches what htpasswd stored.
BCRYPT_MAX_PASSWORD = 72
# The hash part of a decoy: never compared as a match, only its salt and cost are used.
DECOY_HASH = b"." * 31


class MailAccount:
    """One user's bcrypt hash."""

    def __init__(self, password_hash: bytes) -> None:
        self.password_hash = password_hash
        self.cost = int(password_hash[4:6])


class Accounts:
    """The session's Authenticator for the users of an ``--auth-file``."""

    def __init__(self, users: Dict[str, MailAccount], clock: FailureClock) -> None:
        self.users = users
        self.clock = clock
        self.cost = max(account.cost for account in users.values())
        # A decoy of every cost up to the highest: random salts, so that
        # bcrypt really runs, and no hashpw at start-up.
        self._decoys = {cost: bcrypt.gensalt(cost, prefix=b"2b") + DECOY_HASH
                        for cost in range(min(a.cost for a in users.values()), self.cost + 1)}

    def check(self, user: bytes, password: bytes) -> bool:
        """Whether ``password`` (exactly these bytes) is ``user``'s; always
        the work of one check at the file's highest cost."""
        secret = password[:BCRYPT_MAX_PASSWORD]
        # No htpasswd password holds a NUL (and older bcrypt refuses one):
        # such a password never matches, after the same work as any other.
        usable = b"\0" not in secret
        secret = secret.replace(b"\0", b"")
        account = self.users.get(_name(user))
        if account is None:
            bcrypt.checkpw(secret, self._decoys[self.cost])
            return False
        matched = bool(bcrypt.checkpw(secret, account.password_hash))
        for cost in range(account.cost, self.cost):
            bcrypt.checkpw(secret, self._decoys[cost])
        return matched and usable

    def wait(self) -> None:
        delay_after_failure(self.clock)

    def failed(self) -> None:
        self.clock.record()


def _name(user: bytes) -> str:
    """The user name the client sent; one that is not UTF-8 names no
    user of the file (which is UTF-8 text)."""
    try:
        return user.decode("utf-8")
    except UnicodeDecodeError:
        return ""


def load_accounts(path: str, clock: FailureClock) -> Accounts:
    """Read ``path``; ConfigError names the file and line of the first problem."""
    return Accounts(read_user_lines(path, "--auth-file", parse_line, "defined"), clock)


def parse_line(line: str) -> Tuple[str, MailAccount]:
    """``user:hash``; ValueError says what is wrong (never the hash)."""
    user, _, rest = line.partition(":")
    password_hash, third, _senders = rest.partition(":")
    if not user or any(c.isspace() or not c.isprintable() for c in user):
        raise ValueError("expected user:hash as written by htpasswd -B")
    if not BCRYPT_HASH.fullmatch(password_hash):
        scheme = _scheme_of(password_hash)
        raise ValueError(f"user '{user}' has {scheme}; only bcrypt hashes are accepted"
                         " (htpasswd -B)")
    if third:
        raise ValueError(f"user '{user}' has a third field: the senders a user may use now go"
                         f" in a --senders file (a line '{user}: alice@example.org, @example.org'),"
                         " where htpasswd cannot drop them")
    account = MailAccount(password_hash.encode("ascii"))
    if account.cost > MAX_BCRYPT_COST:
        raise ValueError(f"user '{user}' has a bcrypt cost of {account.cost}; at most"
                         f" {MAX_BCRYPT_COST} is accepted (each step doubles every AUTH's time)")
    return user, account


def _scheme_of(password_hash: str) -> str:
    """How to name a refused hash without printing it."""
    if not password_hash:
        return "no password hash"
    if password_hash.startswith("$apr1$"):
        return "an MD5 hash (htpasswd -m)"
    if password_hash.startswith("{SHA}"):
        return "a SHA-1 hash (htpasswd -s)"
    if password_hash.startswith("$2"):
        return "a malformed bcrypt hash"
    if password_hash.startswith("$"):
        return "an unknown hash scheme"
    return "a plain-text password or a crypt() hash"
