"""The master's side of ``--queue``: it keeps one queue runner alive,
passes it signals, and knows whether the queue still holds mail."""

from __future__ import annotations

import os
import signal
import time
from typing import Callable, Iterable, Optional

from msmtpd.base.config import Config
from msmtpd.base.logger import log
from msmtpd.delivery.pipe_command import PipeCommand
from msmtpd.system.processes import fork_child, kill

RUNNER_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}
# A runner that dies sooner than this after its start is replaced after
# 0.1 s, 0.2 s, 0.4 s ... up to MAX_RESPAWN_DELAY, not in a tight loop.
YOUNG_DEATH_SECONDS = 5.0
MAX_RESPAWN_DELAY = 10.0


class RunnerKeeper:
    """One queue runner, replaced when it dies; nothing without --queue."""

    def __init__(self, config: Config, command: PipeCommand) -> None:
        self.config = config
        self.command = command
        self.pid: Optional[int] = None
        self.started = 0.0
        self.deaths = 0
        self.next_spawn = 0.0

    def keep_alive(self, inherited: Callable[[], Iterable[int]]) -> None:
        """Start a runner if there should be one; ``inherited`` names the
        master's descriptors the runner must close."""
        queue = self.config.queue
        if queue is None or self.pid is not None or time.monotonic() < self.next_spawn:
            return
        from msmtpd.delivery.queue_runner import run_runner

        config, master = self.config, os.getpid()
        self.pid = fork_child(RUNNER_SIGNALS, inherited(), lambda: run_runner(
            queue, self.command, config.command_timeout, config.queue_lifetime,
            config.queue_workers, config.timeout, config.user, master))
        self.started = time.monotonic()

    def signal(self, signum: int) -> None:
        if self.pid is not None:
            kill(self.pid, signum)

    def ended(self, status: int, stopping: bool) -> None:
        """Reaped.  The caller must end the commands of its deliveries
        before a new runner may take their mails again."""
        self.pid = None
        if stopping:
            return
        code = os.waitstatus_to_exitcode(status)
        how = f"exit status {code}" if code >= 0 else f"signal {-code}"
        log.error("queue runner ended (%s); replacing it", how)
        if time.monotonic() - self.started < YOUNG_DEATH_SECONDS:
            self.deaths += 1
            self.next_spawn = time.monotonic() + min(0.1 * 2 ** (self.deaths - 1), MAX_RESPAWN_DELAY)
        else:
            self.deaths = 0

    def queue_holds_mail(self) -> bool:
        """With --idle-exit a pool stays while its queue has mail to deliver."""
        if self.config.queue is None:
            return False
        try:
            return any(name.endswith(".env") for name in os.listdir(self.config.queue))
        except OSError:
            return False
