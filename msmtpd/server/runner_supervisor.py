"""The master's side of ``--queue``: it keeps one queue runner alive (its
record in the master's ChildTable), passes it signals, and knows whether
the queue still holds mail."""

from __future__ import annotations

import os
import signal
import time

from msmtpd.base.config import Config
from msmtpd.base.logger import log
from msmtpd.delivery.pipe_command import PipeCommand
from msmtpd.server.child_table import RUNNER, Child, ChildTable
from msmtpd.system.processes import fork_child, kill
from msmtpd.system.supervision import Backoff, exit_text

TYPE_CHECKING = False  # typing at run time costs every process some 1.6 MB and 3 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Optional

RUNNER_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}


class RunnerSupervisor:
    """One queue runner, replaced when it dies; nothing without --queue."""

    def __init__(self, config: Config, command: PipeCommand, children: ChildTable,
                 counters: Any = None) -> None:
        self.config = config
        self.command = command
        self.children = children
        self.counters = counters  # --metrics: the runner counts its deliveries
        self.backoff = Backoff()

    @property
    def pid(self) -> Optional[int]:
        child = self.children.runner()
        return None if child is None else child.pid

    def keep_alive(self, inherited: Callable[[], Iterable[int]]) -> None:
        """Start a runner if there should be one; ``inherited`` names the
        master's descriptors the runner must close."""
        queue = self.config.queue
        if queue is None or self.pid is not None or not self.backoff.may_start():
            return
        from msmtpd.delivery.queue_runner import run_runner

        config, master = self.config, os.getpid()
        pid = fork_child(RUNNER_SIGNALS, inherited(), f"queue runner {queue}", lambda: run_runner(
            queue, self.command, config.command_timeout, config.queue_lifetime,
            config.queue_workers, config.timeout, config.user, master, self.counters,
            config.queue_rate))
        self.children.add(Child(pid, RUNNER, time.monotonic()))

    def signal(self, signum: int) -> None:
        if self.pid is not None:
            kill(self.pid, signum)

    def ended(self, child: Child, status: int) -> None:
        """Reaped while serving (its record is gone from the table).  The
        caller must end the commands of its deliveries before a new runner
        may take their mails again."""
        code = os.waitstatus_to_exitcode(status)
        log.error("queue runner ended (%s); replacing it", exit_text(code), event="runner_ended",
                  status=exit_text(code))
        self.backoff.ended(child.died_young(code, time.monotonic()))

    def queue_holds_mail(self) -> bool:
        """With --idle-exit a pool stays while its queue has mail to deliver."""
        if self.config.queue is None:
            return False
        try:
            return any(name.endswith(".env") for name in os.listdir(self.config.queue))
        except OSError:
            return False
