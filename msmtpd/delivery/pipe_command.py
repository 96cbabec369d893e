"""Running the pipe command for one mail, and turning its end into a reply.

This is the only module that starts the delivery command.  The sender
replaces the first ``%F``; the recipients are appended as arguments, in
order.  A command without shell syntax is executed directly; one with
shell syntax runs under ``/bin/sh -c`` with the sender as a quoted word and
the recipients as ``"$@"``, so no address is ever interpreted by a shell.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Protocol, Sequence

from msmtpd.base.config import DEFAULT_COMMAND
from msmtpd.base.logger import ERROR, INFO, log
from msmtpd.smtp import replies
from msmtpd.smtp.replies import Reply, reply_text
from msmtpd.smtp.session_parts import shown_recipients

if TYPE_CHECKING:
    from msmtpd.smtp.message import Spool
    from msmtpd.smtp.session import Envelope


NULL_SENDER = "MAILER-DAEMON"

# sysexits.h codes that mean "try again later": EX_NOHOST, EX_UNAVAILABLE,
# EX_OSERR, EX_TEMPFAIL.
TEMPORARY_STATUSES = {68: "EX_NOHOST", 69: "EX_UNAVAILABLE", 71: "EX_OSERR", 75: "EX_TEMPFAIL"}
# How much of the command's standard error is kept for the log.
STDERR_KEEP = 4096
PIPE_CHUNK = 64 * 1024
# While waiting for the command's pipes, check this often whether it exited.
EXIT_CHECK_SECONDS = 0.1
# After the command exited, how long its stderr may stay open before we stop reading.
EXIT_GRACE_SECONDS = 0.1
STDERR_LOG_LINES = 3
# While a command runs, ask the Interrupt this often whether it must end.
INTERRUPT_CHECK_SECONDS = 1.0
# No single wait is longer than this, whatever --command-timeout says.
MAX_WAIT_SECONDS = 3600.0
# Characters that only mean something to a shell; any of them sends the
# command through /bin/sh.
SHELL_SIGNALLED = 128
SHELL_SYNTAX = frozenset(";&|<>()$`\\\"'*?[]{}~#!\n")


class Interrupt(Protocol):
    """The worker, seen from a running command: ``wake_fd`` becomes
    readable on a signal; ``interrupted`` says why the command must end
    now (the stop's grace time ran out), or None."""

    wake_fd: int

    def interrupted(self) -> Optional[str]: ...


class _Interrupted(Exception):
    pass


class Outcome(NamedTuple):
    """What became of one delivery: the SMTP reply and what to log."""

    reply: Reply
    status: str  # "exit status 0", "signal 9", "timeout after 300 s", ...
    stderr: str
    seconds: float

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
    env = dict(os.environ, MSMTPD_SENDER=sender or NULL_SENDER)
    try:
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=message if isinstance(message, int) else subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a process group of its own, to kill as a whole
        )
    except OSError as exc:
        return _tempfail(f"cannot run {argv[0]}: {exc.strerror}", b"", started)
    deadline = None if timeout is None else started + timeout
    err = bytearray()  # the head of its stderr, kept even when it times out
    try:
        _Exchange(process, message if isinstance(message, bytes) else None, deadline, err,
                  interrupt).run()
        process.wait(None if deadline is None or process.poll() is not None
                     else max(deadline - time.monotonic(), 0))
    except BaseException as exc:  # the one way a command is cut short
        _kill_group(process)
        process.wait()
        why = _abort_reason(exc, process.pid, timeout)
        if why is None:
            raise
        return _tempfail(why, err, started)
    finally:
        for pipe in (process.stdin, process.stderr):
            if pipe is not None:
                pipe.close()
    returncode = process.returncode
    if command.shell and SHELL_SIGNALLED < returncode < SHELL_SIGNALLED + signal.NSIG:
        returncode = SHELL_SIGNALLED - returncode  # /bin/sh reports a killed child as 128+n
    return _judge(returncode, _text(bytes(err)), time.monotonic() - started)


def _abort_reason(exc: BaseException, pid: int, timeout: Optional[float]) -> Optional[str]:
    """Why the killed command is answered 451; None when ``exc`` is no
    reason of ours to end it (it goes on up, the command killed all the same)."""
    if isinstance(exc, _Interrupted):
        log.error("killed delivery command %d and its process group: %s", pid, exc,
                  event="command_killed", command_pid=pid, reason=str(exc))
        return f"delivery interrupted: {exc}"
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"command timed out after {timeout:g} s"
    return None


def _tempfail(why: str, err: bytes | bytearray, started: float) -> Outcome:
    """A 451 for a command that could not run or was cut short."""
    return Outcome(replies.DELIVERY_TEMPFAIL.format(why=why), why, _text(bytes(err)),
                   time.monotonic() - started)


