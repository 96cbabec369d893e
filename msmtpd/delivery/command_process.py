"""The delivery command as a process: started, fed, heard and waited for.

It is started with ``os.posix_spawn`` (glibc's clone with CLONE_VM and
CLONE_VFORK: no copy of the worker's page tables, and an exec error comes
back as OSError) rather than ``subprocess``, which costs a worker some
0.1 ms more per mail and loads ``threading`` and ``selectors`` into every
``--inetd`` session.  What ``subprocess`` did for us is done here:

- descriptors: the command gets the message on 0, /dev/null on 1 and the
  stderr pipe on 2, and nothing else.  Every descriptor msmtpd opens is
  close-on-exec (PEP 446); those it inherited (systemd's or inetd's
  sockets, whatever a parent leaked) are marked close-on-exec once per
  process, before its first command (:func:`seal_inherited_descriptors`);
- a session of its own (``setsid``), so the whole group can be killed;
- the signals Python ignores (SIGPIPE, SIGXFSZ) back to their defaults,
  and no signal blocked.

:class:`CommandProcess` then feeds a message given as bytes, keeps the head
of the command's standard error, and waits for its exit on a pidfd, all
in one ``select.poll``, under the deadline and the worker's interrupt.
"""

from __future__ import annotations

import os
import select
import time

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    import signal
    from typing import Dict, List, Optional, Protocol, Sequence, Tuple, Union

    Environment = Dict[bytes, bytes]

    class Interrupt(Protocol):
        """The worker, seen from a running command: ``wake_fd`` becomes
        readable on a signal; ``interrupted`` says why the command must end
        now (the stop's grace time ran out), or None."""

        wake_fd: int

        def interrupted(self) -> Optional[str]: ...
else:
    import _signal as signal  # the C module: signal wraps it in enums (enum: some 2 ms)

# How much of the command's standard error is kept for the log.
STDERR_KEEP = 4096
PIPE_CHUNK = 64 * 1024
# While waiting for the command's pipes, check this often whether it exited
# (only without a pidfd, on kernels older than 5.3).
EXIT_CHECK_SECONDS = 0.1
# After the command exited, how long its stderr may stay open before we stop reading.
EXIT_GRACE_SECONDS = 0.1
# While a command runs, ask the Interrupt this often whether it must end.
INTERRUPT_CHECK_SECONDS = 1.0
# No single wait is longer than this, whatever --command-timeout says.
MAX_WAIT_SECONDS = 3600.0
# Python ignores these; a command must start with their default actions.
DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
# Without /proc/self/fd, the descriptors below this bound are checked.
MAX_SEALED_FD = 65536
FIRST_INHERITABLE_FD = 3  # 0, 1 and 2 are replaced in the command anyway

# The wait status of a child someone else reaped (SIGCHLD ignored): unknown.
LOST_STATUS = -1

_sealed_pid = 0  # the process whose inherited descriptors are close-on-exec
_environment: Tuple[int, Environment] = (0, {})
_devnull = -1


class TimedOut(Exception):
    """The command outlived its deadline."""


class StatusLost(Exception):
    """The command was reaped by someone else: its exit status is unknown,
    which must never pass for a success."""


class Interrupted(Exception):
    """The worker must end the command now (the stop's grace ran out)."""


def seal_inherited_descriptors() -> None:
    """Mark every descriptor from 3 up close-on-exec, once per process:
    the command must not inherit a listening socket or anything else
    msmtpd was handed, as subprocess's ``close_fds`` saw to."""
    global _sealed_pid
    pid = os.getpid()
    if _sealed_pid == pid:
        return
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(FIRST_INHERITABLE_FD, min(os.sysconf("SC_OPEN_MAX"), MAX_SEALED_FD)))
    for fd in fds:
        if fd >= FIRST_INHERITABLE_FD:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:
                pass  # not open (the listing's own descriptor, now closed)
    _sealed_pid = pid


