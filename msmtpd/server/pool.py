"""The master's pool of workers: how many it wants, forking them, reading
their reports, letting surplus ones go, renewing them after a reload, and
taking note of one that ended.  Its records are the workers' rows of the
master's ChildTable; the rules it applies are in child_table and
system.supervision."""

from __future__ import annotations

import mmap
import os
import signal
import socket
import time

from msmtpd.base.config import is_number
from msmtpd.base.exit_codes import EXIT_NOT_RUNNING
from msmtpd.base.logger import ERROR, INFO, log
from msmtpd.server.child_table import (
    BOOT_FAILED,
    RETIRED,
    WORKER,
    Child,
    ChildTable,
    SurplusTimer,
    parse_reports,
    worker_ending,
)
from msmtpd.server.service import Service
from msmtpd.server.worker import BUSY, IDLE, IDLE_TITLE, Worker
from msmtpd.system.processes import fork_child, kill
from msmtpd.system.supervision import Backoff, exit_text

TYPE_CHECKING = False  # typing at run time costs every process some 1.6 MB and 3 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Callable, Iterable, List

WORKER_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2}


class Halt(Exception):
    """The master must stop; ``str()`` is the reason and ``code`` the exit status."""

    def __init__(self, reason: str, code: int = EXIT_NOT_RUNNING) -> None:
        super().__init__(reason)
        self.code = code


class WorkerPool:
    """The workers of one master.  ``scoreboard`` is shared with all of
    them, one byte per slot: busy or idle.  They report on the status pipe:
    ``ready PID``, ``busy PID`` (which wakes the master: the pool may need a
    spare) or ``error PID why``."""

    def __init__(self, service: Service, sockets: List[socket.socket], children: ChildTable) -> None:
        self.service = service
        self.config = service.config
        self.sockets = sockets
        self.children = children
        self.scoreboard = mmap.mmap(-1, self.config.max_sessions)
        self.backoff = Backoff()
        self.surplus = SurplusTimer()
        self.status_r, self.status_w = os.pipe()
        os.set_blocking(self.status_r, False)
        # A worker never waits on a full pipe (a master busy stopping): a
        # lost "busy" report costs nothing, the next loop looks anyway.
        os.set_blocking(self.status_w, False)
        self.status_buffer = b""

    def busy(self) -> int:
        return self.scoreboard[:].count(BUSY)

    def wanted(self) -> int:
        """Workers for the sessions running plus --spare-workers idle ones,
        at most --max-sessions: the pool grows the moment spares are taken
        (a worker reports "busy" on the status pipe, which wakes us)."""
        return min(self.config.max_sessions, self.busy() + self.config.spare_workers)

    def spawn_missing(self, private: Callable[[], Iterable[int]]) -> None:
        """Fork workers up to what is wanted, unless the back-off holds
        them; ``private`` names the master's descriptors a worker closes."""
        if not self.backoff.may_start():
            return
        while len(self.children.workers()) < self.wanted():
            self._spawn([self.status_r, *private()])

    def _spawn(self, close: List[int]) -> None:
        slot = self.children.free_slot(self.config.max_sessions)
        self.scoreboard[slot] = IDLE
        worker = Worker(self.service, self.sockets, os.getpid(), self.status_w,
                        self.config.user, self.scoreboard, slot)
        pid = fork_child(WORKER_SIGNALS, close, IDLE_TITLE, worker.run)
        self.children.add(Child(pid, WORKER, time.monotonic(), slot))

    def read_status(self) -> None:
        """Note the workers that report ready; Halt on one that cannot start."""
        try:
            while True:
                chunk = os.read(self.status_r, 4096)
                if not chunk:
                    break
                self.status_buffer += chunk
        except BlockingIOError:
            pass
        reports, self.status_buffer = parse_reports(self.status_buffer)
        for kind, pid_text, why in reports:
            if kind == "error":
                raise Halt(why or f"worker {pid_text} could not start")
            if kind == "ready" and is_number(pid_text):
                self.children.mark_booted(int(pid_text))
            # "busy PID" needs nothing more: it woke the loop, which grows the pool.

    def let_surplus_go(self) -> None:
        """Idle workers beyond the spares, for SURPLUS_IDLE_SECONDS, leave
        (SIGUSR2: a worker that has just taken a session finishes it first)."""
        idle = self.children.idle_workers(lambda slot: self.scoreboard[slot] == IDLE)
        for child in idle[:self.surplus.due(len(idle), self.config.spare_workers)]:
            self.retire(child)

    def renew(self) -> None:
        """New workers get what SIGHUP re-read; each old one leaves when its
        session is over."""
        log.info("renewing the workers", event="workers_renewed")
        for child in self.children.workers():
            self.retire(child)

    def retire(self, child: Child) -> None:
        """The worker leaves once its session (if any) is over."""
        child.retiring = True
        kill(child.pid, signal.SIGUSR2)

    def signal(self, signum: int) -> None:
        for child in self.children.workers():
            kill(child.pid, signum)

    def ended(self, child: Child, status: int, stopping: bool) -> bool:
        """Take note of a reaped worker; True when it died unasked (its
        delivery command, if any, must be ended).  Halt on a boot error."""
        self.scoreboard[child.slot] = IDLE
        if stopping:
            return False
        code = os.waitstatus_to_exitcode(status)
        ending = worker_ending(child, code)
        if ending == RETIRED:
            return False  # replaced by one with the new settings, or not at all
        if ending == BOOT_FAILED:
            self.read_status()
            raise Halt(f"worker {child.pid} could not start")
        # Status 0 is a worker stopped from outside (SIGTERM sent to the
        # whole group), not a crash; it is replaced all the same.
        log.log(INFO if code == 0 else ERROR,
                "worker %d ended (%s); replacing it", child.pid, exit_text(code),
                event="worker_ended", worker_pid=child.pid, status=exit_text(code))
        self.backoff.ended(child.died_young(code, time.monotonic()))
        return True
