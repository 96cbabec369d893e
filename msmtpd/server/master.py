"""The master process: binds, (optionally) daemonises, forks a bounded pool
of workers (server.pool) and a queue runner (server.runner_supervisor),
and supervises them, each child one record in a ChildTable.

Signal handlers only record the signal (system.signal_inbox); the main
loop dispatches ``handle_<signal>``.  Dead workers are reaped with ``waitpid(-1, WNOHANG)``
in a loop and replaced, with a back-off when they die right after start; a
worker that cannot start at all halts the master.  Shutdown is staged:
stop accepting, SIGTERM each worker once, let sessions and delivery
commands finish within the grace time (``--timeout``; the workers end
their own commands when it runs out), then SIGKILL what is left and every
delivery command it leaves behind, and leave only when no child is left.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import sys
import time

from msmtpd.base.config import Config, ConfigError
from msmtpd.base.logger import log
from msmtpd.net import unix_socket
from msmtpd.net.listeners import describe, warn_if_open
from msmtpd.server.child_table import RUNNER, Child, ChildTable
from msmtpd.server.pool import Halt, WorkerPool
from msmtpd.server.reload import reload_settings
from msmtpd.server.runner_supervisor import RunnerSupervisor
from msmtpd.server.service import Service, prepare
from msmtpd.system import privileges
from msmtpd.system.pidfile import PidFile
from msmtpd.system.processes import become_subreaper, is_zombie, kernel_children, kill, reaped
from msmtpd.system.proctitle import set_title
from msmtpd.system.signal_inbox import SignalInbox
from msmtpd.system.supervision import STOP_MARGIN_SECONDS
from msmtpd.system.systemd import Status

TYPE_CHECKING = False  # typing at run time costs every process some 1.6 MB and 3 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Any, List, Optional

# How long the workers may take to report that they are up.
BOOT_TIMEOUT = 30.0
# Time granted after SIGKILL for the kernel to let the workers go.
KILL_WAIT = 5.0

# SIGUSR1 (--queue): retry the queued mails now.
MASTER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1)


class Master:
    """The supervisor: its loop, its signals, its children's ends, the stop."""

    def __init__(self, service: Service, sockets: List[socket.socket],
                 pidfile: Optional[PidFile], ready_fd: Optional[int] = None,
                 metrics: Any = None) -> None:
        self.service = service
        self.config: Config = service.config
        self.sockets = sockets
        self.pidfile = pidfile
        self.ready_fd = ready_fd
        self.children = ChildTable()  # the workers and the queue runner
        self.pool = WorkerPool(service, sockets, self.children)
        self.inbox: SignalInbox  # made in run(), with the handlers
        self.stopping = False
        self.status = Status(self.config.max_sessions)
        self.last_busy = time.monotonic()
        counters = service.settings.counters
        self.runner = RunnerSupervisor(self.config, service.command, self.children,
                                       counters)  # --queue
        # --metrics: its HTTP endpoint, served in this loop (net.metrics_http)
        self.metrics = metrics
        if metrics is not None:
            from msmtpd.server.metrics_source import MetricsSource

            metrics.render = MetricsSource(self.config, counters, self.pool)

    # -- life cycle -------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        become_subreaper()
        if self.pidfile is not None:
            self.pidfile.write(os.getpid())
        set_title(f"master {describe(self.sockets)}")
        try:
            gc.collect()
            gc.freeze()  # keep the pages the workers inherit shared
            self._spawn_missing()
            self._keep_runner()
            self._wait_for_boot()
            self._notify_ready("ready")
            self.status.ready()
            log.info("listening on %s with %d workers ready, up to %d", describe(self.sockets),
                     self.pool.wanted(), self.config.max_sessions, event="start",
                     listening=describe(self.sockets), workers=self.pool.wanted(),
                     max_sessions=self.config.max_sessions)
            warn_if_open(self.config, self.sockets)
            self.last_busy = time.monotonic()
            while True:
                self._loop_once()
        except Halt as halt:
            message = str(halt)
            if message:
                log.error("%s", message, event="halt", error=message)
                self._notify_ready(f"error {message}")
                if self.ready_fd is None and halt.code:
                    sys.stderr.write(f"msmtpd: {message}\n")
            self._stop_workers(graceful=False)
            return halt.code
        finally:
            # The last stage of the stop: no worker is left to accept.
            unix_socket.remove_all()
            if self.metrics is not None:
                self.metrics.close()
            if self.pidfile is not None:
                self.pidfile.remove()

    def _loop_once(self) -> None:
        if self.inbox.dispatch(at_most=1):
            return
        self._sleep(1.0)
        self.pool.read_status()
        self.reap()
        self._spawn_missing()
        self._keep_runner()
        self.pool.let_surplus_go()
        self._watch_sessions()

    def _watch_sessions(self) -> None:
        """Report the sessions in use; with --idle-exit, leave once none ran
        for that long (the socket stays with systemd or inetd, which start
        msmtpd again for the next client)."""
        busy = self.pool.busy()
        self.status.sessions(busy)
        now = time.monotonic()
        if busy or select.select(self.sockets, [], [], 0)[0]:
            self.last_busy = now
        elif (self.config.idle_exit is not None and now - self.last_busy >= self.config.idle_exit
              and not self.runner.queue_holds_mail()):
            log.info("no session for %g s: exiting until the next connection", self.config.idle_exit,
                     event="idle_exit", seconds=self.config.idle_exit)
            self.status.stopping()
            self._stop_workers(graceful=True)
            raise Halt("", 0)

    def _install_signals(self) -> None:
        self.inbox = SignalInbox(self, MASTER_SIGNALS)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # meant for workers: it renews them

    def _sleep(self, seconds: float) -> None:
        try:
            # While stopping, late status reports are of no interest: watching
            # that pipe without reading it would spin.
            wake_fd = self.inbox.wake_fd
            watch = [wake_fd] if self.stopping else [wake_fd, self.pool.status_r]
            metrics, writers = self.metrics, []
            if metrics is not None:
                watch, writers = [*watch, *metrics.readers()], metrics.writers()
                seconds = metrics.wait(seconds)
            ready, writable, _ = select.select(watch, writers, [], seconds)
        except InterruptedError:
            return
        if wake_fd in ready:
            self.inbox.drain()
        if metrics is not None:
            metrics.serve(ready, writable)

    # -- signals ----------------------------------------------------------

    def handle_chld(self) -> None:
        self.reap()

    def handle_hup(self) -> None:
        from msmtpd.base import log_targets

        self.status.reloading()
        log.info("reopening the log", event="reload")
        log_targets.reopen()
        try:
            _hand_log_to_user(self.config, self.service.log_handler)
        except ConfigError as exc:
            log.error("%s", exc, event="reload_failed", error=str(exc))
        self.pool.signal(signal.SIGHUP)
        self.runner.signal(signal.SIGHUP)
        if reload_settings(self.config, self.service.settings):
            self.pool.renew()
        self.status.reloaded()

    def handle_term(self) -> None:
        self.status.stopping()
        log.info("stopping: letting running sessions finish", event="stop")
        self._stop_workers(graceful=True)
        raise Halt("", 0)

    handle_int = handle_term

    # -- workers ----------------------------------------------------------

    def reap(self) -> None:
        """Take note of every child that ended (the loop replaces them)."""
        if not self.stopping:
            self.pool.read_status()  # know which of the dead had reported ready
        for pid, status in reaped():
            child = self.children.pop(pid)
            if child is None:
                continue  # an orphan we adopted as subreaper, now reaped
            if child.kind == RUNNER:
                self._runner_ended(child, status)
            elif self.pool.ended(child, status, self.stopping):
                self._end_orphaned_commands()

    def _runner_ended(self, child: Child, status: int) -> None:
        if not self.stopping:
            self.runner.ended(child, status)
            self._end_orphaned_commands("its queue runner died")

    def _end_orphaned_commands(self, why: str = "its worker died before answering") -> int:
        """A delivery command whose worker died is now our child (we are its
        subreaper).  Nobody will acknowledge its mail, so it must not go on
        to deliver it: kill its process group.  A command leads its own
        group (``start_new_session``); other adopted processes, left in the
        background by finished commands, are only reaped.  Returns how
        many commands were killed (and are still to be reaped)."""
        killed = 0
        for pid in kernel_children():
            if pid in self.children or is_zombie(pid):
                continue  # a command that already finished is merely reaped
            try:
                if os.getpgid(pid) != pid:
                    continue
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                continue
            killed += 1
            log.error("ended delivery command %d: %s", pid, why, event="command_killed",
                      command_pid=pid, reason=why)
        return killed

    def _spawn_missing(self) -> None:
        if not self.stopping:
            self.pool.spawn_missing(lambda: [*self.inbox.fds(), *self._private_fds()])

    def _wait_for_boot(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while self.children.booted_workers() < self.pool.wanted():
            if time.monotonic() > deadline:
                raise Halt("workers did not start in time")
            self._sleep(0.05)
            self.pool.read_status()
            self.inbox.dispatch(at_most=1)
            self.reap()  # a worker killed while it boots is replaced, not waited for
            self._spawn_missing()

    def _stop_workers(self, graceful: bool) -> None:
        """Stop accepting, SIGTERM each worker once, wait for the grace time
        and the margin in which workers end their own commands, then
        SIGKILL; leave no delivery command behind."""
        self.stopping = True
        for sock in self.sockets:
            sock.close()
        self.pool.signal(signal.SIGTERM)
        self.runner.signal(signal.SIGTERM)
        grace = self.config.timeout + STOP_MARGIN_SECONDS if graceful else 1.0
        deadline = time.monotonic() + grace
        while self.children and time.monotonic() < deadline:
            self._sleep(0.05)
            self.reap()
        for child in self.children.workers():
            log.error("worker %d did not stop in time; killing it", child.pid,
                      event="worker_killed", worker_pid=child.pid)
            kill(child.pid, signal.SIGKILL)
        if self.runner.pid is not None:
            log.error("queue runner %d did not stop in time; killing it", self.runner.pid,
                      event="runner_killed", runner_pid=self.runner.pid)
            self.runner.signal(signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT
        while time.monotonic() < deadline:
            self.reap()
            left = self._end_orphaned_commands("msmtpd is stopping and its worker is gone")
            if not self.children and not left:
                break
            self._sleep(0.05)

    # -- the queue runner (--queue) -----------------------------------------

    def handle_usr1(self) -> None:
        """Retry every queued mail now: the runner does it."""
        if self.runner.pid is not None:
            log.info("SIGUSR1: asking the queue runner to try every queued mail now",
                     event="queue_flush")
            self.runner.signal(signal.SIGUSR1)

    def _keep_runner(self) -> None:
        if not self.stopping:
            self.runner.keep_alive(lambda: [
                *self.inbox.fds(), self.pool.status_r, self.pool.status_w,
                *(sock.fileno() for sock in self.sockets), *self._private_fds()])

    def _private_fds(self) -> List[int]:
        """What no child may keep: the readiness pipe and the pid file."""
        fds = [] if self.ready_fd is None else [self.ready_fd]
        if self.metrics is not None:
            fds += self.metrics.fds()
        if self.pidfile is not None and self.pidfile.fd is not None:
            fds.append(self.pidfile.fd)
        return fds

    def _notify_ready(self, message: str) -> None:
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, (message + "\n").encode("utf-8", "replace"))
            os.close(self.ready_fd)
        except OSError:
            pass
        self.ready_fd = None


def _hand_log_to_user(config: Config, handler: Any) -> None:
    """A log file created by root must stay writable for the workers: the
    open file is handed over (by descriptor; see privileges.hand_over).
    Raises ConfigError when the file is not one to hand over."""
    descriptor = getattr(handler, "descriptor", None)
    if config.user is not None and descriptor is not None:
        fd = descriptor()
        if fd is not None:
            privileges.hand_over(fd, config.user)


def run_master(config: Config, sockets: List[socket.socket], tls_context: Any = None) -> int:
    """Check, lock the pid file, then serve on the bound ``sockets`` (in the
    background with --daemon).  Every start-up error still reaches the
    terminal: nothing has detached yet."""
    try:
        return _start(config, sockets, tls_context)
    except BaseException:
        unix_socket.remove_all()  # a start that failed leaves no socket file behind
        raise
    finally:
        for sock in sockets:
            sock.close()


def _start(config: Config, sockets: List[socket.socket], tls_context: Any) -> int:
    if config.user is not None:
        privileges.resolve(config.user)
    shared: Any = None
    if config.auth_user is not None or config.auth_file is not None:
        import multiprocessing

        shared = multiprocessing.get_context("fork").Value("d", 0.0)
    counters: Any = None
    if config.metrics is not None:
        from msmtpd.base.metrics import Counters

        counters = Counters(config.max_sessions + 1)  # a slot per worker, the last the runner's
    service = prepare(config, shared, tls_context, counters)
    _hand_log_to_user(config, service.log_handler)
    pidfile = None
    if config.pidfile is not None:
        pidfile = PidFile(config.pidfile)
        pidfile.acquire()
    metrics = None
    if counters is not None:
        from msmtpd.server.metrics_source import open_endpoint

        metrics = open_endpoint(config)  # bound now: an error still reaches the terminal
    if config.daemon:
        from msmtpd.system.daemonize import run_detached

        return run_detached(
            lambda ready_fd: Master(service, sockets, pidfile, ready_fd, metrics).run(),
            keep=[*sockets, pidfile.fd if pidfile else None, service.log_handler,
                  metrics.listener if metrics else None, service.settings.rate_limit],
            log_to_stderr=config.log == "-")
    return Master(service, sockets, pidfile, metrics=metrics).run()
