"""The command line: msmtpd's options, checked up front.

Every usage or start-up error is one line on standard error and exit
status 3 (LSB "program is not running").  The parser is a few lines of our
own rather than argparse: scripts connect right after starting msmtpd, so
the options are read and the port is listening before any module that can
wait is imported.
"""

from __future__ import annotations

import os
import sys

from msmtpd import __version__
from msmtpd.base.config import Config, ConfigError
from msmtpd.base.exit_codes import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_OK, EXIT_TEMPFAIL
from msmtpd.base.options import OPTIONS, Option

TYPE_CHECKING = False  # typing costs about 3 ms before the port listens; annotations are strings
if TYPE_CHECKING:
    from typing import Any, Dict, Iterator, List, NoReturn, Optional, Sequence, Tuple

VERSION_TEXT = f"""msmtpd version {__version__}
License GPL-3.0-or-later <https://www.gnu.org/licenses/gpl.html>.
This is free software: you are free to change and redistribute it.
There is NO WARRANTY, to the extent permitted by law.
"""

# --help: an option's spelling fills this column; a longer one has a line
# of its own, and the description goes on below it.
HELP_COLUMN = 22


# What systemd (or a supervisor speaking its protocol) sets: socket
# activation's descriptors and the readiness socket.  Without them and
# without --inetd, msmtpd.system.systemd has nothing to do before bind.
SYSTEMD_VARIABLES = frozenset({"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"})

def _help_lines(option: Option) -> Iterator[str]:
    spelling = option.name if option.value is None else f"{option.name}={option.value}"
    lines = list(option.help)
    if len(spelling) > HELP_COLUMN:
        yield f"  {spelling}"
    else:
        yield f"  {spelling:<{HELP_COLUMN}} {lines.pop(0)}"
    for line in lines:
        yield f"  {'':<{HELP_COLUMN}} {line}"


HELP_TEXT = "".join(line + "\n" for line in (
    "Usage: msmtpd [option...]",
    "A minimal local SMTP server that pipes each mail to a command.",
    "Options:",
    *(line for option in OPTIONS for line in _help_lines(option)),
    f"Exit status: {EXIT_OK} success, {EXIT_FAILURE} an --inetd session that did not end with QUIT",
    f"or a failed --check, {EXIT_NOT_RUNNING} usage or start-up error; --queue-flush: {EXIT_TEMPFAIL} when",
    "mails remain queued.",
))


class UsageError(Exception):
    pass


BY_NAME = {option.name: option for option in OPTIONS}
# The order in which an ambiguous abbreviation lists what it could mean,
# kept as it always was (the flags, then the options with a value, in the
# order they came); an option not named here is listed after these.
LISTING_ORDER = ("--version", "--help", "--inetd", "--daemon", "--shell-safe-addresses",
                 "--tls-implicit", "--tls-required", "--check", "--queue-list", "--queue-flush",
                 "--interface", "--port", "--log", "--command", "--auth", "--timeout",
                 "--command-timeout", "--max-size", "--max-sessions", "--pidfile", "--user",
                 "--spool-dir", "--tls-cert", "--tls-key", "--idle-exit", "--spare-workers",
                 "--auth-file", "--allow", "--queue", "--queue-workers", "--queue-lifetime",
                 "--senders", "--socket-mode", "--unix-login")


def _listing_position(option: Option) -> int:
    name = option.name
    return LISTING_ORDER.index(name) if name in LISTING_ORDER else len(LISTING_ORDER)


def _resolve(name: str) -> Option:
    """The option a name or an unambiguous abbreviation stands for; an
    abbreviation that fits one option of the C msmtpd and only new ones
    besides (``--comm``: --command, not --command-timeout) keeps the meaning
    it always had."""
    option = BY_NAME.get(name)
    if option is not None:
        return option
    matches = sorted((option for option in OPTIONS if option.name.startswith(name)),
                     key=_listing_position)
    if len(matches) == 1:
        return matches[0]
    original = [option for option in matches if option.original]
    if len(original) == 1:
        return original[0]
    if not matches:
        raise UsageError(f"unrecognized option '{name}'")
    raise UsageError(f"ambiguous option: {name} could match "
                     f"{', '.join(option.name for option in matches)}")


