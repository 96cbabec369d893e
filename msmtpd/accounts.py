"""``--auth-file``: several users from an htpasswd file, each optionally
bound to the sender addresses it may use.

A line is ``user:hash`` as ``htpasswd -B`` writes it, or
``user:hash:SENDERS`` with a comma-separated list of addresses
(``alice@example.org``) and domains (``@example.org``).  Only bcrypt hashes
are accepted: a plain-text password or another scheme is refused at
start-up, naming the line.  ``bcrypt`` is imported only on this path.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

# Imported with this module, before any process drops privileges (the
# sessions' user may not be able to read the Python installation).
import bcrypt

from msmtpd.auth import FailureClock, delay_after_failure
from msmtpd.config import ConfigError

# What htpasswd -B writes ($2y$), and the other bcrypt prefixes: cost, then
# 22 characters of salt and 31 of hash in bcrypt's base64 alphabet.
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# bcrypt uses the first 72 bytes of a password; htpasswd -B truncates the
# same way, so a longer password still matches what htpasswd stored.
BCRYPT_MAX_PASSWORD = 72
# An htpasswd file is a handful of users; this bounds a file read by mistake.
MAX_FILE_BYTES = 1 << 20


class Account:
    """One user's bcrypt hash and, if restricted, the senders it may use."""

    def __init__(self, password_hash: bytes, addresses: frozenset[str],
                 domains: frozenset[str], restricted: bool) -> None:
        self.password_hash = password_hash
        self.addresses = addresses  # "local@domain", the domain in lower case
        self.domains = domains  # "domain", in lower case
        self.restricted = restricted

    def may_send(self, sender: str) -> bool:
        if not self.restricted:
            return True
        local, at, domain = sender.rpartition("@")
        if not at or not local:
            return False  # the null sender, or no domain: not in any list
        domain = domain.lower()
        return f"{local}@{domain}" in self.addresses or domain in self.domains


class Accounts:
    """The session's Authenticator for the users of an ``--auth-file``."""

    def __init__(self, users: Dict[str, Account], clock: FailureClock) -> None:
        self.users = users
        self.clock = clock
        self._decoy: Optional[bytes] = None

    def check(self, user: str, password: str) -> bool:
        secret = password.encode("utf-8")[:BCRYPT_MAX_PASSWORD]
        account = self.users.get(user)
        if account is None:
            # Spend the same time as for a real user, so that the answer's
            # delay does not tell which user names exist.
            bcrypt.checkpw(secret.replace(b"\0", b""), self._decoy_hash())
            return False
        if b"\0" in secret:
            return False  # no htpasswd password holds a NUL; bcrypt would refuse it
        return bool(bcrypt.checkpw(secret, account.password_hash))

    def may_send(self, user: str, sender: str) -> bool:
        account = self.users.get(user)
        return account is not None and account.may_send(sender)

    def wait(self) -> None:
        delay_after_failure(self.clock)

    def failed(self) -> None:
        self.clock.record()

    def _decoy_hash(self) -> bytes:
        if self._decoy is None:
            costs = [int(a.password_hash[4:6]) for a in self.users.values()] or [5]
            self._decoy = bcrypt.hashpw(b"decoy", bcrypt.gensalt(max(costs), prefix=b"2b"))
        return self._decoy


def load_accounts(path: str, clock: FailureClock) -> Accounts:
    """Read ``path``; ConfigError names the file and line of the first problem."""
    import os
    import stat

    try:
        # Non-blocking, so that a FIFO named by mistake cannot hang a SIGHUP.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"invalid --auth-file {path}: not a regular file")
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read --auth-file {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"invalid --auth-file {path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"invalid --auth-file {path}: not UTF-8 text") from None
    users: Dict[str, Account] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            user, account = parse_line(line)
        except ValueError as exc:
            raise ConfigError(f"invalid --auth-file {path} line {number}: {exc}") from None
        if user in users:
            raise ConfigError(f"invalid --auth-file {path} line {number}:"
                              f" user '{user}' is already defined")
        users[user] = account
    if not users:
        raise ConfigError(f"invalid --auth-file {path}: no users in it")
    return Accounts(users, clock)


def parse_line(line: str) -> Tuple[str, Account]:
    """``user:hash[:senders]``; ValueError says what is wrong (never the hash)."""
    user, _, rest = line.partition(":")
    password_hash, third, senders = rest.partition(":")
    if not user or any(c.isspace() or not c.isprintable() for c in user):
        raise ValueError("expected user:hash as written by htpasswd -B")
    if not BCRYPT_HASH.fullmatch(password_hash):
        scheme = _scheme_of(password_hash)
        raise ValueError(f"user '{user}' has {scheme}; only bcrypt hashes are accepted"
                         " (htpasswd -B)")
    addresses, domains = set(), set()
    for item in senders.split(","):
        item = item.strip()
        if not item:
            continue
        local, at, domain = item.rpartition("@")
        if not at or not domain or "@" in local or any(c.isspace() for c in item):
            raise ValueError(f"invalid sender '{item}' for user '{user}'"
                             " (expected alice@example.org or @example.org)")
        if local:
            addresses.add(f"{local}@{domain.lower()}")
        else:
            domains.add(domain.lower())
    if third and not addresses and not domains:
        raise ValueError(f"user '{user}' has an empty list of senders"
                         " (leave out the third field to allow any sender)")
    return user, Account(password_hash.encode("ascii"), frozenset(addresses),
                         frozenset(domains), restricted=bool(third))


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
