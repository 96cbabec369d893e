"""The pipe command: argv building, no shell interpretation of addresses,
exit status mapping, timeouts, stdout isolation.  These tests really run
small commands, because starting processes is what delivery does (argv
building without a run is in tests/unit)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from msmtpd.delivery.pipe_command import (
    NULL_SENDER,
    Deliverer,
    PipeCommand,
    deliver,
)
from msmtpd.smtp import replies
from msmtpd.smtp.message import Spool
from msmtpd.smtp.session import Envelope

MESSAGE = b"Received: from x\nSubject: test\n\nbody\n"


def q(path: Path) -> str:
    return shlex.quote(str(path))


def test_percent_f_is_replaced_once() -> None:
    """Only the first %F becomes the sender, in both paths."""
    direct = PipeCommand("prog %F %F -x%F")
    assert direct.argv("s@x", []) == ["prog", "s@x", "%F", "-x%F"]
    shell = PipeCommand("printf '[%s]' %F %F >&2; true")
    assert deliver(shell, "s@x", [], b"", 10).stderr == "[s@x][%F]"


def test_null_sender_becomes_mailer_daemon() -> None:
    """The null sender <> is given as MAILER-DAEMON, in both paths."""
    assert NULL_SENDER == "MAILER-DAEMON"
    assert PipeCommand("prog -f %F --").argv("", ["r@x"]) == ["prog", "-f", "MAILER-DAEMON", "--", "r@x"]
    shell = PipeCommand("printf '[%s]' -f %F -- >&2; true")
    assert deliver(shell, "", ["r@x"], b"", 10).stderr == "[-f][MAILER-DAEMON][--]"


@pytest.mark.parametrize("template", ["printf '[%s]' -f %F -- >&2; true",
                                      "printf '[%s]' -f \"%F\" -- >&2; true",
                                      "printf '[%s]' -f '%F' -- >&2; true"])
def test_shell_path_passes_the_sender_as_one_word(template: str) -> None:
    """In the shell path the sender arrives as one word, whatever quotes
    stand around %F in the command."""
    outcome = deliver(PipeCommand(template), "a b'c\"$(id)@x", [], b"", 10)
    assert outcome.stderr == "[-f][a b'c\"$(id)@x][--]"


# -- what the command really receives -----------------------------------------


ARGV_DUMPER = "import json, sys; json.dump(sys.argv[1:], open(sys.argv[1], 'w'))"

EVIL = [
    "$(touch {m})",
    "`touch {m}`",
    ";touch {m}",
    "a;touch {m}",
    "a|touch {m}",
    "a&&touch {m}",
    "'; touch {m}; '",
    "\"; touch {m}; \"",
    "$(touch${{IFS}}{m})",
    "\"$(touch {m})\"@example.org",
    "\"`touch {m}`\"@example.org",
    "\"a;touch {m}\"@example.org",
    "\"a'b\\\"c;touch {m}\"@example.org",
    "a\ntouch {m}",
    "$'\\x3btouch {m}'",
]


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER"


def evil_addresses(marker: Path) -> List[str]:
    return [e.format(m=marker) for e in EVIL]


def test_direct_path_passes_hostile_addresses_verbatim(tmp_path: Path, marker: Path) -> None:
    """Directly executed, the command gets every hostile sender and recipient
    as one argument each, unchanged, and nothing is executed."""
    script = tmp_path / "dump.py"
    script.write_text(ARGV_DUMPER)
    out = tmp_path / "argv.json"
    command = PipeCommand(f"{sys.executable} {script} {out} -f %F --")
    assert not command.shell
    evil = evil_addresses(marker)
    for sender in evil:
        outcome = deliver(command, sender, evil, MESSAGE, 10)
        assert outcome.reply == replies.DELIVERED, outcome
        assert json.loads(out.read_text()) == [str(out), "-f", sender, "--", *evil]
    assert not marker.exists()


@pytest.mark.parametrize(
    "template",
    [
        "cat >/dev/null; printf '%s\\n' %F > {out}",
        "cat >/dev/null && printf '%s\\n' %F > {out}",
        "true && printf '%s\\n' %F > {out}",
    ],
)
def test_shell_path_passes_hostile_addresses_verbatim(template: str, tmp_path: Path, marker: Path) -> None:
    """Through /bin/sh -c, the sender is one quoted word and the recipients
    are "$@": the command sees them unchanged and no shell code runs."""
    out = tmp_path / "args.txt"
    command = PipeCommand(template.format(out=q(out)))
    assert command.shell
    evil = [e for e in evil_addresses(marker) if "\n" not in e]
    for sender in evil:
        outcome = deliver(command, sender, evil, MESSAGE, 10)
        assert outcome.reply == replies.DELIVERED, outcome
        assert out.read_text().splitlines() == [sender, *evil]
    assert not marker.exists()


@pytest.mark.parametrize(
    "template",
    [
        'cat >/dev/null; printf "%s\\n" "%F" > {out}',
        "cat >/dev/null; printf '%s\\n' '%F' > {out}",
        'cat >/dev/null; printf "%s\\n" "<%F>" > {out}',
    ],
)
def test_shell_path_with_a_quoted_percent_f_executes_nothing(template: str, tmp_path: Path,
                                                              marker: Path) -> None:
    """A template that quotes %F itself (``-f "%F"`` or ``-f '%F'``) must not let a
    sender's quotes end the template's quoting: no address is ever run as shell code."""
    out = tmp_path / "args.txt"
    command = PipeCommand(template.format(out=q(out)))
    for sender in evil_addresses(marker):
        if "\n" in sender:
            continue
        deliver(command, sender, ["r@example.org"], MESSAGE, 10)
        assert not marker.exists(), f"sender {sender!r} ran shell code"


STDIN_SAVER = "import sys; open(sys.argv[1], 'wb').write(sys.stdin.buffer.read())"


def test_direct_and_shell_commands_receive_the_message(tmp_path: Path) -> None:
    """Both paths get the whole message on standard input."""
    saver = tmp_path / "save.py"
    saver.write_text(STDIN_SAVER)
    for template in (f"{sys.executable} {saver} {tmp_path / 'direct'}", f"cat > {q(tmp_path / 'shell')}; :"):
        outcome = deliver(PipeCommand(template), "s@x", ["r@x"], MESSAGE, 10)
        assert outcome.reply == replies.DELIVERED, outcome
    assert (tmp_path / "direct").read_bytes() == MESSAGE
    assert (tmp_path / "shell").read_bytes() == MESSAGE


# -- exit status mapping -------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reply_code", "name"),
    [
        (0, 250, None),
        (1, 554, None),
        (64, 554, None),
        (65, 554, None),
        (67, 554, None),
        (68, 451, "EX_NOHOST"),
        (69, 451, "EX_UNAVAILABLE"),
        (70, 554, None),
        (71, 451, "EX_OSERR"),
        (75, 451, "EX_TEMPFAIL"),
        (78, 554, None),
        (127, 554, None),
    ],
)
def test_exit_status_mapping(status: int, reply_code: int, name: str | None) -> None:
    """0 → 250; 68, 69, 71, 75 → 451; any other status → 554; the reply names the status."""
    outcome = deliver(PipeCommand(f"sh -c 'exit {status}'"), "s@x", ["r@x"], MESSAGE, 10)
    assert outcome.reply.code == reply_code
    assert outcome.delivered == (status == 0)
    if status == 0:
        assert outcome.reply == replies.DELIVERED
        assert outcome.status == "exit status 0"
    else:
        assert f"exit status {status}" in outcome.reply.text
        assert f"exit status {status}" in outcome.status
        expected = replies.DELIVERY_TEMPFAIL if reply_code == 451 else replies.DELIVERY_FAILED
        assert outcome.reply.text.startswith(expected.text.split("{")[0])
    if name is not None:
        assert name in outcome.reply.text


@pytest.mark.parametrize("status", [0, 1, 75])
def test_exit_status_of_a_direct_command(status: int, tmp_path: Path) -> None:
    """The mapping is the same when the command runs without a shell."""
    script = tmp_path / "exit.sh"
    script.write_text(f"#!/bin/sh\ncat >/dev/null\nexit {status}\n")
    script.chmod(0o755)
    command = PipeCommand(str(script))
    assert not command.shell
    outcome = deliver(command, "s@x", ["r@x"], MESSAGE, 10)
    assert outcome.reply.code == {0: 250, 1: 554, 75: 451}[status]


@pytest.mark.parametrize("template", ["kill -9 $$", "sh -c 'kill -9 $$'", "sh -c 'kill -TERM $$'"])
def test_command_killed_by_a_signal_is_451(template: str) -> None:
    """A command killed by a signal is a temporary failure naming the signal."""
    outcome = deliver(PipeCommand(template), "s@x", ["r@x"], MESSAGE, 10)
    assert outcome.reply.code == 451
    assert "signal" in outcome.reply.text
    number = 9 if "-9" in template else 15
    assert f"signal {number}" in outcome.reply.text


def test_direct_command_killed_by_a_signal_is_451(tmp_path: Path) -> None:
    """A directly executed command killed by SIGKILL is answered 451 naming SIGKILL."""
    script = tmp_path / "die.sh"
    script.write_text("#!/bin/sh\nkill -9 $$\n")
    script.chmod(0o755)
    outcome = deliver(PipeCommand(str(script)), "s@x", ["r@x"], MESSAGE, 10)
    assert outcome.reply.code == 451
    assert "signal 9 (SIGKILL)" in outcome.reply.text


def test_missing_executable_is_451(tmp_path: Path) -> None:
    """A command that cannot be started is a temporary failure (451) saying so."""
    outcome = deliver(PipeCommand(f"{tmp_path}/no-such-program -f %F"), "s@x", ["r@x"], MESSAGE, 10)
    assert outcome.reply.code == 451
    assert "cannot run" in outcome.reply.text
    assert not outcome.delivered


def test_non_executable_file_is_451(tmp_path: Path) -> None:
    """A command file without execute permission is a temporary failure too."""
    script = tmp_path / "noexec"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    assert deliver(PipeCommand(str(script)), "s@x", ["r@x"], MESSAGE, 10).reply.code == 451


# -- timeouts ------------------------------------------------------------------


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent or a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_gone(pid: int, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return gone(pid)


def test_command_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    """A command running past the time limit is killed together with its
    background children, and the reply is 451 saying it timed out."""
    pids = tmp_path / "pids"
    template = f"sleep 30 & echo $! > {q(pids)}; echo $$ >> {q(pids)}; sleep 30; :"
    started = time.monotonic()
    outcome = deliver(PipeCommand(template), "s@x", ["r@x"], MESSAGE, 0.5)
    elapsed = time.monotonic() - started
    assert outcome.reply.code == 451
    assert "timed out" in outcome.reply.text
    assert "timeout" in outcome.status or "timed out" in outcome.status
    assert 0.4 < elapsed < 5
    grandchild, shell = (int(x) for x in pids.read_text().split())
    assert wait_gone(shell)
    assert wait_gone(grandchild), "the background grandchild survived the timeout"


def test_direct_command_timeout(tmp_path: Path) -> None:
    """The limit applies to a directly executed command too."""
    started = time.monotonic()
    outcome = deliver(PipeCommand("sleep 30"), "s@x", [], MESSAGE, 0.3)
    assert outcome.reply.code == 451
    assert time.monotonic() - started < 5


def test_no_timeout_lets_a_command_finish() -> None:
    """Without a limit (None) a command runs to its end."""
    assert deliver(PipeCommand("sleep 0.1"), "s@x", [], MESSAGE, None).reply.code == 250


# -- stdout and stderr ---------------------------------------------------------


@pytest.mark.parametrize("status", [0, 1, 75])
def test_stdout_never_reaches_the_reply(status: int, capfd: pytest.CaptureFixture[str]) -> None:
    """Whatever the command prints on standard output appears neither in the
    reply nor on the server's own standard output (the SMTP stream in --inetd)."""
    template = f"echo STDOUT-SECRET-250-OK; echo 250 fake >&1; echo STDERR-NOTE >&2; exit {status}"
    outcome = deliver(PipeCommand(template), "s@x", ["r@x"], MESSAGE, 10)
    assert "STDOUT-SECRET" not in outcome.reply.text
    assert "fake" not in outcome.reply.text
    assert "STDOUT-SECRET" not in outcome.stderr
    captured = capfd.readouterr()
    assert "STDOUT-SECRET" not in captured.out
    assert "STDOUT-SECRET" not in captured.err


