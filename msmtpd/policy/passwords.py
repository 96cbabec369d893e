"""``--auth``: getting the password at start-up, checking credentials, and
the brute-force delay.

The password is obtained before binding, daemonising or dropping
privileges, so every failure reaches the terminal.  It is never logged.
Passwords are bytes: a client's password matches when it sends exactly
these bytes, never after decoding (with replacement characters) makes two
different passwords equal.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Callable, Optional

from msmtpd.base.config import ConfigError

# After a failure, every AUTH answer is delayed this long ...
FAILURE_DELAY = 1.0
# ... for this long after the latest failure.
FAILURE_WINDOW = 60.0
# Attributes of the libsecret item, as secret-tool and msmtp use them.
KEYRING_HOST = "localhost"
KEYRING_SERVICE = "smtp"
# Service name for keyring's other backends (macOS Keychain, KWallet, ...).
KEYRING_FALLBACK_SERVICE = "msmtpd"


def password_from_eval(command: str) -> bytes:
    """The first line of ``command``'s output, as msmtp's passwordeval."""
    try:
        result = subprocess.run(["/bin/sh", "-c", command], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, check=False)
    except OSError as exc:
        raise ConfigError(f"cannot run the passwordeval command: {exc.strerror}") from None
    if result.returncode != 0:
        raise ConfigError(f"the passwordeval command failed with exit status {result.returncode}")
    first = result.stdout.split(b"\n", 1)[0].rstrip(b"\r")
    if not first:
        raise ConfigError("the passwordeval command printed no password")
    return first


def password_from_libsecret(user: str) -> Optional[bytes]:
    """The secret stored with ``secret-tool store ... host localhost service smtp user USER``."""
    try:
        import secretstorage  # comes with keyring on Linux
    except ImportError:
        return None
    try:
        connection = secretstorage.dbus_init()
        try:
            items = secretstorage.search_items(
                connection, {"host": KEYRING_HOST, "service": KEYRING_SERVICE, "user": user})
            for item in items:
                if item.is_locked():
                    item.unlock()
                secret: bytes = item.get_secret()
                return secret
        finally:
            connection.close()
    except Exception:  # no D-Bus session, no secret service, locked: try the next source
        return None
    return None


def password_from_keyring(user: str) -> Optional[bytes]:
    try:
        import keyring
        import keyring.errors

        value: Optional[str] = keyring.get_password(KEYRING_FALLBACK_SERVICE, user)
        return None if value is None else value.encode("utf-8", "surrogateescape")
    except Exception:  # keyring raises many kinds when no backend works
        return None


def password_from_prompt(user: str) -> Optional[bytes]:
    if not sys.stdin.isatty():
        return None
    import getpass

    try:
        typed = getpass.getpass(f"password for {user} at {KEYRING_HOST}: ")
    except (EOFError, KeyboardInterrupt):
        return None
    return typed.encode("utf-8", "surrogateescape")


def obtain_password(user: str, passwordeval: Optional[str]) -> bytes:
    if passwordeval is not None:
        return password_from_eval(passwordeval)
    sources: tuple[Callable[[str], Optional[bytes]], ...] = (
        password_from_libsecret, password_from_keyring, password_from_prompt)
    for source in sources:
        password = source(user)
        if password:
            return password
    raise ConfigError(f"cannot get password for ({KEYRING_HOST}, {KEYRING_SERVICE}, {user})")


class FailureClock:
    """When the latest authentication failure happened.

    ``shared`` is a ``multiprocessing.Value('d')`` created before the
    workers fork, so one failure delays AUTH in every worker; without one
    (``--inetd``, where nothing is shared) every AUTH answer is delayed.
    """

    def __init__(self, shared: Any = None) -> None:
        self._shared = shared

    def record(self) -> None:
        if self._shared is not None:
            self._shared.value = time.time()

    def must_delay(self) -> bool:
        if self._shared is None:
            return True
        return bool(time.time() - self._shared.value < FAILURE_WINDOW)


def delay_after_failure(clock: FailureClock) -> None:
    """The brute-force delay before an AUTH answer."""
    if clock.must_delay():
        time.sleep(FAILURE_DELAY)


class PasswordCheck:
    """The session's Authenticator for one user name and password."""

    def __init__(self, user: str, password: bytes | str, clock: FailureClock) -> None:
        if isinstance(password, str):
            password = password.encode("utf-8")
        self._user = _digest(user.encode("utf-8"))
        self._password = _digest(password)
        self._clock = clock

    def check(self, user: bytes, password: bytes) -> bool:
        """Both compared in full, in constant time, as digests of one
        length, so neither the time nor the lengths tell anything."""
        import hmac

        user_ok = hmac.compare_digest(_digest(user), self._user)
        password_ok = hmac.compare_digest(_digest(password), self._password)
        return user_ok & password_ok

    def wait(self) -> None:
        delay_after_failure(self._clock)

    def failed(self) -> None:
        self._clock.record()


def _digest(secret: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(secret).digest()
