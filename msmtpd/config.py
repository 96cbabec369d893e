"""The validated configuration, built once from the command line."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import List, Optional

from msmtpd.delivery import DEFAULT_COMMAND

DEFAULT_INTERFACE = "127.0.0.1"
DEFAULT_PORT = 25
# RFC 5321 section 4.5.3.2.7: a server SHOULD wait at least 5 minutes for the next command.
DEFAULT_TIMEOUT = 300.0
DEFAULT_COMMAND_TIMEOUT = 300.0
DEFAULT_MAX_SESSIONS = 16


class ConfigError(ValueError):
    """A start-up problem; the message is the one line the user sees."""


@dataclass
class Config:
    inetd: bool = False
    interfaces: List[str] = field(default_factory=lambda: [DEFAULT_INTERFACE])
    port: int = DEFAULT_PORT
    log: str = "none"
    command: str = DEFAULT_COMMAND
    auth_user: Optional[str] = None
    auth_passwordeval: Optional[str] = None
    timeout: float = DEFAULT_TIMEOUT
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    max_size: int = 0
    max_sessions: int = DEFAULT_MAX_SESSIONS
    daemon: bool = False
    pidfile: Optional[str] = None
    user: Optional[str] = None
    spool_dir: Optional[str] = None


def parse_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"invalid port '{text}': expected a number from 1 to 65535")
    return int(text)


def parse_interface(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(f"invalid interface '{text}': expected an IPv4 or IPv6 address") from None


def parse_seconds(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"invalid {option} '{text}': expected a positive number of seconds")
    return value


def parse_count(text: str, option: str, minimum: int) -> int:
    if not text.isdigit() or int(text) < minimum:
        raise ConfigError(f"invalid {option} '{text}': expected a whole number of at least {minimum}")
    return int(text)


def parse_log(text: str) -> str:
    return text


def parse_auth(text: str) -> tuple[str, Optional[str]]:
    user, comma, passwordeval = text.partition(",")
    if not user:
        raise ConfigError("invalid --auth: the user name is empty")
    if comma and not passwordeval.strip():
        raise ConfigError("invalid --auth: the passwordeval command after ',' is empty")
    return user, (passwordeval if comma else None)
