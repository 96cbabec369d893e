"""The command line, parsed in process: msmtpd-compatible options, defaults,
and one-line usage errors; the installed program is in tests/system."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import pytest

from msmtpd.base.config import Config, ConfigError
from msmtpd.base.exit_codes import EXIT_NOT_RUNNING
from msmtpd.commands.cli import UsageError, main, parse_args

# (option, value, Config attribute, expected attribute value)
VALUE_OPTIONS = [
    ("--interface", "::1", "interfaces", ["::1"]),
    ("--interface", "192.0.2.10", "interfaces", ["192.0.2.10"]),
    ("--port", "2500", "port", 2500),
    ("--log", "syslog", "log", "syslog"),
    ("--log", "/var/log/msmtpd.log", "log", "/var/log/msmtpd.log"),
    ("--log", "-", "log", "-"),
    ("--command", "/usr/bin/msmtp -a work -f %F --", "command", "/usr/bin/msmtp -a work -f %F --"),
    ("--auth", "mailer", "auth_user", "mailer"),
    ("--timeout", "30", "timeout", 30.0),
    ("--timeout", "0.5", "timeout", 0.5),
    ("--command-timeout", "12", "command_timeout", 12.0),
    ("--max-size", "1048576", "max_size", 1048576),
    ("--max-size", "0", "max_size", 0),
    ("--max-sessions", "4", "max_sessions", 4),
    ("--pidfile", "/run/msmtpd.pid", "pidfile", "/run/msmtpd.pid"),
    ("--user", "mail:mail", "user", "mail:mail"),
    ("--tls-cert", "/etc/ssl/msmtpd.pem", "tls_cert", "/etc/ssl/msmtpd.pem"),
]


@pytest.mark.parametrize(("option", "value", "attribute", "expected"), VALUE_OPTIONS)
def test_option_with_equals(option: str, value: str, attribute: str, expected: Any) -> None:
    """Every option taking a value works as ``--opt=value``."""
    assert getattr(parse_args([f"{option}={value}"]), attribute) == expected


@pytest.mark.parametrize(("option", "value", "attribute", "expected"), VALUE_OPTIONS)
def test_option_with_separate_value(option: str, value: str, attribute: str, expected: Any) -> None:
    """Every option taking a value works as ``--opt value``."""
    assert getattr(parse_args([option, value]), attribute) == expected


@pytest.mark.parametrize(("flag", "attribute"), [("--inetd", "inetd"), ("--daemon", "daemon"),
                                                 ("--shell-safe-addresses", "shell_safe_addresses"),
                                                 ("--shell", "shell_safe_addresses")])
def test_flags(flag: str, attribute: str) -> None:
    """Flags without a value set their switch."""
    assert getattr(parse_args([flag]), attribute) is True
    assert getattr(parse_args([]), attribute) is False


def test_auth_with_passwordeval() -> None:
    """``--auth=USER,CMD`` splits the user from the passwordeval command (which may hold commas)."""
    config = parse_args(["--auth=mailer,gpg -q -d ~/pw.gpg,x"])
    assert config.auth_user == "mailer"
    assert config.auth_passwordeval == "gpg -q -d ~/pw.gpg,x"
    assert parse_args(["--auth", "mailer"]).auth_passwordeval is None


def test_interface_may_be_repeated() -> None:
    """--interface can be given more than once."""
    assert parse_args(["--interface=127.0.0.1", "--interface", "::1"]).interfaces == ["127.0.0.1", "::1"]


def test_defaults() -> None:
    """Without options: 127.0.0.1, port 25, ``msmtp -f %F --``, timeouts 300 s,
    no size limit, 16 sessions, no logging, no auth."""
    config = parse_args([])
    assert config == Config()
    assert config.interfaces == ["127.0.0.1"]
    assert config.port == 25
    assert config.command == "msmtp -f %F --"
    assert config.timeout == 300
    assert config.command_timeout == 300
    assert config.max_size == 0
    assert config.max_sessions == 16
    assert config.log == "none"
    assert config.auth_user is None
    assert config.inetd is False


@pytest.mark.parametrize(
    ("argv", "attribute", "expected"),
    [
        (["--inet"], "inetd", True),
        (["--inte=::1"], "interfaces", ["::1"]),
        (["--por=2525"], "port", 2525),
        (["--aut", "mailer"], "auth_user", "mailer"),
        (["--pid=/run/m.pid"], "pidfile", "/run/m.pid"),
        (["--command-t=5"], "command_timeout", 5.0),
        (["--max-si=10"], "max_size", 10),
        (["--max-se=2"], "max_sessions", 2),
        (["--ti=9"], "timeout", 9.0),
    ],
)
def test_unambiguous_abbreviations(argv: List[str], attribute: str, expected: Any) -> None:
    """Unambiguous prefixes of long options are accepted (``--inet``)."""
    assert getattr(parse_args(argv), attribute) == expected


@pytest.mark.parametrize(
    ("argv", "attribute", "expected"),
    [
        (["--comm=cat"], "command", "cat"),
        (["--co", "cat"], "command", "cat"),
        (["--p=2525"], "port", 2525),
    ],
)
def test_abbreviations_keep_their_meaning_from_the_original(
        argv: List[str], attribute: str, expected: Any) -> None:
    """``--comm`` meant --command in the C msmtpd; --command-timeout, an option
    it never had, does not make that abbreviation ambiguous."""
    assert getattr(parse_args(argv), attribute) == expected


@pytest.mark.parametrize("argv", [["--in"], ["--max=1"], ["--max-s=1"]])
def test_ambiguous_abbreviations_fail(argv: List[str]) -> None:
    """A prefix matching more than one option is a usage error."""
    with pytest.raises(UsageError, match="ambiguous"):
        parse_args(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--port="], ["--port", ""], ["--interface="], ["--command="], ["--log="], ["--auth="],
        ["--timeout="], ["--command-timeout="], ["--max-size="], ["--max-sessions="], ["--pidfile="],
        ["--user="],
    ],
)
def test_empty_values_are_refused(argv: List[str]) -> None:
    """An option given an empty value is a usage error."""
    with pytest.raises((UsageError, ConfigError)):
        parse_args(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus"], ["--port=2500", "surplus"], ["-p", "25"], ["--port"], ["--port=0"], ["--port=65536"],
        ["--port=abc"], ["--port=-1"], ["--port= 25"], ["--interface=localhost"], ["--interface=256.0.0.1"],
        ["--interface=nonsense"], ["--timeout=0"], ["--timeout=-5"], ["--timeout", "-5"], ["--timeout=abc"],
        ["--timeout=nan"], ["--timeout=inf"], ["--command-timeout=0"], ["--max-size=-1"], ["--max-size=1k"],
        ["--max-sessions=0"], ["--auth=,cmd"], ["--auth=user,"], ["--command=   "], ["--inetd", "--daemon"],
        ["--inetd", "--pidfile=/run/x.pid"], ["--inetd=yes"],
        ["--timeout=1e10"], ["--command-timeout=1e10"], ["--timeout=31536001"], ["--max-sessions=100000000"],
        ["--max-size=" + "9" * 400], ["--port=99999999999999999999"], ["--timeout=1e400"],
        ["--shell-safe-addresses=yes"], ["--"], ["--port", "25", "--"],
        ["--tls-key=k.pem"], ["--tls-implicit"], ["--tls-required"], ["--tls"],
        ["--tls-cert=/nonexistent.pem"], ["--spare-workers=0"], ["--spare-workers=x"],
    ],
)
def test_usage_errors_in_process(argv: List[str], capsys: pytest.CaptureFixture[str]) -> None:
    """main() answers every usage error with exit 3 and one ``msmtpd: `` line on stderr."""
    assert main(argv) == EXIT_NOT_RUNNING
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("msmtpd: ")
    assert err.endswith("\n") and err.count("\n") == 1


def test_tls_flags_with_a_certificate() -> None:
    config = parse_args(["--tls-cert=c.pem", "--tls-implicit", "--tls-req", "--tls-k", "k.pem"])
    assert (config.tls_cert, config.tls_key, config.tls_implicit, config.tls_required) == \
        (str(Path("c.pem").absolute()), str(Path("k.pem").absolute()), True, True)  # --daemon runs in /


@pytest.mark.parametrize("option", ["--tls-key=k.pem", "--tls-implicit", "--tls-required"])
def test_tls_options_need_a_certificate(option: str) -> None:
    with pytest.raises(UsageError, match=f"{option.split('=')[0]} needs --tls-cert"):
        parse_args([option])


def test_spare_workers_are_capped_at_max_sessions() -> None:
    assert parse_args([]).spare_workers == 2
    assert parse_args(["--spare-workers=5"]).spare_workers == 5
    assert parse_args(["--spare-workers=20", "--max-sessions=4"]).spare_workers == 4
    assert parse_args(["--max-sessions=1"]).spare_workers == 1


def test_the_largest_values_are_accepted() -> None:
    """The bounds are generous: a year of seconds, 1024 sessions, 2**63-1 octets."""
    config = parse_args(["--timeout=31536000", "--command-timeout=31536000", "--max-sessions=1024",
                         f"--max-size={2**63 - 1}"])
    assert (config.timeout, config.max_sessions, config.max_size) == (31536000, 1024, 2**63 - 1)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--port=0"], ["port", "0"]),
        (["--port=65536"], ["port", "65536"]),
        (["--interface=nonsense"], ["interface", "nonsense"]),
        (["--timeout=abc"], ["timeout", "abc"]),
        (["--bogus"], ["--bogus"]),
        (["surplus"], ["surplus"]),
        (["--in"], ["--in"]),
        (["--port="], ["--port"]),
    ],
)
def test_usage_errors_say_what_is_wrong(argv: List[str], words: List[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The error line names the offending option or value."""
    main(argv)
    err = capsys.readouterr().err
    for word in words:
        assert word in err


def test_help_after_other_options(capsys: pytest.CaptureFixture[str]) -> None:
    """--help among valid options still prints help and exits 0."""
    with pytest.raises(SystemExit) as stop:
        main(["--port=2500", "--help"])
    assert stop.value.code == 0
    assert "Usage: msmtpd" in capsys.readouterr().out