def test_stderr_is_captured() -> None:
    """The command's standard error is kept in Outcome.stderr (for the log), not in the reply."""
    outcome = deliver(PipeCommand("echo 'msmtp: account default not found' >&2; exit 78"),
                      "s@x", ["r@x"], MESSAGE, 10)
    assert outcome.reply.code == 554
    assert "msmtp: account default not found" in outcome.stderr
    assert "account default" not in outcome.reply.text


# -- stdin ---------------------------------------------------------------------


def test_command_that_does_not_read_its_input() -> None:
    """A command that exits without reading a large message is judged by its
    exit status (250 for true, 554 for false), not by a broken pipe."""
    big = b"x" * (8 * 1024 * 1024)
    assert deliver(PipeCommand("true"), "s@x", ["r@x"], big, 10).reply == replies.DELIVERED
    assert deliver(PipeCommand("false"), "s@x", ["r@x"], big, 10).reply.code == 554


def test_message_given_as_a_file_descriptor(tmp_path: Path) -> None:
    """A spool rolled over to a file is passed as a descriptor and read whole by the command."""
    spool = Spool(memory_limit=1024, directory=str(tmp_path))
    data = b"".join(b"line %d\n" % i for i in range(20000))
    spool.write(data)
    message = spool.contents()
    assert isinstance(message, int)
    out = tmp_path / "received"
    outcome = deliver(PipeCommand(f"cat > {q(out)}; :"), "s@x", ["r@x"], message, 10)
    spool.close()
    assert outcome.reply == replies.DELIVERED
    assert out.read_bytes() == data


