"""``--queue-list`` and ``--queue-flush``: looking at and pushing the queue
from the command line (cron, a systemd timer, a person).

``--queue-flush`` asks the daemon running on DIR when there is one (a
runner holds DIR's runner lock and reads the wake-up FIFO: we write the
byte that means "try everything now", and wait, bounded, until every mail
queued at that moment has had an attempt since); otherwise it tries each
queued mail once itself, respecting the per-mail locks, as ``--user`` or,
run by root without it, as DIR's owner.  No pid is read from DIR and no
process is signalled: DIR is writable by the sessions' user.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import signal
import stat
import sys
import time
from typing import List, Optional, Tuple

from msmtpd.base.config import Config, ConfigError
from msmtpd.base.exit_codes import EXIT_OK, EXIT_TEMPFAIL
from msmtpd.base.safe_files import UnsafeFile, open_checked, queue_file
from msmtpd.delivery.queue_directory import (
    FLUSH,
    LIST,
    RUNNER_LOCK,
    WAKE_FLUSH,
    QueueError,
    check_directory,
    delivery_user,
)
from msmtpd.delivery.queue_envelope import QueuedEnvelope, encode_value, iso_time
from msmtpd.delivery.queue_store import Queue

# The most a flush through the daemon waits, whatever the queue holds.
MAX_FLUSH_WAIT_SECONDS = 3600.0
FLUSH_POLL_SECONDS = 0.1
# How long a flush keeps trying to write its byte into a full FIFO.
ASK_SECONDS = 2.0


def run_queue_command(config: Config) -> int:
    assert config.queue is not None
    try:
        owner = check_directory(config.queue, config.user, LIST if config.queue_list else FLUSH)
    except QueueError as exc:
        raise ConfigError(str(exc)) from None
    queue = Queue(config.queue, owner)
    try:
        queue.ids()
    except OSError as exc:
        raise ConfigError(f"cannot read queue {config.queue}:"
                          f" {exc if isinstance(exc, UnsafeFile) else exc.strerror or exc}") from None
    if config.queue_list:
        return list_queue(queue, config.queue_rate)
    return flush_queue(queue, config)


def _age(seconds: float) -> str:
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def describe(mail_id: str, envelope: QueuedEnvelope, now: float, failed: bool,
             paced: bool = False) -> str:
    """One mailq-like line: id, state, age, sender -> recipients, attempts,
    next try, last error (all escaped as in the envelope file).  ``paced``:
    --queue-rate allows no delivery now, so a due mail waits its turn."""
    recipients = ", ".join(f"<{encode_value(r)}>" for r in envelope.recipients)
    if failed:
        state = f"failed: {encode_value(envelope.failed)}"
    elif envelope.next_try <= now:
        state = "next try: waiting for the rate" if paced else "next try: now"
    else:
        state = f"next try: in {_age(envelope.next_try - now)} ({iso_time(envelope.next_try)})"
    error = f"; last error: {encode_value(envelope.last_error)}" if envelope.last_error else ""
    return (f"{mail_id} {'failed' if failed else 'queued'} age {_age(now - envelope.arrived)}"
            f" {envelope.size} octets <{encode_value(envelope.sender)}> -> {recipients};"
            f" attempts {envelope.attempts}; {state}{error}")


def list_queue(queue: Queue, rate: Optional[Tuple[int, float]] = None) -> int:
    now = time.time()
    lines: List[str] = []
    from msmtpd.delivery.queue_pace import waiting_for_the_rate

    assert queue.owner is not None
    paced = waiting_for_the_rate(queue.directory, queue.owner, rate, now)
    for failed in (False, True):
        try:
            lines += [describe(i, e, now, failed, paced) if isinstance(e, QueuedEnvelope)
                      else f"{i} {'failed' if failed else 'queued'} {encode_value(e)}"
                      for i, e in queue.entries(failed)]
        except FileNotFoundError:
            continue  # no failed/ yet
        except UnsafeFile as exc:
            lines.append(f"refused: {encode_value(str(exc))}; never read")
    sys.stdout.write("".join(line + "\n" for line in lines) if lines else "Mail queue is empty\n")
    sys.stdout.flush()
    return EXIT_OK


def daemon_runs(queue: Queue) -> bool:
    """Whether a runner holds DIR's runner lock (a regular file of DIR's
    owner, opened without following a link: it is only locked, never
    trusted for a pid)."""
    try:
        fd = open_checked(os.path.join(queue.directory, RUNNER_LOCK), os.O_RDONLY,
                          queue_file(stat.S_IFREG, queue.owner), label=RUNNER_LOCK)
    except UnsafeFile as exc:
        _warn(f"queue {queue.directory}: {exc}; ignored")
        return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False  # nobody holds it: no daemon
    except OSError:
        return True
    finally:
        os.close(fd)


def ask_daemon(queue: Queue) -> bool:
    """Write "try everything now" into the runner's FIFO; False when no
    runner reads it."""
    try:
        fd = queue.open_wake_fifo()
    except UnsafeFile as exc:
        _warn(f"queue {queue.directory}: {exc}; ignored")
        return False
    except OSError:
        return False  # ENXIO: nobody reads the FIFO
    deadline = time.monotonic() + ASK_SECONDS
    try:
        while True:
            try:
                return os.write(fd, WAKE_FLUSH) == 1
            except OSError as exc:
                if exc.errno != errno.EAGAIN or time.monotonic() > deadline:
                    return False
                time.sleep(FLUSH_POLL_SECONDS)
    finally:
        os.close(fd)


def _warn(message: str) -> None:
    sys.stderr.write(f"msmtpd: {message}\n")
    sys.stderr.flush()


def flush_queue(queue: Queue, config: Config) -> int:
    if daemon_runs(queue):
        asked = time.time()
        waiting = set(queue.ids())
        if ask_daemon(queue):
            return _wait_for_daemon(queue, config, asked, waiting)
    return _flush_here(queue, config)


def _remaining(queue: Queue) -> int:
    return len(queue.ids())


def _wait_for_daemon(queue: Queue, config: Config, asked: float, waiting: set[str]) -> int:
    """Until every mail queued when we asked has had an attempt since
    (delivered, failed, or tried), bounded."""
    rounds = math.ceil(len(waiting) / max(config.queue_workers, 1)) or 1
    deadline = time.monotonic() + min(MAX_FLUSH_WAIT_SECONDS,
                                      rounds * config.command_timeout + 10)
    while waiting and time.monotonic() < deadline:
        for mail_id in list(waiting):
            envelope = queue.envelope(mail_id)
            if envelope is None or envelope.last_try >= asked:
                waiting.discard(mail_id)  # delivered, failed, or tried since we asked
        time.sleep(FLUSH_POLL_SECONDS)
    return EXIT_OK if _remaining(queue) == 0 else EXIT_TEMPFAIL


def _flush_here(queue: Queue, config: Config) -> int:
    from msmtpd.delivery.pipe_command import PipeCommand
    from msmtpd.delivery.queue_attempts import Attempts

    try:
        command = PipeCommand(config.command)
    except ValueError as exc:
        raise ConfigError(f"invalid --command: {exc}") from None
    if config.log != "none":
        from msmtpd.base import log_targets

        try:
            log_targets.install(log_targets.open_handler(config.log, config.log_format))
        except OSError as exc:
            raise ConfigError(f"cannot open log file {config.log}: {exc.strerror}") from None
    assert queue.owner is not None
    try:
        user = delivery_user(config.user, queue.owner)  # root never delivers from another's DIR
    except QueueError as exc:
        raise ConfigError(str(exc)) from None
    if user is not None:
        from msmtpd.delivery.queue_envelope import QUEUE_LATE_MODULES
        from msmtpd.system import privileges

        privileges.drop(user, QUEUE_LATE_MODULES)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    attempts = Attempts(queue, command, config.command_timeout, config.queue_lifetime,
                        config.queue_workers)
    pace = None
    if config.queue_rate is not None:  # the daemon's pace, in DIR: this flush keeps it
        from msmtpd.delivery.queue_pace import PaceFile

        pace = PaceFile(queue.directory, queue.owner, *config.queue_rate, time.time())
    for mail_id in queue.ids():
        while attempts.full:
            attempts.wait_all(time.monotonic() + 0.05)
        if pace is not None:
            if not pace.pace.free(time.time()):
                break  # the rest wait for their turn (exit 75)
            pace.record(time.time())
        attempts.start(mail_id, force=True)
    attempts.wait_all(float("inf"))
    return EXIT_OK if _remaining(queue) == 0 else EXIT_TEMPFAIL
