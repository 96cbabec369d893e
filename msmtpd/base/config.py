"""The validated configuration, built once from the command line.

Only the standard library's lightest modules are imported here: the
command line is parsed and the sockets bound before anything slow loads.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs about 3 ms before the port listens; annotations are strings
if TYPE_CHECKING:
    from typing import Any, List, Optional


DEFAULT_COMMAND = "msmtp -f %F --"
DEFAULT_INTERFACE = "127.0.0.1"
DEFAULT_PORT = 25
# RFC 5321 section 4.5.3.2.7: a server SHOULD wait at least 5 minutes for the next command.
DEFAULT_TIMEOUT = 300.0
DEFAULT_COMMAND_TIMEOUT = 300.0
DEFAULT_MAX_SESSIONS = 16
DEFAULT_SPARE_WORKERS = 2
# Upper bounds, so that every value fits the clocks and the process table:
# a year of seconds, and more sessions than one small relay should fork.
MAX_SECONDS = 365 * 24 * 3600
MAX_SESSIONS = 1024
MAX_SIZE = 2**63 - 1  # what a client can parse from EHLO's SIZE
DEFAULT_QUEUE_WORKERS = 2
MAX_QUEUE_WORKERS = 64
# Postfix's maximal_queue_lifetime: 5 days.
DEFAULT_QUEUE_LIFETIME = 5 * 24 * 3600.0


def is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²', which int() refuses."""
    return text.isascii() and text.isdigit()


class ConfigError(ValueError):
    """A start-up problem; the message is the one line the user sees."""


class Config:
    """Every setting, with the defaults of ``msmtpd --help``.  A plain class:
    ``dataclasses`` would import ``inspect``, too slow for ``--inetd``."""

    def __init__(self, inetd: bool = False, daemon: bool = False, pidfile: Optional[str] = None,
                 user: Optional[str] = None) -> None:
        self.inetd = inetd
        self.interfaces: List[str] = [DEFAULT_INTERFACE]
        self.port = DEFAULT_PORT
        self.log = "none"
        self.command = DEFAULT_COMMAND
        self.auth_user: Optional[str] = None
        self.auth_passwordeval: Optional[str] = None
        self.timeout = DEFAULT_TIMEOUT
        self.command_timeout = DEFAULT_COMMAND_TIMEOUT
        self.max_size = 0
        self.max_sessions = DEFAULT_MAX_SESSIONS
        self.daemon = daemon
        self.pidfile = pidfile
        self.user = user
        self.spool_dir: Optional[str] = None
        self.shell_safe_addresses = False
        self.tls_cert: Optional[str] = None
        self.tls_key: Optional[str] = None
        self.tls_implicit = False
        self.tls_required = False
        self.idle_exit: Optional[float] = None
        self.spare_workers = DEFAULT_SPARE_WORKERS
        self.auth_file: Optional[str] = None
        self.senders: Optional[str] = None  # --senders, an absolute path
        self.allow: List[Any] = []  # ipaddress networks, from msmtpd.policy.allow_list.parse_network
        self.check = False
        # --queue (store and forward) and its companions
        self.queue: Optional[str] = None
        self.queue_workers = DEFAULT_QUEUE_WORKERS
        self.queue_lifetime = DEFAULT_QUEUE_LIFETIME
        self.queue_list = False
        self.queue_flush = False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Config({vars(self)!r})"


def parse_port(text: str) -> int:
    if not is_number(text) or len(text) > 5 or not 0 < int(text) < 65536:
        raise ConfigError(f"invalid port '{text}': expected a number from 1 to 65535")
    return int(text)


def parse_interface(text: str) -> str:
    """An IPv4 or IPv6 address in its usual spelling (``::0001`` is ``::1``)."""
    import _socket as socket  # the C module alone: socket.py loads enum and selectors

    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):
        raise ConfigError(f"invalid interface '{text}': expected an IPv4 or IPv6 address") from None


def parse_seconds(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_SECONDS:  # also false for nan
        raise ConfigError(f"invalid {option} '{text}': expected a positive number of seconds,"
                          f" at most {MAX_SECONDS}")
    return value


def parse_count(text: str, option: str, minimum: int, maximum: int) -> int:
    # int() refuses over 4300 digits; no bound here has more than 19.
    if not is_number(text) or len(text) > 20 or not minimum <= int(text) <= maximum:
        raise ConfigError(f"invalid {option} '{text[:40]}': expected a whole number"
                          f" from {minimum} to {maximum}")
    return int(text)


def parse_directory(text: str, option: str) -> str:
    import os

    if not os.path.isdir(text):
        raise ConfigError(f"invalid {option} '{text}': not a directory")
    return os.path.abspath(text)


def parse_auth(text: str) -> tuple[str, Optional[str]]:
    user, comma, passwordeval = text.partition(",")
    if not user:
        raise ConfigError("invalid --auth: the user name is empty")
    if comma and not passwordeval.strip():
        raise ConfigError("invalid --auth: the passwordeval command after ',' is empty")
    return user, (passwordeval if comma else None)


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 24 * 3600}


def parse_duration(text: str, option: str) -> float:
    """Seconds, or a number with s, m, h or d (``5d``), as Postfix's time values."""
    unit = DURATION_UNITS.get(text[-1:].lower()) if text else None
    try:
        seconds = parse_seconds(text[:-1] if unit else text, option) * (unit or 1)
    except ConfigError:
        raise ConfigError(f"invalid {option} '{text[:40]}': expected a positive number of"
                          " seconds, or one with s, m, h or d (5d)") from None
    if seconds > MAX_SECONDS:
        raise ConfigError(f"invalid {option} '{text}': at most {MAX_SECONDS} seconds")
    return seconds
