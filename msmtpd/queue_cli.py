"""``--queue-list`` and ``--queue-flush``: looking at and pushing the queue
from the command line (cron, a systemd timer, a person).

``--queue-flush`` asks the daemon running on DIR when there is one (the
process holding DIR's runner lock gets SIGUSR1, and we wait, bounded, until
every mail queued at that moment has had an attempt since); otherwise it
tries each queued mail once itself, respecting the per-mail locks.
"""

from __future__ import annotations

import fcntl
import math
import os
import signal
import sys
import time
from typing import List, Optional

from msmtpd.config import Config, ConfigError
from msmtpd.queue_store import RUNNER_LOCK, Envelope, Queue, escape, iso_time

EXIT_EMPTY = 0
EXIT_REMAINING = 75  # EX_TEMPFAIL: mails are still queued
# The most a flush through the daemon waits, whatever the queue holds.
MAX_FLUSH_WAIT_SECONDS = 3600.0
FLUSH_POLL_SECONDS = 0.1


def run_queue_command(config: Config) -> int:
    assert config.queue is not None
    queue = Queue(config.queue)
    try:
        queue.ids()
    except OSError as exc:
        raise ConfigError(f"cannot read queue {config.queue}: {exc.strerror}") from None
    if config.queue_list:
        return list_queue(queue)
    return flush_queue(queue, config)


def _age(seconds: float) -> str:
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def describe(mail_id: str, envelope: Envelope, now: float, failed: bool) -> str:
    """One mailq-like line: id, state, age, sender -> recipients, attempts,
    next try, last error (all escaped as in the envelope file)."""
    recipients = ", ".join(f"<{escape(r)}>" for r in envelope.recipients)
    if failed:
        state = f"failed: {escape(envelope.failed)}"
    elif envelope.next_try <= now:
        state = "next try: now"
    else:
        state = f"next try: in {_age(envelope.next_try - now)} ({iso_time(envelope.next_try)})"
    error = f"; last error: {escape(envelope.last_error)}" if envelope.last_error else ""
    return (f"{mail_id} {'failed' if failed else 'queued'} age {_age(now - envelope.arrived)}"
            f" {envelope.size} octets <{escape(envelope.sender)}> -> {recipients};"
            f" attempts {envelope.attempts}; {state}{error}")


def list_queue(queue: Queue) -> int:
    now = time.time()
    lines: List[str] = []
    for failed in (False, True):
        try:
            lines += [describe(i, e, now, failed) if isinstance(e, Envelope)
                      else f"{i} {'failed' if failed else 'queued'} unreadable envelope: {escape(e)}"
                      for i, e in queue.entries(failed)]
        except FileNotFoundError:
            continue  # no failed/ yet
    sys.stdout.write("".join(line + "\n" for line in lines) if lines else "Mail queue is empty\n")
    sys.stdout.flush()
    return 0


def runner_pid(queue: Queue) -> Optional[int]:
    """The pid of the runner that holds DIR's runner lock, if one does."""
    try:
        fd = os.open(os.path.join(queue.directory, RUNNER_LOCK), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.read(fd, 32).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else None
        return None  # nobody holds it: no daemon
    finally:
        os.close(fd)


def flush_queue(queue: Queue, config: Config) -> int:
    pid = runner_pid(queue)
    if pid is not None:
        return _flush_through_daemon(queue, config, pid)
    return _flush_here(queue, config)


def _remaining(queue: Queue) -> int:
    return len(queue.ids())


def _flush_through_daemon(queue: Queue, config: Config, pid: int) -> int:
    asked = time.time()
    waiting = set(queue.ids())
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError as exc:
        raise ConfigError(f"cannot signal the queue runner {pid}: {exc.strerror}") from None
    rounds = math.ceil(len(waiting) / max(config.queue_workers, 1)) or 1
    deadline = time.monotonic() + min(MAX_FLUSH_WAIT_SECONDS,
                                      rounds * config.command_timeout + 10)
    while waiting and time.monotonic() < deadline:
        for mail_id in list(waiting):
            envelope = queue.envelope(mail_id)
            if envelope is None or envelope.last_try >= asked:
                waiting.discard(mail_id)  # delivered, failed, or tried since we asked
        time.sleep(FLUSH_POLL_SECONDS)
    return EXIT_EMPTY if _remaining(queue) == 0 else EXIT_REMAINING


def _flush_here(queue: Queue, config: Config) -> int:
    from msmtpd.delivery import PipeCommand
    from msmtpd.queue_runner import Attempts

    try:
        command = PipeCommand(config.command)
    except ValueError as exc:
        raise ConfigError(f"invalid --command: {exc}") from None
    if config.log != "none":
        from msmtpd import logs

        try:
            logs.install(logs.open_handler(config.log))
        except OSError as exc:
            raise ConfigError(f"cannot open log file {config.log}: {exc.strerror}") from None
    if config.user is not None:
        from msmtpd import privileges
        from msmtpd.queue_store import QUEUE_LATE_MODULES

        privileges.drop(config.user, QUEUE_LATE_MODULES)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    attempts = Attempts(queue, command, config.command_timeout, config.queue_lifetime,
                        config.queue_workers)
    for mail_id in queue.ids():
        while attempts.full:
            attempts.wait_all(time.monotonic() + 0.05)
        attempts.start(mail_id, force=True)
    attempts.wait_all(float("inf"))
    return EXIT_EMPTY if _remaining(queue) == 0 else EXIT_REMAINING