class _Exchange:
    """Feeds the command's standard input while reading its standard error,
    until it has exited: like ``communicate`` but keeping only the head of a
    flood of stderr (in ``kept``, which survives a timeout), and waiting on a
    pidfd instead of polling.  A command that exits without reading its
    input is not an error here: its exit status will say what happened.
    :meth:`run` raises TimeoutExpired at ``deadline`` and _Interrupted when
    ``interrupt`` says so."""

    def __init__(self, process: subprocess.Popen[bytes], data: Optional[bytes],
                 deadline: Optional[float], kept: bytearray,
                 interrupt: Optional[Interrupt]) -> None:
        assert process.stderr is not None
        self.process = process
        self.stdin = process.stdin
        self.stderr = process.stderr
        self.pending = memoryview(data or b"")  # what the command has not read yet
        self.deadline = deadline
        self.kept = kept
        self.interrupt = interrupt
        self.pidfd: Optional[int] = None
        self.exited_at: Optional[float] = None

    def run(self) -> None:
        self.pidfd = _pidfd(self.process.pid)
        try:
            with selectors.DefaultSelector() as selector:
                self._register(selector)
                while self.stderr in selector.get_map() or self.exited_at is None:
                    now = self._check_limits()
                    if not self._step(selector, now):
                        return
        finally:
            if self.pidfd is not None:
                os.close(self.pidfd)

    def _register(self, selector: selectors.BaseSelector) -> None:
        selector.register(self.stderr, selectors.EVENT_READ)
        if self.pidfd is not None:
            selector.register(self.pidfd, selectors.EVENT_READ)
        if self.interrupt is not None:
            selector.register(self.interrupt.wake_fd, selectors.EVENT_READ)
        if self.stdin is None:
            return  # the message is a file: the command reads it itself
        if not self.pending:
            self.stdin.close()
            return
        os.set_blocking(self.stdin.fileno(), False)
        selector.register(self.stdin, selectors.EVENT_WRITE)

    def _check_limits(self) -> float:
        """Raise when the command must end now; else the time."""
        if self.interrupt is not None:
            reason = self.interrupt.interrupted()
            if reason is not None:
                raise _Interrupted(reason)
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            raise subprocess.TimeoutExpired(self.process.args, 0)
        return now

    def _wait_seconds(self, now: float) -> float:
        wait = MAX_WAIT_SECONDS if self.deadline is None else min(self.deadline - now, MAX_WAIT_SECONDS)
        if self.interrupt is not None:
            wait = min(wait, INTERRUPT_CHECK_SECONDS)
        if self.pidfd is None:  # no pidfd (old kernel): look now and then
            wait = min(wait, EXIT_CHECK_SECONDS)
        if self.exited_at is not None:  # it exited: a little longer for its last words
            wait = min(wait, self.exited_at + EXIT_GRACE_SECONDS - now)
        return max(wait, 0)

    def _step(self, selector: selectors.BaseSelector, now: float) -> bool:
        """Wait for the pipes or the exit once; False when it is over."""
        events = selector.select(self._wait_seconds(now))
        if self.interrupt is not None:  # a signal: interrupted() looks at it next round
            events = [event for event in events if event[0].fileobj != self.interrupt.wake_fd]
        if not events:
            return self._quiet()
        for key, _ in events:
            if key.fileobj is self.stdin:
                self._feed(selector)
            elif key.fileobj is self.stderr:
                self._read_stderr(selector)
            else:  # the pidfd: it exited
                selector.unregister(key.fileobj)
                self.exited_at = time.monotonic()
        return True

    def _quiet(self) -> bool:
        """Nothing happened within the wait; False once the exit's grace is over."""
        if self.exited_at is not None and time.monotonic() >= self.exited_at + EXIT_GRACE_SECONDS:
            return False  # a background child of the command holds stderr open
        if self.pidfd is None and self.process.poll() is not None:
            self.exited_at = time.monotonic()
        return True

    def _feed(self, selector: selectors.BaseSelector) -> None:
        assert self.stdin is not None
        try:
            self.pending = self.pending[os.write(self.stdin.fileno(), self.pending[:PIPE_CHUNK]):]
        except BrokenPipeError:
            self.pending = self.pending[:0]
        if not self.pending:
            selector.unregister(self.stdin)
            self.stdin.close()

    def _read_stderr(self, selector: selectors.BaseSelector) -> None:
        chunk = os.read(self.stderr.fileno(), PIPE_CHUNK)
        if not chunk:
            selector.unregister(self.stderr)
        elif len(self.kept) < STDERR_KEEP:
            self.kept += chunk[: STDERR_KEEP - len(self.kept)]


def _pidfd(pid: int) -> Optional[int]:
    """A descriptor that becomes readable when ``pid`` exits (Linux 5.3+)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


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
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass


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
        return outcome.reply