def test_deliverer_runs_the_command_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Deliverer passes envelope and spool to the command and logs status and stderr."""
    from msmtpd.base.logger import log

    logger = logging.getLogger("msmtpd")
    monkeypatch.setattr(log, "logger", logger)  # as logs.install() does
    # An earlier test of this process may have installed a log target,
    # which stops propagation to caplog's handler and may silence the logger.
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "disabled", False)
    out = tmp_path / "mail"
    deliverer = Deliverer(PipeCommand(f"cat > {q(out)}; echo oops >&2; printf '%s\\n' %F > {q(out)}.args"),
                          10, peer="192.0.2.1")
    spool = Spool()
    spool.write(MESSAGE)
    envelope = Envelope(sender="", recipients=["r1@x", "r2@x"])
    with caplog.at_level(logging.INFO, logger="msmtpd"):
        reply = deliverer(envelope, spool)
    assert reply == replies.DELIVERED
    assert out.read_bytes() == MESSAGE
    assert Path(f"{out}.args").read_text().splitlines() == ["MAILER-DAEMON", "r1@x", "r2@x"]
    text = caplog.text
    assert "exit status 0" in text and "oops" in text and "<r1@x>, <r2@x>" in text


def test_commands_get_their_own_process_group(tmp_path: Path) -> None:
    """The command runs in a new session/process group (so a timeout can kill it whole)."""
    out = tmp_path / "ids"
    deliver(PipeCommand(f"cat >/dev/null; cut -d' ' -f5 /proc/$$/stat > {q(out)}; :"), "s@x", [], MESSAGE, 10)
    assert int(out.read_text()) != os.getpgrp()


def test_sender_is_in_the_environment_of_direct_commands(tmp_path: Path) -> None:
    """$MSMTPD_SENDER carries the sender to a command run without a shell
    too, e.g. a wrapper where %F cannot be written (xinetd)."""
    wrapper = tmp_path / "wrapper"
    wrapper.write_text('#!/bin/sh\nprintf "[%s]" "$MSMTPD_SENDER" >&2\ncat >/dev/null\n')
    wrapper.chmod(0o755)
    command = PipeCommand(str(wrapper))
    assert not command.shell
    assert deliver(command, "s@example.org", ["r@x"], b"x\n", 10).stderr == "[s@example.org]"
    assert deliver(command, "", ["r@x"], b"x\n", 10).stderr == "[MAILER-DAEMON]"


def test_stderr_of_a_command_that_times_out_is_kept() -> None:
    """What a hanging command said before it was killed still reaches the log."""
    outcome = deliver(PipeCommand("echo stuck on the relay >&2; sleep 30; :"), "a@x", ["r@x"], b"x\n", 1)
    assert outcome.reply.code == 451 and "timed out" in outcome.status
    assert outcome.stderr.strip() == "stuck on the relay"


# -- what the command starts with ------------------------------------------


def test_command_starts_with_default_signals_and_none_blocked(tmp_path: Path) -> None:
    """Python ignores SIGPIPE and SIGXFSZ; the command must not (a `cat`
    into a closed pipe must die of SIGPIPE), and a signal msmtpd blocks
    for a moment must not stay blocked in it."""
    status = tmp_path / "status"
    command = PipeCommand(f"grep -E '^Sig(Ign|Blk):' /proc/self/status > {q(status)}; cat >/dev/null; :")
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        assert deliver(command, "s@x", ["r@x"], MESSAGE, 10).delivered
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    masks = dict(line.split(":") for line in status.read_text().splitlines())
    ignored = int(masks["SigIgn"], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGXFSZ - 1)), masks
    assert int(masks["SigBlk"], 16) == 0, masks


def test_a_lost_exit_status_is_never_a_success() -> None:
    """With SIGCHLD ignored the kernel reaps the command itself and its
    exit status is gone: 451, where subprocess used to report 0 (250)."""
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        outcome = deliver(PipeCommand("true"), "s@x", ["r@x"], MESSAGE, 10)
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert outcome.reply.code == 451 and "exit status was lost" in outcome.status


def test_a_process_started_with_its_standard_descriptors_closed(tmp_path: Path) -> None:
    """With 0, 1 and 2 closed, the pipes msmtpd makes for the command get
    those numbers; the command still gets the message on 0 and its stderr
    is still read."""
    result = tmp_path / "result"
    code = ("import os, sys\n"
            "for fd in (0, 1, 2): os.close(fd)\n"
            "from msmtpd.delivery.pipe_command import PipeCommand, deliver\n"
            "outcome = deliver(PipeCommand('cat >&2; :'), 's@x', ['r@x'], b'the message\\n', 10)\n"
            f"open({str(result)!r}, 'w').write(repr((outcome.reply.code, outcome.stderr)))\n")
    subprocess.run([sys.executable, "-c", code], timeout=20, check=True)
    assert result.read_text() == repr((250, "the message\n"))
