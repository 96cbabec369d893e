"""The command line: msmtpd's options, checked up front.

Every usage or start-up error is one line on standard error and exit
status 3 (LSB "program is not running").
"""

from __future__ import annotations

import argparse
import sys
from typing import List, NoReturn, Optional, Sequence

from msmtpd import __version__
from msmtpd.config import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_INTERFACE,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_PORT,
    DEFAULT_TIMEOUT,
    Config,
    ConfigError,
    parse_auth,
    parse_count,
    parse_directory,
    parse_interface,
    parse_port,
    parse_seconds,
)
from msmtpd.delivery import DEFAULT_COMMAND

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
  --timeout=SECONDS      drop a client idle this long (default {DEFAULT_TIMEOUT:g})
  --command-timeout=SECONDS
                         kill a delivery command running this long
                         (default {DEFAULT_COMMAND_TIMEOUT:g})
  --max-size=BYTES       largest message accepted; 0 means no limit (default 0)
  --max-sessions=N       sessions served at once (default {DEFAULT_MAX_SESSIONS})
  --spool-dir=DIR        where messages over 1 MiB are spooled while they
                         arrive (default $TMPDIR or /tmp)
  --daemon               detach from the terminal once listening
  --pidfile=FILE         write and lock FILE holding the master's pid
                         (default none)
  --user=USER[:GROUP]    run sessions and the command as USER after binding
                         (default: stay the starting user)
Exit status: 0 success, 1 an --inetd session that did not end with QUIT,
3 usage or start-up error.
"""


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class _Print(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, text: str = "", **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS)
        self.text = text

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: Optional[str] = None) -> NoReturn:
        sys.stdout.write(self.text)
        sys.stdout.flush()
        raise SystemExit(EXIT_OK)


VALUE_OPTIONS = ("interface", "port", "log", "command", "auth", "timeout",
                 "command_timeout", "max_size", "max_sessions", "pidfile", "user", "spool_dir")


def _parser() -> _Parser:
    parser = _Parser(prog="msmtpd", add_help=False, allow_abbrev=True)
    parser.add_argument("--version", action=_Print, text=VERSION_TEXT)
    parser.add_argument("--help", action=_Print, text=HELP_TEXT)
    parser.add_argument("--inetd", action="store_true")
    parser.add_argument("--interface", action="append")
    for name in VALUE_OPTIONS[1:]:
        parser.add_argument("--" + name.replace("_", "-"), dest=name)
    parser.add_argument("--daemon", action="store_true")
    return parser


# The C msmtpd's options: an abbreviation that fits one of these and only
# new options besides (``--comm`` for --command, not --command-timeout)
# keeps the meaning it always had.
ORIGINAL_OPTIONS = ("--version", "--help", "--inetd", "--interface", "--port", "--log",
                    "--command", "--auth")


def _expand_original_abbreviations(parser: _Parser, argv: List[str]) -> List[str]:
    known = [opt for action in parser._actions for opt in action.option_strings]
    expanded = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name.startswith("--") and name not in known:
            matches = [opt for opt in known if opt.startswith(name)]
            original = [opt for opt in matches if opt in ORIGINAL_OPTIONS]
            if len(matches) > 1 and len(original) == 1:
                arg = original[0] + eq + value
        expanded.append(arg)
        if arg == "--":
            expanded.extend(argv[len(expanded):])
            break
    return expanded


def parse_args(argv: Sequence[str]) -> Config:
    """Turn the arguments into a Config; UsageError or ConfigError say why not."""
    parser = _parser()
    args = parser.parse_args(_expand_original_abbreviations(parser, list(argv)))
    for name in VALUE_OPTIONS:
        value = getattr(args, name)
        values: List[str] = value if isinstance(value, list) else [value]
        if any(v is not None and not v for v in values):
            raise UsageError(f"option '--{name.replace('_', '-')}' requires a non-empty value")
    config = Config(inetd=args.inetd, daemon=args.daemon, pidfile=args.pidfile, user=args.user)
    if args.interface:
        config.interfaces = [parse_interface(v) for v in args.interface]
    if args.port is not None:
        config.port = parse_port(args.port)
    if args.log is not None:
        config.log = args.log
    if args.command is not None:
        config.command = args.command
    if args.auth is not None:
        config.auth_user, config.auth_passwordeval = parse_auth(args.auth)
    if args.timeout is not None:
        config.timeout = parse_seconds(args.timeout, "--timeout")
    if args.command_timeout is not None:
        config.command_timeout = parse_seconds(args.command_timeout, "--command-timeout")
    if args.max_size is not None:
        config.max_size = parse_count(args.max_size, "--max-size", 0)
    if args.max_sessions is not None:
        config.max_sessions = parse_count(args.max_sessions, "--max-sessions", 1)
    if args.spool_dir is not None:
        config.spool_dir = parse_directory(args.spool_dir, "--spool-dir")
    if config.inetd and (config.daemon or config.pidfile):
        raise UsageError("--inetd cannot be combined with --daemon or --pidfile")
    return config


def fail(message: str) -> int:
    sys.stderr.write(f"msmtpd: {message}\n")
    sys.stderr.flush()
    return EXIT_NOT_RUNNING


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except (UsageError, ConfigError) as exc:
        return fail(str(exc))
    try:
        if config.inetd:
            from msmtpd.inetd import run_inetd

            return run_inetd(config)
        from msmtpd.master import run_master

        return run_master(config)
    except ConfigError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return EXIT_SESSION_FAILED
