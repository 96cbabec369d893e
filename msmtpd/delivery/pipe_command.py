"""Running the pipe command for one mail, and turning its end into a reply.

This is the only module that starts the delivery command (the process
itself is :mod:`msmtpd.delivery.command_process`'s).  The sender
replaces the first ``%F``; the recipients are appended as arguments, in
order.  A command without shell syntax is executed directly; one with
shell syntax runs under ``/bin/sh -c`` with the sender as a quoted word and
the recipients as ``"$@"``, so no address is ever interpreted by a shell.
"""

from __future__ import annotations

import time

from msmtpd.base.config import DEFAULT_COMMAND
from msmtpd.base.logger import ERROR, INFO, log
from msmtpd.delivery.command_process import (
    STDERR_KEEP,
    CommandProcess,
    Interrupted,
    StatusLost,
    TimedOut,
    command_environment,
)
from msmtpd.smtp import replies
from msmtpd.smtp.replies import Reply, reply_text
from msmtpd.smtp.session_parts import shown_recipients

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    import signal
    from typing import Any, Optional, Sequence

    from msmtpd.delivery.command_process import Interrupt as Interrupt  # the session's and queue's name
    from msmtpd.smtp.message import Spool
    from msmtpd.smtp.session import Envelope
else:
    import _signal as signal  # the C module: signal wraps it in enums (enum: some 2 ms)


NULL_SENDER = "MAILER-DAEMON"

# sysexits.h codes that mean "try again later": EX_NOHOST, EX_UNAVAILABLE,
# EX_OSERR, EX_TEMPFAIL.
TEMPORARY_STATUSES = {68: "EX_NOHOST", 69: "EX_UNAVAILABLE", 71: "EX_OSERR", 75: "EX_TEMPFAIL"}
STDERR_LOG_LINES = 3
# Characters that only mean something to a shell; any of them sends the
# command through /bin/sh.
SHELL_SIGNALLED = 128
SHELL_SYNTAX = frozenset(";&|<>()$`\\\"'*?[]{}~#!\n")


class Outcome:
    """What became of one delivery: the SMTP reply and what to log.  (A
    plain class: a NamedTuple would import typing into every session.)"""

    __slots__ = ("reply", "status", "stderr", "seconds")

    def __init__(self, reply: Reply, status: str, stderr: str, seconds: float) -> None:
        self.reply = reply
        self.status = status  # "exit status 0", "signal 9", "timeout after 300 s", ...
        self.stderr = stderr
        self.seconds = seconds

    def __repr__(self) -> str:
        return (f"Outcome(reply={self.reply!r}, status={self.status!r}, "
                f"stderr={self.stderr!r}, seconds={self.seconds!r})")

    @property
    def delivered(self) -> bool:
        return self.reply.code == 250


def needs_shell(command: str) -> bool:
    if any(char in SHELL_SYNTAX for char in command):
        return True
    words = command.split()
    return bool(words) and "=" in words[0]  # VAR=value command


class PipeCommand:
    """The configured command, parsed once at start-up."""

    def __init__(self, template: str = DEFAULT_COMMAND) -> None:
        if not template.strip():
            raise ValueError("the command is empty")
        self.template = template
        self.shell = needs_shell(template)
        self._words = [] if self.shell else template.split()
        self._script = shell_script(template) if self.shell else ""

    def argv(self, sender: str, recipients: Sequence[str]) -> list[str]:
        sender = sender or NULL_SENDER
        if self.shell:
            return ["/bin/sh", "-c", self._script, "msmtpd", *recipients]
        words = list(self._words)
        for index, word in enumerate(words):
            if "%F" in word:
                words[index] = word.replace("%F", sender, 1)
                break
        return [*words, *recipients]


def shell_script(template: str) -> str:
    """The ``sh -c`` script for a template: the first ``%F`` becomes a
    reference to ``$MSMTPD_SENDER`` that fits the quoting around it, and
    ``"$@"`` receives the recipients.  The shell never re-reads what an
    expansion yields, so no address can turn into shell syntax."""
    index = template.find("%F")
    if index < 0:
        return template + ' "$@"'
    reference = {
        None: '"${MSMTPD_SENDER}"',
        '"': "${MSMTPD_SENDER}",
        "'": "'\"${MSMTPD_SENDER}\"'",
    }[_quote_state(template[:index])]
    return template[:index] + reference + template[index + 2 :] + ' "$@"'


def _quote_state(text: str) -> Optional[str]:
    """The kind of quotes open at the end of ``text`` (None, ``'`` or ``"``)."""
    state: Optional[str] = None
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif state == "'":
            if char == "'":
                state = None
        elif char == "\\":
            escaped = True
        elif char in "'\"" and state is None:
            state = char
        elif char == '"' and state == '"':
            state = None
    return state


