"""Every command-line option, once: how it is spelled, which setting it
fills, its default, how its value is checked, and its lines in ``--help``.

From this table come the parser and the ``--help`` text
(:mod:`msmtpd.commands.cli`), the defaults of :class:`~msmtpd.base.config.Config`,
and the documentation check (every option has an entry in the manual page
and a mention in the guides).  What relates two options (``--senders``
needs ``--auth``) is checked by the parser after the table has done its
part.  Loaded before the port listens: plain classes and the parsers of
:mod:`msmtpd.base.config`, nothing more.
"""

from __future__ import annotations

import os

from msmtpd.base.config import (
    DEFAULT_COMMAND,
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_INTERFACE,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_PORT,
    DEFAULT_QUEUE_LIFETIME,
    DEFAULT_QUEUE_WORKERS,
    DEFAULT_SOCKET_MODE,
    DEFAULT_SPARE_WORKERS,
    DEFAULT_TIMEOUT,
    MAX_QUEUE_WORKERS,
    MAX_SESSIONS,
    MAX_SIZE,
    ConfigError,
    parse_auth,
    parse_count,
    parse_directory,
    parse_duration,
    parse_first_try,
    parse_interface,
    parse_listen_address,
    parse_mode,
    parse_network,
    parse_port,
    parse_rate,
    parse_seconds,
)
from msmtpd.base.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_TEMPFAIL

TYPE_CHECKING = False  # typing costs about 3 ms before the port listens; annotations are strings
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, Tuple

    from msmtpd.base.config import Config

    Check = Callable[[str, str], Any]  # (value, option name) -> the setting, or ConfigError

# --log values that are not a file name.
LOG_KEYWORDS = ("none", "syslog", "-")
# --log-format values: today's text lines, or one JSON object per event.
LOG_FORMATS = ("text", "json")


def _text(value: str, option: str) -> str:
    return value


def _absolute(path: str) -> str:
    return os.path.abspath(path)  # a daemon changes its working directory


def _log_target(value: str, option: str) -> str:
    return value if value in LOG_KEYWORDS else _absolute(value)


def _log_format(value: str, option: str) -> str:
    if value not in LOG_FORMATS:
        raise ConfigError(f"invalid {option} '{value}': expected {' or '.join(LOG_FORMATS)}")
    return value


def _value_only(parse: Callable[[str], Any]) -> Check:
    """A check from a parser whose error message names its option itself."""
    return lambda value, option: parse(value)


def _count(minimum: int, maximum: int) -> Check:
    return lambda value, option: parse_count(value, option, minimum, maximum)


class Option:
    """One option.  ``value`` names its value in ``--help`` (None: a flag,
    which sets its setting to True).  ``settings`` are the Config
    attributes it fills: by default its name with ``_`` for ``-``; none
    for ``--version`` and ``--help``, which print and exit; two for
    ``--auth``, whose check returns a pair.  ``path``: the value is a file
    or directory, made absolute as it is read, since ``--daemon`` changes
    the working directory to / and SIGHUP re-reads some of them from there.
    ``repeatable``: every value given is kept, in a list that replaces the
    default.  ``original``: an option of the C msmtpd, which an abbreviation
    that also fits newer ones keeps meaning (``--comm`` is ``--command``).
    ``help``: its lines in ``--help``, after the spelling."""

    __slots__ = ("name", "value", "settings", "default", "check", "path", "repeatable", "original",
                 "help")

    def __init__(self, name: str, *help: str, value: Optional[str] = None,
                 settings: Optional[Tuple[str, ...]] = None, default: Any = None,
                 check: Check = _text, path: bool = False, repeatable: bool = False,
                 original: bool = False) -> None:
        self.name = name
        self.value = value
        self.settings = (name[2:].replace("-", "_"),) if settings is None else settings
        self.default: Any = False if value is None and default is None else default
        self.check = check
        self.path = path
        self.repeatable = repeatable
        self.original = original
        self.help = help

    def set_default(self, config: Config) -> None:
        if self.settings:
            self.store(config, list(self.default) if self.repeatable else self.default)

    def store(self, config: Config, setting: Any) -> None:
        """Give the option's setting (its check's result) to ``config``."""
        if len(self.settings) == 1:
            setattr(config, self.settings[0], setting)
        else:
            for attribute, part in zip(self.settings, setting):
                setattr(config, attribute, part)

    def __repr__(self) -> str:
        return f"Option({self.name!r})"