def _options(argv: Sequence[str]) -> Iterator[Tuple[Option, str]]:
    """(option, value) pairs, ``--opt=value`` or ``--opt value``; flags get ""."""
    args = iter(argv)
    for arg in args:
        if not arg.startswith("--") or arg == "--":
            raise UsageError(f"unexpected argument '{arg}'")
        name, equals, value = arg.partition("=")
        option = _resolve(name)
        if option.value is None:
            if equals:
                raise UsageError(f"option '{option.name}' takes no value")
            yield option, ""
            continue
        if not equals:
            value = next(args, "")
        if not value:
            raise UsageError(f"option '{option.name}' requires a non-empty value")
        yield option, value


def _show(text: str) -> NoReturn:
    sys.stdout.write(text)
    sys.stdout.flush()
    raise SystemExit(EXIT_OK)


def parse_args(argv: Sequence[str]) -> Config:
    """Turn the arguments into a Config; UsageError or ConfigError say why not."""
    config = Config()
    repeated: Dict[Option, List[Any]] = {}
    for option, value in _options(argv):
        if option.name == "--version":
            _show(VERSION_TEXT)
        elif option.name == "--help":
            _show(HELP_TEXT)
        elif option.value is None:  # a flag: --inetd is config.inetd, ...
            option.store(config, True)
        else:
            setting = option.check(os.path.abspath(value) if option.path else value, option.name)
            if option.repeatable:
                repeated.setdefault(option, []).append(setting)
            else:
                option.store(config, setting)
    for option, settings in repeated.items():
        option.store(config, settings)
    config.spare_workers = min(config.spare_workers, config.max_sessions)
    if config.inetd and (config.daemon or config.pidfile):
        raise UsageError("--inetd cannot be combined with --daemon or --pidfile")
    if config.inetd and config.metrics is not None:
        raise UsageError("--metrics cannot be combined with --inetd (one process per session:"
                         " nothing to count across them)")
    if config.auth_user is not None and config.auth_file is not None:
        raise UsageError("--auth and --auth-file cannot be combined")
    if config.check:
        if config.inetd:
            raise UsageError("--check cannot be combined with --inetd")
        return config  # the server's other options may be given; only the address counts
    if (config.senders is not None and config.auth_user is None and config.auth_file is None
            and not config.unix_login):
        raise UsageError("--senders needs --auth, --auth-file or --unix-login")
    if config.tls_cert is None:
        for name, given in (("--tls-key", config.tls_key is not None),
                            ("--tls-implicit", config.tls_implicit),
                            ("--tls-required", config.tls_required)):
            if given:
                raise UsageError(f"{name} needs --tls-cert")
    _check_queue_options(config)
    return config


def _check_queue_options(config: Config) -> None:
    if config.queue_list and config.queue_flush:
        raise UsageError("--queue-list and --queue-flush cannot be combined")
    if config.queue is None:
        for option, given in (("--queue-list", config.queue_list),
                              ("--queue-flush", config.queue_flush),
                              ("--queue-rate", config.queue_rate is not None),
                              ("--queue-first-try", config.queue_first_try > 0)):
            if given:
                raise UsageError(f"{option} needs --queue=DIR")


def _leave(code: int) -> NoReturn:
    """End an ``--inetd`` session without the interpreter's teardown, a
    few ms of freeing modules per connection: nothing is pending (replies
    go straight to the descriptor, log handlers write every record)."""
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
        sockets = []
        if config.inetd or not SYSTEMD_VARIABLES.isdisjoint(os.environ):
            # Loaded only when it has something to do: the port listens sooner.
            from msmtpd.system import systemd

            systemd.take_notify_socket()
            sockets = systemd.listen_fds()  # socket activation (Accept=no): serve these with the pool
            if config.inetd and not sockets and systemd.is_listening_socket(0):
                sockets = [systemd.take_stdin_listener()]  # inetd's "wait = yes": the same
        if config.idle_exit is not None and not sockets:
            raise UsageError("--idle-exit needs listening sockets from systemd (LISTEN_FDS)"
                             " or inetd (wait = yes)")
        if config.inetd and not sockets and config.rate_limit is not None:
            # one process per session: no count to share between them
            raise UsageError("--rate-limit cannot be combined with --inetd (one process per"
                             " session); use the daemon or inetd's wait = yes")
        if config.inetd and not sockets:
            from msmtpd.server.inetd import run_inetd

            _leave(run_inetd(config, tls_context))
        if not sockets:
            from msmtpd.net.listeners import bind_all

            # Listening first: a client that connects while the rest loads
            # waits in the listen queue instead of being refused.
            sockets = bind_all(config)
        from msmtpd.server.master import run_master

        return run_master(config, sockets, tls_context)
    except (UsageError, ConfigError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return EXIT_FAILURE
