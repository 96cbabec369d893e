"""The command line: msmtpd's options, checked up front.

Every usage or start-up error is one line on standard error and exit
status 3 (LSB "program is not running").  The parser is a few lines of our
own rather than argparse: scripts connect right after starting msmtpd, so
the options are read and the port is listening before any module that can
wait is imported.
"""

from __future__ import annotations

import sys

from msmtpd import __version__
from msmtpd.base.config import (
    DEFAULT_COMMAND,
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_INTERFACE,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_PORT,
    DEFAULT_QUEUE_WORKERS,
    DEFAULT_SPARE_WORKERS,
    DEFAULT_TIMEOUT,
    MAX_QUEUE_WORKERS,
    MAX_SESSIONS,
    MAX_SIZE,
    Config,
    ConfigError,
    parse_auth,
    parse_count,
    parse_directory,
    parse_duration,
    parse_interface,
    parse_port,
    parse_seconds,
)

TYPE_CHECKING = False  # typing costs about 3 ms before the port listens; annotations are strings
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional, Sequence, Tuple

EXIT_OK = 0
EXIT_SESSION_FAILED = 1
EXIT_NOT_RUNNING = 3  # LSB: program is not running

VERSION_TEXT = f"""msmtpd version {__version__}
License GPL-3.0-or-later <https://www.gnu.org/licenses/gpl.html>.
This is free software: you are free to change and redistribute it.
There is NO WARRANTY, to the extent permitted by law.
"""

HELP_TEXT = f"""Usage: msmtpd [option...]
A minimal local SMTP server that pipes each mail to a command.
Options:
  --version              print version and licence
  --help                 print this help
  --inetd                serve one SMTP session on stdin/stdout
  --interface=IP         listen on IP (IPv4 or IPv6; repeatable)
                         (default {DEFAULT_INTERFACE})
  --port=NUMBER          listen on port NUMBER (default {DEFAULT_PORT})
  --log=none|syslog|FILE|-
                         no logging (default), syslog (facility mail),
                         append to FILE, or - for standard error
  --command=CMD          pipe mails to CMD; the first %F becomes the envelope
                         sender, recipients are appended
                         (default '{DEFAULT_COMMAND}')
  --auth=USER[,PASSWORDEVAL]
                         require authentication as USER; the password comes
                         from PASSWORDEVAL, else the key ring, else a prompt
  --auth-file=FILE       require authentication as one of the users of FILE
                         (htpasswd -B format, user:hash)
  --senders=FILE         with --auth or --auth-file: the senders each user
                         may give in MAIL FROM, lines
                         'user: alice@example.org, @example.org'; a user
                         not in FILE may send as nobody (default: any)
  --allow=CIDR           only clients from this network may connect, others
                         get 554 (repeatable; default: every client)
  --timeout=SECONDS      a command line must arrive, and a reply be read,
                         within SECONDS; DATA may pause this long and then
                         must average 500 octets/s; also the grace time of
                         a stop (default {DEFAULT_TIMEOUT:g})
  --command-timeout=SECONDS
                         kill a delivery command running this long
                         (default {DEFAULT_COMMAND_TIMEOUT:g})
  --max-size=BYTES       largest message accepted; 0 means no limit (default 0)
  --max-sessions=N       sessions served at once (default {DEFAULT_MAX_SESSIONS})
  --spare-workers=N      idle workers kept ready; more are started as they
                         are taken, up to --max-sessions, and surplus ones
                         leave after a minute idle (default {DEFAULT_SPARE_WORKERS})
  --spool-dir=DIR        where messages over 1 MiB are spooled while they
                         arrive (default $TMPDIR or /tmp)
  --daemon               detach from the terminal once listening
  --pidfile=FILE         write and lock FILE holding the master's pid
                         (default none)
  --user=USER[:GROUP]    run sessions and the command as USER after binding
                         (default: stay the starting user)
  --shell-safe-addresses refuse addresses with characters a shell would
                         interpret (for commands such as 'ssh relay sendmail')
  --tls-cert=FILE        offer STARTTLS with this certificate (PEM; may hold
                         the key too); AUTH from a peer that is not loopback
                         then needs TLS (default none)
  --tls-key=FILE         its private key (default: in the certificate file)
  --tls-implicit         TLS from the first byte (SMTPS, as on port 465)
  --tls-required         nothing but EHLO, HELO, STARTTLS, NOOP, RSET, HELP
                         and QUIT before STARTTLS
  --idle-exit=SECONDS    with sockets from systemd (LISTEN_FDS) or inetd
                         (wait = yes): exit after this long without a session
                         (default: never)
  --queue=DIR            store and forward: answer 250 once a mail is safe
                         in DIR (created if missing), deliver from there
                         with --command, retrying temporary failures
  --queue-workers=N      deliveries from the queue at once
                         (default {DEFAULT_QUEUE_WORKERS})
  --queue-lifetime=TIME  give up on a mail queued this long; seconds, or
                         with s, m, h, d (default 5d)
  --queue-list           list the queued and failed mails of --queue, exit
  --queue-flush          try every queued mail now, once (through the daemon
                         on DIR if one runs); exit 0 if the queue is then
                         empty, 75 if mails remain
  --check                connect to the first --interface and --port, send
                         EHLO and QUIT, exit 0 if all answered 2xx, else 1
Exit status: 0 success, 1 an --inetd session that did not end with QUIT
or a failed --check, 3 usage or start-up error; --queue-flush: 75 when
mails remain queued.
"""


