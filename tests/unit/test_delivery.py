"""The pipe command without running it: argv building, the choice of the
direct or the shell path, and the summary of stderr; the runs are in
tests/system."""

from __future__ import annotations

import pytest

from msmtpd.delivery.pipe_command import (
    DEFAULT_COMMAND,
    PipeCommand,
    needs_shell,
    summarise_stderr,
)

# -- argv building -------------------------------------------------------------


def test_default_command_is_msmtp() -> None:
    """The default command is ``msmtp -f %F --`` and runs without a shell."""
    command = PipeCommand()
    assert DEFAULT_COMMAND == "msmtp -f %F --"
    assert not command.shell
    assert command.argv("a@example.org", ["b@example.org", "c@example.org"]) == [
        "msmtp", "-f", "a@example.org", "--", "b@example.org", "c@example.org"]


def test_direct_command_argv() -> None:
    """A command without shell syntax is split into words and executed directly."""
    command = PipeCommand("cat -u %F")
    assert not command.shell
    assert command.argv("a@example.org", ["r1@x", "r2@x"]) == ["cat", "-u", "a@example.org", "r1@x", "r2@x"]


def test_percent_f_inside_a_word() -> None:
    """%F may be part of a word (``-f%F``)."""
    assert PipeCommand("prog -f%F").argv("s@x", ["r@x"]) == ["prog", "-fs@x", "r@x"]


def test_command_without_percent_f() -> None:
    """Without %F the sender is simply not passed; recipients still are."""
    assert PipeCommand("prog --read").argv("s@x", ["r@x"]) == ["prog", "--read", "r@x"]


def test_recipients_are_appended_in_order() -> None:
    """Recipients follow the command's words, in envelope order."""
    recipients = [f"r{i}@example.org" for i in (3, 1, 2, 10)]
    assert PipeCommand("prog %F").argv("s@x", recipients)[2:] == recipients
    shell_argv = PipeCommand("prog %F | cat").argv("s@x", recipients)
    assert shell_argv[:2] == ["/bin/sh", "-c"]
    assert shell_argv[3:] == ["msmtpd", *recipients]


@pytest.mark.parametrize(
    "template",
    ["prog %F; true", "prog %F | tee x", "prog %F > out", "prog < in", "prog $HOME", "prog `id`",
     "prog '%F'", 'prog "%F"', "prog a&&b", "prog *", "prog ~/x", "prog a\\ b", "A=1 prog %F",
     "prog # comment", "prog (x)", "prog {a,b}", "prog [ab]", "prog !x", "prog ?"],
)
def test_shell_syntax_selects_the_shell_path(template: str) -> None:
    """Any shell syntax runs the command through /bin/sh -c with "$@" for the recipients."""
    command = PipeCommand(template)
    assert needs_shell(template)
    assert command.shell
    argv = command.argv("s@example.org", ["r1@x", "r2@x"])
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[2].endswith(' "$@"')
    assert argv[3:] == ["msmtpd", "r1@x", "r2@x"]


@pytest.mark.parametrize("template",
                         ["msmtp -f %F --", "/usr/bin/msmtp -a work -f %F", "cat", "prog --opt=value"])
def test_plain_commands_select_the_direct_path(template: str) -> None:
    """Commands without shell syntax (an '=' inside an option is fine) run directly."""
    assert not needs_shell(template)
    assert not PipeCommand(template).shell


def test_empty_command_is_refused() -> None:
    """An empty or blank command is a ValueError at start-up."""
    for template in ("", "   "):
        with pytest.raises(ValueError):
            PipeCommand(template)


def test_summarise_stderr_keeps_the_first_lines() -> None:
    """The log gets the first non-empty stderr lines joined on one line."""
    assert summarise_stderr("\n one \n\ntwo\nthree\nfour\n") == "one | two | three"
    assert summarise_stderr("") == ""
