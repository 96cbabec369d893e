"""The option table is the one place an option lives: Config's settings, the
parser, its abbreviations and --help all follow from it."""

from __future__ import annotations

import pytest

from msmtpd.base import exit_codes
from msmtpd.base.config import Config
from msmtpd.base.options import OPTIONS, Option
from msmtpd.commands.cli import HELP_TEXT, LISTING_ORDER, UsageError, parse_args


def test_every_setting_of_config_belongs_to_one_option() -> None:
    """Config declares exactly the settings the table fills, each filled by
    one option, and every one of them gets a value."""
    settings = [setting for option in OPTIONS for setting in option.settings]
    assert len(settings) == len(set(settings))
    assert set(settings) == set(Config.__annotations__)
    assert set(vars(Config())) == set(settings)


def test_the_names_are_long_options_given_once() -> None:
    names = [option.name for option in OPTIONS]
    assert len(names) == len(set(names))
    assert all(name.startswith("--") and name == name.lower() for name in names)


def test_config_starts_from_the_defaults_of_the_table() -> None:
    config = Config()
    for option in OPTIONS:
        if option.repeatable:
            assert getattr(config, option.settings[0]) == list(option.default), option.name
        elif len(option.settings) == 1:
            assert getattr(config, option.settings[0]) == option.default, option.name
    assert (config.auth_user, config.auth_passwordeval) == (None, None)


def test_a_list_default_is_not_shared_between_configs() -> None:
    first, second = Config(), Config()
    first.interfaces.append("::1")
    first.allow.append("x")
    assert second.interfaces == ["127.0.0.1"] and second.allow == []


def test_flags_are_false_until_given() -> None:
    for option in OPTIONS:
        if option.value is None and option.settings:
            assert getattr(Config(), option.settings[0]) is False
            assert getattr(parse_args([option.name, *_companions(option.name)]),
                           option.settings[0]) is True


def _companions(name: str) -> list[str]:
    """What a flag needs beside it to be a valid command line."""
    if name.startswith("--tls-"):
        return ["--tls-cert=c.pem"]
    if name.startswith("--queue-"):
        return ["--queue=q"]
    return []


def test_help_lists_every_option_with_its_lines() -> None:
    for option in OPTIONS:
        spelling = option.name if option.value is None else f"{option.name}={option.value}"
        assert f"\n  {spelling}" in HELP_TEXT, option.name
        for line in option.help:
            assert f" {line}\n" in HELP_TEXT, line


def test_help_states_the_exit_statuses_by_their_names() -> None:
    assert f"{exit_codes.EXIT_NOT_RUNNING} usage or start-up error" in HELP_TEXT
    assert f"--queue-flush: {exit_codes.EXIT_TEMPFAIL} when" in HELP_TEXT


def test_the_listing_order_names_only_options_of_the_table() -> None:
    assert set(LISTING_ORDER) <= {option.name for option in OPTIONS}


@pytest.mark.parametrize("option", [option for option in OPTIONS if option.original],
                         ids=lambda option: option.name)
def test_each_original_option_keeps_its_shortest_abbreviation(option: Option) -> None:
    """Whatever is added, the shortest prefix that fits one option of the C
    msmtpd alone still means that option."""
    from msmtpd.commands.cli import _resolve

    originals = [other.name for other in OPTIONS if other.original and other is not option]
    name = option.name
    prefix = next(name[:n] for n in range(3, len(name) + 1)
                  if not any(other.startswith(name[:n]) for other in originals))
    assert _resolve(prefix) is option


def test_an_ambiguous_abbreviation_lists_what_it_could_mean() -> None:
    with pytest.raises(UsageError) as raised:
        parse_args(["--s=1"])
    assert str(raised.value) == ("ambiguous option: --s could match --shell-safe-addresses,"
                                 " --spool-dir, --spare-workers, --senders, --socket-mode")