class UsageError(Exception):
    pass


FLAGS = ("--version", "--help", "--inetd", "--daemon", "--shell-safe-addresses",
         "--tls-implicit", "--tls-required", "--check",
         "--queue-list", "--queue-flush")
VALUE_OPTIONS = ("--interface", "--port", "--log", "--command", "--auth", "--timeout",
                 "--command-timeout", "--max-size", "--max-sessions", "--pidfile", "--user",
                 "--spool-dir", "--tls-cert", "--tls-key", "--idle-exit", "--spare-workers",
                 "--auth-file", "--allow", "--queue", "--queue-workers", "--queue-lifetime",
                 "--senders")
OPTIONS = FLAGS + VALUE_OPTIONS
# The C msmtpd's options: an abbreviation that fits one of these and only
# new options besides (``--comm`` for --command, not --command-timeout)
# keeps the meaning it always had.
ORIGINAL_OPTIONS = ("--version", "--help", "--inetd", "--interface", "--port", "--log",
                    "--command", "--auth")


def _resolve(name: str) -> str:
    """The option a name or an unambiguous abbreviation stands for."""
    if name in OPTIONS:
        return name
    matches = [option for option in OPTIONS if option.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    original = [option for option in matches if option in ORIGINAL_OPTIONS]
    if len(original) == 1:
        return original[0]
    if not matches:
        raise UsageError(f"unrecognized option '{name}'")
    raise UsageError(f"ambiguous option: {name} could match {', '.join(matches)}")


def _options(argv: Sequence[str]) -> Iterator[Tuple[str, str]]:
    """(option, value) pairs, ``--opt=value`` or ``--opt value``; flags get ""."""
    args = iter(argv)
    for arg in args:
        if not arg.startswith("--") or arg == "--":
            raise UsageError(f"unexpected argument '{arg}'")
        name, equals, value = arg.partition("=")
        option = _resolve(name)
        if option in FLAGS:
            if equals:
                raise UsageError(f"option '{option}' takes no value")
            yield option, ""
            continue
        if not equals:
            value = next(args, "")
        if not value:
            raise UsageError(f"option '{option}' requires a non-empty value")
        yield option, value


def _show(text: str) -> NoReturn:
    sys.stdout.write(text)
    sys.stdout.flush()
    raise SystemExit(EXIT_OK)


def _text(value: str, option: str) -> str:
    return value


# --log values that are not a file name.
LOG_KEYWORDS = ("none", "syslog", "-")

# How each option's value becomes a Config attribute: (attribute, check).
# --version, --help, --interface and --allow (repeatable) and --auth (two
# attributes) are handled in parse_args.
SETTINGS: Dict[str, Tuple[str, Callable[[str, str], Any]]] = {
    "--port": ("port", lambda value, option: parse_port(value)),
    "--log": ("log", lambda value, option: value if value in LOG_KEYWORDS else _absolute(value)),
    "--command": ("command", _text),
    "--timeout": ("timeout", parse_seconds),
    "--command-timeout": ("command_timeout", parse_seconds),
    "--max-size": ("max_size", lambda value, option: parse_count(value, option, 0, MAX_SIZE)),
    "--max-sessions": ("max_sessions", lambda value, option: parse_count(value, option, 1, MAX_SESSIONS)),
    "--pidfile": ("pidfile", _text),
    "--user": ("user", _text),
    "--spool-dir": ("spool_dir", parse_directory),
    "--tls-cert": ("tls_cert", _text),
    "--tls-key": ("tls_key", _text),
    "--idle-exit": ("idle_exit", parse_seconds),
    "--spare-workers": ("spare_workers", lambda value, option: parse_count(value, option, 1, MAX_SESSIONS)),
    "--auth-file": ("auth_file", _text),
    "--senders": ("senders", lambda value, option: _absolute(value)),
    "--queue": ("queue", lambda value, option: _absolute(value)),
    "--queue-workers": ("queue_workers",
                        lambda value, option: parse_count(value, option, 1, MAX_QUEUE_WORKERS)),
    "--queue-lifetime": ("queue_lifetime", parse_duration),
}


# Options whose value is a file or directory: made absolute as they are
# read, since --daemon changes the working directory to / and SIGHUP
# re-reads some of them (--tls-cert, --tls-key, --auth-file) from there.
# --log is one too unless it is a keyword (LOG_KEYWORDS).
PATH_OPTIONS = frozenset({"--pidfile", "--spool-dir", "--tls-cert", "--tls-key", "--auth-file",
                          "--queue"})


def _absolute(path: str) -> str:
    import os

    return os.path.abspath(path)  # a daemon changes its working directory


def parse_args(argv: Sequence[str]) -> Config:
    """Turn the arguments into a Config; UsageError or ConfigError say why not."""
    config = Config()
    interfaces: List[str] = []
    for option, value in _options(argv):
        if option == "--version":
            _show(VERSION_TEXT)
        elif option == "--help":
            _show(HELP_TEXT)
        elif option in FLAGS:  # --inetd is config.inetd, --tls-implicit config.tls_implicit ...
            setattr(config, option[2:].replace("-", "_"), True)
        elif option == "--interface":
            interfaces.append(parse_interface(value))
        elif option == "--auth":
            config.auth_user, config.auth_passwordeval = parse_auth(value)
        elif option == "--allow":
            from msmtpd.policy.allow_list import parse_network

            config.allow.append(parse_network(value))
        else:
            attribute, check = SETTINGS[option]
            setattr(config, attribute, check(_absolute(value) if option in PATH_OPTIONS else value,
                                             option))
    if interfaces:
        config.interfaces = interfaces
    config.spare_workers = min(config.spare_workers, config.max_sessions)
    if config.inetd and (config.daemon or config.pidfile):
        raise UsageError("--inetd cannot be combined with --daemon or --pidfile")
    if config.auth_user is not None and config.auth_file is not None:
        raise UsageError("--auth and --auth-file cannot be combined")
    if config.check:
        if config.inetd:
            raise UsageError("--check cannot be combined with --inetd")
        return config  # the server's other options may be given; only the address counts
    if config.senders is not None and config.auth_user is None and config.auth_file is None:
        raise UsageError("--senders needs --auth or --auth-file")
    if config.tls_cert is None:
        for option, given in (("--tls-key", config.tls_key is not None),
                              ("--tls-implicit", config.tls_implicit),
                              ("--tls-required", config.tls_required)):
            if given:
                raise UsageError(f"{option} needs --tls-cert")
    _check_queue_options(config)
    return config


def _check_queue_options(config: Config) -> None:
    if config.queue_list and config.queue_flush:
        raise UsageError("--queue-list and --queue-flush cannot be combined")
    if config.queue is None:
        for option, given in (("--queue-list", config.queue_list),
                              ("--queue-flush", config.queue_flush)):
            if given:
                raise UsageError(f"{option} needs --queue=DIR")


def _leave(code: int) -> NoReturn:
    """End an ``--inetd`` session without the interpreter's teardown, a
    few ms of freeing modules per connection: nothing is pending (replies
    go straight to the descriptor, log handlers write every record)."""
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def fail(message: str) -> int:
    try:
        sys.stderr.write(f"msmtpd: {message}\n")
        sys.stderr.flush()
    except OSError:
        pass  # stderr is inetd's listening socket: the exit status must say it
    return EXIT_NOT_RUNNING



def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except (UsageError, ConfigError) as exc:
        return fail(str(exc))
    if config.check:
        from msmtpd.commands.check import run_check

        return run_check(config)
    if config.queue_list or config.queue_flush:
        from msmtpd.commands.queue_commands import run_queue_command

        try:
            return run_queue_command(config)
        except (UsageError, ConfigError) as exc:
            return fail(str(exc))
    try:
        tls_context = None
        if config.tls_cert is not None:  # read before binding, detaching or dropping privileges
            from msmtpd.net.tls_context import load_context

            tls_context = load_context(config.tls_cert, config.tls_key)
        from msmtpd.system import systemd

        systemd.take_notify_socket()
        sockets = systemd.listen_fds()  # socket activation (Accept=no): serve these with the pool
        if config.inetd and not sockets and systemd.is_listening_socket(0):
            sockets = [systemd.take_stdin_listener()]  # inetd's "wait = yes": the same
        if config.idle_exit is not None and not sockets:
            raise UsageError("--idle-exit needs listening sockets from systemd (LISTEN_FDS)"
                             " or inetd (wait = yes)")
        if config.inetd and not sockets:
            from msmtpd.server.inetd import run_inetd

            _leave(run_inetd(config, tls_context))
        if not sockets:
            from msmtpd.net.listeners import bind_all

            # Listening first: a client that connects while the rest loads
            # waits in the listen queue instead of being refused.
            sockets = bind_all(config.interfaces, config.port)
        from msmtpd.server.master import run_master

        return run_master(config, sockets, tls_context)
    except (UsageError, ConfigError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return EXIT_SESSION_FAILED
