"""The validated configuration, built once from the command line: the
defaults and bounds of option values, their checks, and ``Config``.  Which
option fills which setting is the option table's to say
(:mod:`msmtpd.base.options`).

Only the standard library's lightest modules are imported here: the
command line is parsed and the sockets bound before anything slow loads.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs about 3 ms before the port listens; annotations are strings
if TYPE_CHECKING:
    from ipaddress import IPv4Network, IPv6Network
    from typing import List, Optional, Tuple, Union

    Network = Union[IPv4Network, IPv6Network]


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
# unix(7): sun_path holds 108 octets, the last one a NUL.
MAX_UNIX_PATH = 107
# --socket-mode: the permission bits a socket file can use (no set-id, no sticky).
DEFAULT_SOCKET_MODE = 0o666
SOCKET_MODE_BITS = 0o777
# Postfix's maximal_queue_lifetime: 5 days.
DEFAULT_QUEUE_LIFETIME = 5 * 24 * 3600.0


def is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²', which int() refuses."""
    return text.isascii() and text.isdigit()


class ConfigError(ValueError):
    """A start-up problem; the message is the one line the user sees."""


class Config:
    """Every setting.  Each is an option's, and its default is the one the
    option table gives (:mod:`msmtpd.base.options`, also what ``--help``
    says); the declarations below only give mypy the types.  A plain class:
    ``dataclasses`` would import ``inspect``, too slow for ``--inetd``."""

    inetd: bool
    interfaces: List[str]  # IP addresses, and paths of Unix sockets (beginning with /)
    socket_mode: int
    unix_login: bool
    port: int
    log: str  # "none", "syslog", "-" or an absolute path
    log_format: str  # "text" or "json"
    command: str
    auth_user: Optional[str]
    auth_passwordeval: Optional[str]
    timeout: float
    command_timeout: float
    max_size: int
    max_sessions: int
    spare_workers: int
    spool_dir: Optional[str]
    daemon: bool
    pidfile: Optional[str]
    user: Optional[str]
    shell_safe_addresses: bool
    tls_cert: Optional[str]
    tls_key: Optional[str]
    tls_implicit: bool
    tls_required: bool
    idle_exit: Optional[float]
    metrics: Optional[Tuple[str, int]]  # --metrics: where the HTTP endpoint listens
    auth_file: Optional[str]
    senders: Optional[str]  # an absolute path
    allow: List[Network]
    proxy_protocol: List[Network]  # the proxies whose PROXY header names the client
    check: bool
    queue: Optional[str]  # --queue (store and forward) and its companions
    queue_workers: int
    queue_lifetime: float
    queue_list: bool
    queue_flush: bool
    rate_limit: Optional[Tuple[int, float]]  # --rate-limit: (mails, seconds)
    queue_rate: Optional[Tuple[int, float]]  # --queue-rate: (deliveries, seconds)
    queue_first_try: float  # --queue-first-try: 0, or how long a session tries a mail itself

    def __init__(self) -> None:
        # Imported here: the table checks values with this module's parsers.
        from msmtpd.base.options import OPTIONS

        for option in OPTIONS:
            option.set_default(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Config({vars(self)!r})"


def parse_port(text: str) -> int:
    if not is_number(text) or len(text) > 5 or not 0 < int(text) < 65536:
        raise ConfigError(f"invalid port '{text}': expected a number from 1 to 65535")
    return int(text)


def is_unix_path(interface: str) -> bool:
    """An --interface that names a Unix socket rather than an IP address."""
    return interface.startswith("/")


def parse_interface(text: str) -> str:
    """An IPv4 or IPv6 address in its usual spelling (``::0001`` is ``::1``),
    or the absolute path of a Unix socket."""
    import _socket as socket  # the C module alone: socket.py loads enum and selectors

    if is_unix_path(text):
        # sockaddr_un's sun_path (unix(7)): 108 octets with the final NUL.
        if len(text.encode("utf-8", "surrogateescape")) > MAX_UNIX_PATH or "\0" in text:
            raise ConfigError(f"invalid interface '{text[:60]}': a Unix socket path must be"
                              f" at most {MAX_UNIX_PATH} octets")
        return text

    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):
        raise ConfigError(f"invalid interface '{text}': expected an IPv4 or IPv6 address,"
                          " or the path of a Unix socket (/run/msmtpd.sock)") from None


def parse_mode(text: str, option: str) -> int:
    """Permission bits in octal, as chmod takes them: ``0660``, ``660``."""
    if not (text.isascii() and 0 < len(text) <= 4 and set(text) <= set("01234567")) \
            or int(text, 8) > SOCKET_MODE_BITS:
        raise ConfigError(f"invalid {option} '{text[:40]}': expected octal permission bits"
                          " from 0000 to 0777 (0660)")
    return int(text, 8)


def parse_seconds(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_SECONDS:  # also false for nan
        raise ConfigError(f"invalid {option} '{text}': expected a positive number of seconds,"
                          f" at most {MAX_SECONDS}")
    return value


# RFC 5321 section 4.5.3.2.6: a client waits 10 minutes for the reply to
# the final dot; a first try that may last longer would outwait it.
MAX_FIRST_TRY_SECONDS = 600.0


def parse_first_try(text: str, option: str) -> float:
    """``--queue-first-try``: 0 (off) up to MAX_FIRST_TRY_SECONDS."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_FIRST_TRY_SECONDS:  # also false for nan
        raise ConfigError(f"invalid {option} '{text[:40]}': expected a number of seconds"
                          f" from 0 to {MAX_FIRST_TRY_SECONDS:g}")
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


def parse_listen_address(text: str) -> Tuple[str, int]:
    """``--metrics``: ``ADDR:PORT`` or ``[IPv6]:PORT``, an IP address (no
    Unix socket: Prometheus scrapes over TCP)."""
    address, colon, port = text.rpartition(":")
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    if not colon or not address or is_unix_path(address):
        raise ConfigError(f"invalid --metrics '{text[:60]}': expected ADDR:PORT"
                          " (127.0.0.1:9125, [::1]:9125)")
    return parse_interface(address), parse_port(port)


def parse_network(text: str, option: str = "--allow") -> Network:
    """``10.0.0.0/8``, ``2001:db8::/32``, or a plain address (a /32 or /128)."""
    import ipaddress  # a few ms: only when --allow or --proxy-protocol is given

    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"invalid {option} '{text[:60]}': expected an IPv4 or IPv6 address"
                          " or network (10.0.0.0/8, fd00::/8)") from None


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


# The largest N of --rate-limit and --queue-rate (a count that fits the
# shared table's 32-bit fields).
MAX_RATE_COUNT = 1_000_000


def parse_rate(text: str, option: str) -> Tuple[int, float]:
    """``N/PERIOD``: N a count from 1, PERIOD a number with s, m, h or d
    (``500/1d``, ``30/1m``), as (N, seconds)."""
    count, slash, period = text.partition("/")
    unit = period[-1:].lower()
    if (slash and is_number(count) and len(count) <= 7 and unit in DURATION_UNITS
            and 1 <= int(count) <= MAX_RATE_COUNT):
        try:
            return int(count), parse_duration(period, option)
        except ConfigError:
            pass
    raise ConfigError(f"invalid {option} '{text[:40]}': expected N/PERIOD, N from 1 to"
                      f" {MAX_RATE_COUNT} and PERIOD a number with s, m, h or d (500/1d, 30/1m)")