def command_environment(sender: str) -> Environment:
    """msmtpd's environment as the command gets it, with MSMTPD_SENDER.
    Read once per process, at its first command (by then --user has set
    HOME, USER and LOGNAME): msmtpd never changes it afterwards, and
    copying ``os.environ`` for every mail cost some 20 µs."""
    global _environment
    pid = os.getpid()
    if _environment[0] != pid:
        _environment = (pid, dict(os.environb))
    environment = dict(_environment[1])
    environment[b"MSMTPD_SENDER"] = os.fsencode(sender)
    return environment


def _null_device() -> int:
    """/dev/null, opened once per process, for the command's standard output
    (the queue runner's attempts may ask at once, each in its thread)."""
    global _devnull
    if _devnull < 0:
        fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        if _devnull < 0:
            _devnull = fd
        else:
            os.close(fd)  # another thread's came first
    return _devnull


class CommandProcess:
    """One run of the command: spawned by the constructor (OSError when it
    cannot be executed), with ``message`` (bytes, or a descriptor at the
    start of the message) on its standard input."""

    def __init__(self, argv: Sequence[str], environment: Environment,
                 message: Union[bytes, int]) -> None:
        seal_inherited_descriptors()
        self.status: Optional[int] = None  # the wait status, once reaped
        stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
        stdin_r = stdin_w = -1
        if isinstance(message, bytes):
            stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
        parents: List[int] = []  # descriptors of ours only the command keeps
        try:
            stdin = message if isinstance(message, int) else stdin_r
            sources = [_above_stdio(fd, parents) for fd in (stdin, _null_device(), stderr_w)]
            actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(sources)]
            spawn = os.posix_spawn if "/" in argv[0] else os.posix_spawnp
            self.pid = spawn(argv[0], list(argv), environment, file_actions=actions,
                             setsid=True, setsigdef=DEFAULT_SIGNALS, setsigmask=())
        except BaseException:
            for fd in (stderr_r, stdin_w):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (stderr_w, stdin_r, *parents):
                if fd >= 0:
                    os.close(fd)
        self.stderr = stderr_r
        self.stdin = stdin_w
        self.pending = memoryview(message if isinstance(message, bytes) else b"")
        self.pidfd = _pidfd(self.pid)

    def run(self, deadline: Optional[float], kept: bytearray,
            interrupt: Optional[Interrupt]) -> int:
        """Feed, read and wait until the command has exited and its stderr
        is closed (or EXIT_GRACE_SECONDS after its exit); its exit code
        (negative: the signal that killed it).  Raises TimedOut at
        ``deadline``, Interrupted when ``interrupt`` says so; the head of
        its stderr is in ``kept`` either way."""
        watch = _Watch(self, deadline, kept, interrupt)
        while watch.step():
            pass
        status = self.status if self.status is not None else _wait(self.pid, 0)
        self.status = status
        if status is None or status == LOST_STATUS:
            raise StatusLost()
        return os.waitstatus_to_exitcode(status)

    def kill(self) -> None:
        """Kill the command's whole process group and reap the command."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        if self.status is None:
            self.status = _wait(self.pid, 0)

    def close(self) -> None:
        for fd in (self.stderr, self.stdin, self.pidfd):
            if fd >= 0:
                os.close(fd)
        self.stderr = self.stdin = self.pidfd = -1


class _Watch:
    """One ``select.poll`` over the command's stderr, its pidfd, its stdin
    (a message given as bytes) and the worker's wake-up descriptor."""

    def __init__(self, process: CommandProcess, deadline: Optional[float], kept: bytearray,
                 interrupt: Optional[Interrupt]) -> None:
        self.process = process
        self.deadline = deadline
        self.kept = kept
        self.interrupt = interrupt
        self.exited_at: Optional[float] = None
        self.reading = True  # the command's stderr is open
        # When to ask the interrupt next: at once, then on a signal, and at
        # least every INTERRUPT_CHECK_SECONDS (not at each event of the pipes).
        self.ask_at = 0.0
        self.poll = select.poll()
        self.poll.register(process.stderr, select.POLLIN)
        if process.pidfd >= 0:
            self.poll.register(process.pidfd, select.POLLIN)
        if interrupt is not None:
            self.poll.register(interrupt.wake_fd, select.POLLIN)
        if process.stdin >= 0:
            if process.pending:
                os.set_blocking(process.stdin, False)
                self.poll.register(process.stdin, select.POLLOUT)
            else:
                self._close_stdin()

    def step(self) -> bool:
        """Wait once and act on what happened; False when it is over."""
        if not self.reading and self.exited_at is not None:
            return False
        now = self._check_limits()
        events = self.poll.poll(self._wait_ms(now))
        if not events:
            self.ask_at = 0.0  # a tick: the stop's grace may have run out
            return self._quiet()
        process = self.process
        for fd, _ in events:
            if fd == process.stderr:
                self._read_stderr()
            elif fd == process.stdin:
                self._feed()
            elif fd == process.pidfd:
                self.poll.unregister(fd)
                self.exited_at = time.monotonic()
            else:  # the wake-up descriptor: a signal, for interrupted() to look at
                self.ask_at = 0.0
        return True

    def _check_limits(self) -> float:
        """Raise when the command must end now; else the time."""
        now = time.monotonic()
        if self.interrupt is not None and now >= self.ask_at:
            reason = self.interrupt.interrupted()
            if reason is not None:
                raise Interrupted(reason)
            self.ask_at = now + INTERRUPT_CHECK_SECONDS
        if self.deadline is not None and now >= self.deadline:
            raise TimedOut()
        return now

    def _wait_ms(self, now: float) -> int:
        wait = MAX_WAIT_SECONDS if self.deadline is None else min(self.deadline - now, MAX_WAIT_SECONDS)
        if self.interrupt is not None:
            wait = min(wait, INTERRUPT_CHECK_SECONDS)
        if self.process.pidfd < 0:  # no pidfd (old kernel): look now and then
            wait = min(wait, EXIT_CHECK_SECONDS)
        if self.exited_at is not None:  # it exited: a little longer for its last words
            wait = min(wait, self.exited_at + EXIT_GRACE_SECONDS - now)
        return max(0, int(wait * 1000) + 1)  # rounded up: no spin just before a deadline

    def _quiet(self) -> bool:
        """Nothing happened within the wait; False once the exit's grace is over."""
        if self.exited_at is not None and time.monotonic() >= self.exited_at + EXIT_GRACE_SECONDS:
            return False  # a background child of the command holds stderr open
        process = self.process
        if process.pidfd < 0 and process.status is None:
            process.status = _wait(process.pid, os.WNOHANG)
            if process.status is not None:
                self.exited_at = time.monotonic()
        return True

    def _feed(self) -> None:
        process = self.process
        try:
            written = os.write(process.stdin, process.pending[:PIPE_CHUNK])
            process.pending = process.pending[written:]
        except BlockingIOError:
            return
        except OSError:  # EPIPE: the command does not read; its exit status will tell
            process.pending = process.pending[:0]
        if not process.pending:
            self._close_stdin()

    def _close_stdin(self) -> None:
        process = self.process
        try:
            self.poll.unregister(process.stdin)
        except KeyError:
            pass
        os.close(process.stdin)
        process.stdin = -1

    def _read_stderr(self) -> None:
        chunk = os.read(self.process.stderr, PIPE_CHUNK)
        if not chunk:
            self.poll.unregister(self.process.stderr)
            self.reading = False
        elif len(self.kept) < STDERR_KEEP:
            self.kept += chunk[: STDERR_KEEP - len(self.kept)]


def _above_stdio(fd: int, opened: List[int]) -> int:
    """``fd``, or a copy of it numbered 3 or more: a later dup2 onto 0, 1
    or 2 must not overwrite a source still to be copied."""
    if fd >= FIRST_INHERITABLE_FD:
        return fd
    import fcntl  # only for a process started with 0, 1 or 2 closed

    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FIRST_INHERITABLE_FD)
    opened.append(copy)
    return copy


def _pidfd(pid: int) -> int:
    """A descriptor that becomes readable when ``pid`` exits (Linux 5.3+), or -1."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return -1


def _wait(pid: int, options: int) -> Optional[int]:
    """The wait status of our child ``pid``; None while it runs (WNOHANG);
    LOST_STATUS when someone else reaped it (subprocess took that for
    exit status 0)."""
    try:
        reaped, status = os.waitpid(pid, options)
    except ChildProcessError:
        return LOST_STATUS
    return status if reaped else None