def deliver(command: PipeCommand, sender: str, recipients: Sequence[str],
            message: bytes | int, timeout: Optional[float],
            interrupt: Optional[Interrupt] = None) -> Outcome:
    """Run ``command`` with ``message`` (bytes, or a file descriptor at the
    start of the message) on its standard input and wait for it, at most
    ``timeout`` seconds.  Its standard output is discarded; the first
    ``STDERR_KEEP`` bytes of its standard error are kept for the log."""
    started = time.monotonic()
    argv = command.argv(sender, recipients)
    # Also for direct commands: a wrapper script run where %F cannot be
    # written (xinetd's server_args has no quoting) still learns the sender.
    try:
        process = CommandProcess(argv, command_environment(sender or NULL_SENDER), message)
    except OSError as exc:
        return _tempfail(f"cannot run {argv[0]}: {exc.strerror}", b"", started)
    deadline = None if timeout is None else started + timeout
    err = bytearray()  # the head of its stderr, kept even when it times out
    try:
        returncode = process.run(deadline, err, interrupt)
    except BaseException as exc:  # the one way a command is cut short
        process.kill()
        why = _abort_reason(exc, process.pid, timeout)
        if why is None:
            raise
        return _tempfail(why, err, started)
    finally:
        process.close()
    if command.shell and SHELL_SIGNALLED < returncode < SHELL_SIGNALLED + signal.NSIG:
        returncode = SHELL_SIGNALLED - returncode  # /bin/sh reports a killed child as 128+n
    return _judge(returncode, _text(bytes(err)), time.monotonic() - started)


def _abort_reason(exc: BaseException, pid: int, timeout: Optional[float]) -> Optional[str]:
    """Why the killed command is answered 451; None when ``exc`` is no
    reason of ours to end it (it goes on up, the command killed all the same)."""
    if isinstance(exc, Interrupted):
        log.error("killed delivery command %d and its process group: %s", pid, exc,
                  event="command_killed", command_pid=pid, reason=str(exc))
        return f"delivery interrupted: {exc}"
    if isinstance(exc, TimedOut):
        return f"command timed out after {timeout:g} s"
    if isinstance(exc, StatusLost):
        return "the command's exit status was lost (SIGCHLD ignored?)"
    return None


def _tempfail(why: str, err: bytes | bytearray, started: float) -> Outcome:
    """A 451 for a command that could not run or was cut short."""
    return Outcome(replies.DELIVERY_TEMPFAIL.format(why=why), why, _text(bytes(err)),
                   time.monotonic() - started)


def _judge(returncode: int, stderr: str, seconds: float) -> Outcome:
    """Map the command's end to a reply: 0 is delivered, a signal or a
    sysexits temporary code is 451, anything else 554."""
    if returncode == 0:
        return Outcome(replies.DELIVERED, "exit status 0", stderr, seconds)
    if returncode < 0:
        name = _signal_name(-returncode)
        why = f"command killed by signal {-returncode} ({name})"
        return Outcome(replies.DELIVERY_TEMPFAIL.format(why=why), why, stderr, seconds)
    if returncode in TEMPORARY_STATUSES:
        why = f"command exit status {returncode} ({TEMPORARY_STATUSES[returncode]})"
        return Outcome(replies.DELIVERY_TEMPFAIL.format(why=why), why, stderr, seconds)
    why = f"command exit status {returncode}"
    return Outcome(replies.DELIVERY_FAILED.format(why=why), why, stderr, seconds)


def _signal_name(number: int) -> str:
    import signal  # only for a command killed by a signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


def _text(err: Optional[bytes]) -> str:
    return (err or b"")[:STDERR_KEEP].decode("utf-8", "replace")


def summarise_stderr(stderr: str) -> str:
    """The first lines of the command's standard error, for one log line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return " | ".join(lines[:STDERR_LOG_LINES])


def mail_result(outcome: Outcome) -> str:
    """A delivery's result as the JSON log names it."""
    if outcome.delivered:
        return "delivered"
    return "temporary_failure" if outcome.reply.code < 500 else "permanent_failure"


def summarise_recipients(recipients: Sequence[str]) -> str:
    """``<a@x>, <b@x> and 998 more``: a log line stays short however many."""
    shown = shown_recipients(recipients)
    text = ", ".join(f"<{r}>" for r in shown)
    rest = len(recipients) - len(shown)
    return f"{text} and {rest} more" if rest else text


class Deliverer:
    """The session's delivery hook: runs the command and logs the result."""

    def __init__(self, command: PipeCommand, timeout: Optional[float], peer: str = "",
                 interrupt: Optional[Interrupt] = None, counters: Any = None) -> None:
        self.command = command
        self.timeout = timeout
        self.who = peer or "client"  # the peer as a log line names it
        self.interrupt = interrupt
        self.counters = counters  # --metrics: msmtpd.base.metrics.Counters

    accepted_as = "delivered"  # what --metrics calls a mail this hook took

    def __call__(self, envelope: Envelope, spool: Spool) -> Reply:
        outcome = deliver(self.command, envelope.sender, envelope.recipients,
                          spool.contents(), self.timeout, self.interrupt)
        if self.counters is not None:
            self.counters.observe_delivery(outcome.seconds)
        if log.logger is not None:  # without a log target, its fields are not worth making
            self._log(envelope, spool, outcome)
        return outcome.reply

    def _log(self, envelope: Envelope, spool: Spool, outcome: Outcome) -> None:
        level = INFO if outcome.delivered else ERROR
        detail = summarise_stderr(outcome.stderr)
        log.log(level, "%s: mail from <%s> to %s, %d octets: %s, %s in %.3f s%s",
                self.who, envelope.sender,
                summarise_recipients(envelope.recipients), spool.size,
                "delivered" if outcome.delivered else f"{outcome.reply.code} not delivered",
                outcome.status, outcome.seconds, f"; stderr: {detail}" if detail else "",
                event="mail", peer=self.who, **envelope.log_fields(), size=spool.size,
                result=mail_result(outcome), reply=reply_text(outcome.reply), status=outcome.status,
                seconds=round(outcome.seconds, 3), stderr=detail or None)