# In the order of --help.
OPTIONS = (
    Option("--version", "print version and licence", settings=(), original=True),
    Option("--help", "print this help", settings=(), original=True),
    Option("--inetd", "serve one SMTP session on stdin/stdout", original=True),
    Option("--interface", "listen on IP (IPv4 or IPv6), or on a Unix socket at",
           f"/PATH; repeatable (default {DEFAULT_INTERFACE})",
           value="IP|/PATH", settings=("interfaces",), default=(DEFAULT_INTERFACE,),
           check=_value_only(parse_interface), repeatable=True, original=True),
    Option("--port", f"listen on port NUMBER (default {DEFAULT_PORT})",
           value="NUMBER", default=DEFAULT_PORT, check=_value_only(parse_port), original=True),
    Option("--log", "no logging (default), syslog (facility mail),",
           "append to FILE, or - for standard error",
           value="none|syslog|FILE|-", default="none", check=_log_target, original=True),
    Option("--log-format", "text: one line per event as msmtpd writes it",
           "(default); json: one JSON object per event",
           value="text|json", default="text", check=_log_format),
    Option("--command", "pipe mails to CMD; the first %F becomes the envelope",
           "sender, recipients are appended",
           f"(default '{DEFAULT_COMMAND}')",
           value="CMD", default=DEFAULT_COMMAND, original=True),
    Option("--auth", "require authentication as USER; the password comes",
           "from PASSWORDEVAL, else the key ring, else a prompt",
           value="USER[,PASSWORDEVAL]", settings=("auth_user", "auth_passwordeval"),
           default=(None, None), check=_value_only(parse_auth), original=True),
    Option("--auth-file", "require authentication as one of the users of FILE",
           "(htpasswd -B format, user:hash)",
           value="FILE", path=True),
    Option("--senders", "with --auth, --auth-file or --unix-login: the",
           "senders each user may give in MAIL FROM, lines",
           "'user: alice@example.org, @example.org'; a user",
           "not in FILE may send as nobody (default: any)",
           value="FILE", path=True),
    Option("--allow", "only clients from this network may connect, others",
           "get 554 (repeatable; default: every client)",
           value="CIDR", default=(), check=parse_network, repeatable=True),
    Option("--proxy-protocol", "connections from this network (a load balancer)",
           "must begin with a PROXY protocol header (v1 or v2)",
           "naming the client; --allow then judges that client",
           "(repeatable; default: none)",
           value="CIDR", default=(), check=parse_network, repeatable=True),
    Option("--socket-mode", "permissions of the Unix sockets of --interface;",
           "with --user they belong to that user and group",
           f"(default {DEFAULT_SOCKET_MODE:04o}: every local user)",
           value="OCTAL", default=DEFAULT_SOCKET_MODE, check=parse_mode),
    Option("--unix-login", "a caller on a Unix socket counts as logged in as",
           "its own user (the name of its uid), without AUTH;",
           "--senders then binds its senders"),
    Option("--timeout", "a command line must arrive, and a reply be read,",
           "within SECONDS; DATA may pause this long and then",
           "must average 500 octets/s; also the grace time of",
           f"a stop (default {DEFAULT_TIMEOUT:g})",
           value="SECONDS", default=DEFAULT_TIMEOUT, check=parse_seconds),
    Option("--command-timeout", "kill a delivery command running this long",
           f"(default {DEFAULT_COMMAND_TIMEOUT:g})",
           value="SECONDS", default=DEFAULT_COMMAND_TIMEOUT, check=parse_seconds),
    Option("--max-size", "largest message accepted; 0 means no limit (default 0)",
           value="BYTES", default=0, check=_count(0, MAX_SIZE)),
    Option("--max-sessions", f"sessions served at once (default {DEFAULT_MAX_SESSIONS})",
           value="N", default=DEFAULT_MAX_SESSIONS, check=_count(1, MAX_SESSIONS)),
    Option("--spare-workers", "idle workers kept ready; more are started as they",
           "are taken, up to --max-sessions, and surplus ones",
           f"leave after a minute idle (default {DEFAULT_SPARE_WORKERS})",
           value="N", default=DEFAULT_SPARE_WORKERS, check=_count(1, MAX_SESSIONS)),
    Option("--spool-dir", "where messages over 1 MiB are spooled while they",
           "arrive (default $TMPDIR or /tmp)",
           value="DIR", check=parse_directory, path=True),
    Option("--rate-limit", "each logged-in user, or else each client address,",
           "may have N mails accepted per PERIOD (a number with",
           "s, m, h or d: 100/1h); past it MAIL FROM gets 450",
           "(default: no limit)",
           value="N/PERIOD", check=parse_rate),
    Option("--daemon", "detach from the terminal once listening"),
    Option("--pidfile", "write and lock FILE holding the master's pid",
           "(default none)",
           value="FILE", path=True),
    Option("--user", "run sessions and the command as USER after binding",
           "(default: stay the starting user)",
           value="USER[:GROUP]"),
    Option("--shell-safe-addresses", "refuse addresses with characters a shell would",
           "interpret (for commands such as 'ssh relay sendmail')"),
    Option("--tls-cert", "offer STARTTLS with this certificate (PEM; may hold",
           "the key too); AUTH from a peer that is not loopback",
           "then needs TLS (default none)",
           value="FILE", path=True),
    Option("--tls-key", "its private key (default: in the certificate file)",
           value="FILE", path=True),
    Option("--tls-implicit", "TLS from the first byte (SMTPS, as on port 465)"),
    Option("--tls-required", "nothing but EHLO, HELO, STARTTLS, NOOP, RSET, HELP",
           "and QUIT before STARTTLS"),
    Option("--idle-exit", "with sockets from systemd (LISTEN_FDS) or inetd",
           "(wait = yes): exit after this long without a session",
           "(default: never)",
           value="SECONDS", check=parse_seconds),
    Option("--queue", "store and forward: answer 250 once a mail is safe",
           "in DIR (created if missing), deliver from there",
           "with --command, retrying temporary failures",
           value="DIR", path=True),
    Option("--queue-workers", "deliveries from the queue at once",
           f"(default {DEFAULT_QUEUE_WORKERS})",
           value="N", default=DEFAULT_QUEUE_WORKERS, check=_count(1, MAX_QUEUE_WORKERS)),
    Option("--queue-lifetime", "give up on a mail queued this long; seconds, or",
           "with s, m, h, d (default 5d)",
           value="TIME", default=DEFAULT_QUEUE_LIFETIME, check=parse_duration),
    Option("--queue-rate", "start at most N deliveries from the queue per",
           "PERIOD (a number with s, m, h or d: 30/1m, 500/1d),",
           "to stay inside a provider's quota (default: no limit)",
           value="N/PERIOD", check=parse_rate),
    Option("--queue-first-try", "with --queue: the session tries the command itself",
           "for up to SECONDS before it answers: 250 delivered,",
           "554 refused, or 250 queued with the reason (default 0:",
           "answer once the mail is stored)",
           value="SECONDS", default=0.0, check=parse_first_try),
    Option("--queue-list", "list the queued and failed mails of --queue, exit"),
    Option("--queue-flush", "try every queued mail now, once (through the daemon",
           f"on DIR if one runs); exit {EXIT_OK} if the queue is then",
           f"empty, {EXIT_TEMPFAIL} if mails remain"),
    Option("--metrics", "serve Prometheus metrics over HTTP at",
           "http://ADDR:PORT/metrics; keep ADDR on loopback",
           "(default: none)",
           value="ADDR:PORT", check=_value_only(parse_listen_address)),
    Option("--check", "connect to the first --interface and --port, send",
           f"EHLO and QUIT, exit {EXIT_OK} if all answered 2xx, else {EXIT_FAILURE}"),
)
