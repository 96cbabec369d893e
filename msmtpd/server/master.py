"""The master process: binds, (optionally) daemonises, forks a bounded pool
of workers and supervises them.

Signal handlers only queue the signal; the main loop dispatches
``handle_<signal>``.  Dead workers are reaped with ``waitpid(-1, WNOHANG)``
in a loop and replaced, with a back-off when they die right after start; a
worker that cannot start at all halts the master.  Shutdown is staged:
stop accepting, SIGTERM each worker once, let sessions and delivery
commands finish within the grace time (``--timeout``; the workers end
their own commands when it runs out), then SIGKILL what is left and every
delivery command it leaves behind, and leave only when no child is left.
"""

from __future__ import annotations

import gc
import mmap
import os
import select
import signal
import socket
import sys
import time
from typing import Any, Dict, List, Optional

from msmtpd.base.config import Config, ConfigError, is_number
from msmtpd.base.exit_codes import EXIT_NOT_RUNNING
from msmtpd.base.logger import ERROR, INFO, log
from msmtpd.net.listeners import describe, warn_if_open
from msmtpd.server.reload import reload_settings
from msmtpd.server.runner_supervisor import RunnerKeeper
from msmtpd.server.service import Service, prepare
from msmtpd.server.worker import BUSY, IDLE, Worker, _title
from msmtpd.system import privileges
from msmtpd.system.pidfile import PidFile
from msmtpd.system.processes import become_subreaper, children, fork_child, is_zombie, kill
from msmtpd.system.systemd import Status

# A worker that dies sooner than this after its start counts as a boot failure ...
BOOT_GRACE_SECONDS = 1.0
# ... and its replacement waits 0.1 s, 0.2 s, 0.4 s ... up to this long.
MAX_RESPAWN_DELAY = 10.0
# How long the workers may take to report that they are up.
BOOT_TIMEOUT = 30.0
# Time granted after SIGKILL for the kernel to let the workers go.
KILL_WAIT = 5.0
# After the grace time, how long workers get to end their own delivery
# commands (and log it) before they are killed.
STOP_MARGIN = 2.0
# Idle workers beyond --spare-workers leave after this long (like Apache's
# MaxSpareServers, but after a minute rather than at once).  The variable is
# for the test suite.
SURPLUS_IDLE_SECONDS = float(os.environ.get("MSMTPD_SURPLUS_IDLE_SECONDS", "60"))

WORKER_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2}
SIGNAL_NAMES: Dict[int, str] = {signal.SIGTERM: "term", signal.SIGINT: "int", signal.SIGHUP: "hup",
                signal.SIGCHLD: "chld"}
SIGNAL_NAMES[signal.SIGUSR1] = "usr1"  # --queue: retry the queued mails now


class Halt(Exception):
    """The master must stop; ``str()`` is the reason and ``code`` the exit status."""

    def __init__(self, reason: str, code: int = EXIT_NOT_RUNNING) -> None:
        super().__init__(reason)
        self.code = code


class Master:
    def __init__(self, service: Service, sockets: List[socket.socket],
                 pidfile: Optional[PidFile], ready_fd: Optional[int] = None) -> None:
        self.service = service
        self.config: Config = service.config
        self.sockets = sockets
        self.pidfile = pidfile
        self.ready_fd = ready_fd
        self.workers: Dict[int, float] = {}  # pid -> start time
        self.slots: Dict[int, int] = {}  # pid -> its byte in the scoreboard
        # One byte per worker, shared with all of them: busy or idle.
        self.scoreboard = mmap.mmap(-1, self.config.max_sessions)
        self.signal_queue: List[int] = []
        self.fast_deaths = 0
        self.next_spawn = 0.0
        self.stopping = False
        self.status_r, self.status_w = os.pipe()
        os.set_blocking(self.status_r, False)
        # A worker never waits on a full pipe (a master busy stopping): a
        # lost "busy" report costs nothing, the next loop looks anyway.
        os.set_blocking(self.status_w, False)
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        self.status_buffer = b""
        self.booted: set[int] = set()
        self.renewing: set[int] = set()  # workers told to leave after their session
        self.status = Status(self.config.max_sessions)
        self.last_busy = time.monotonic()
        self.surplus_since: Optional[float] = None
        self.runner = RunnerKeeper(self.config, service.command)  # --queue

    # -- life cycle -------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        become_subreaper()
        if self.pidfile is not None:
            self.pidfile.write(os.getpid())
        _title(f"master {describe(self.sockets)}")
        try:
            gc.collect()
            gc.freeze()  # keep the pages the workers inherit shared
            self._spawn_missing()
            self._keep_runner()
            self._wait_for_boot()
            self._notify_ready("ready")
            self.status.ready()
            log.info("listening on %s with %d workers ready, up to %d", describe(self.sockets),
                     self._wanted(), self.config.max_sessions)
            warn_if_open(self.config, self.sockets)
            self.last_busy = time.monotonic()
            while True:
                self._loop_once()
        except Halt as halt:
            message = str(halt)
            if message:
                log.error("%s", message)
                self._notify_ready(f"error {message}")
                if self.ready_fd is None and halt.code:
                    sys.stderr.write(f"msmtpd: {message}\n")
            self._stop_workers(graceful=False)
            return halt.code
        finally:
            if self.pidfile is not None:
                self.pidfile.remove()

    def _loop_once(self) -> None:
        if self.signal_queue:
            signum = self.signal_queue.pop(0)
            getattr(self, f"handle_{SIGNAL_NAMES[signum]}")()
            return
        self._sleep(1.0)
        self._read_status()
        self.reap()
        self._spawn_missing()
        self._keep_runner()
        self._let_surplus_go()
        self._watch_sessions()

    def _watch_sessions(self) -> None:
        """Report the sessions in use; with --idle-exit, leave once none ran
        for that long (the socket stays with systemd or inetd, which start
        msmtpd again for the next client)."""
        busy = self.scoreboard[:].count(BUSY)
        self.status.sessions(busy)
        now = time.monotonic()
        if busy or select.select(self.sockets, [], [], 0)[0]:
            self.last_busy = now
        elif (self.config.idle_exit is not None and now - self.last_busy >= self.config.idle_exit
              and not self.runner.queue_holds_mail()):
            log.info("no session for %g s: exiting until the next connection", self.config.idle_exit)
            self.status.stopping()
            self._stop_workers(graceful=True)
            raise Halt("", 0)

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        for signum in SIGNAL_NAMES:
            signal.signal(signum, self._queue_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # meant for workers: it renews them

    def _queue_signal(self, signum: int, frame: object) -> None:
        # Only record the signal; the main loop does the work.
        if len(self.signal_queue) < 10:
            self.signal_queue.append(signum)

    def _sleep(self, seconds: float) -> None:
        try:
            # While stopping, late status reports are of no interest: watching
            # that pipe without reading it would spin.
            watch = [self.wake_r] if self.stopping else [self.wake_r, self.status_r]
            ready, _, _ = select.select(watch, [], [], seconds)
        except InterruptedError:
            return
        if self.wake_r in ready:
            try:
                while os.read(self.wake_r, 512):
                    pass
            except BlockingIOError:
                pass

    # -- signals ----------------------------------------------------------

    def handle_chld(self) -> None:
        self.reap()

    def handle_hup(self) -> None:
        from msmtpd.base import log_targets

        self.status.reloading()
        log.info("reopening the log")
        log_targets.reopen()
        try:
            _hand_log_to_user(self.config, self.service.log_handler)
        except ConfigError as exc:
            log.error("%s", exc)
        for pid in list(self.workers):
            kill(pid, signal.SIGHUP)
        self.runner.signal(signal.SIGHUP)
        if reload_settings(self.config, self.service.settings):
            self._renew_workers()
        self.status.reloaded()

    def _renew_workers(self) -> None:
        """New workers get what SIGHUP re-read; each old one leaves when its
        session is over."""
        log.info("renewing the workers")
        for pid in list(self.workers):
            self.renewing.add(pid)
            kill(pid, signal.SIGUSR2)

    def handle_term(self) -> None:
        self.status.stopping()
        log.info("stopping: letting running sessions finish")
        self._stop_workers(graceful=True)
        raise Halt("", 0)

    handle_int = handle_term

    # -- workers ----------------------------------------------------------

    def reap(self) -> None:
        if not self.stopping:
            self._read_status()  # know which of the dead had reported ready
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.runner.pid:
                self.runner.ended(status, self.stopping)
                if not self.stopping:
                    self._end_orphaned_commands("its queue runner died")
                continue
            started = self.workers.pop(pid, None)
            if started is None:
                continue  # an orphan we adopted as subreaper, now reaped
            self.scoreboard[self.slots.pop(pid)] = IDLE
            was_up = pid in self.booted
            self.booted.discard(pid)
            if self.stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code == 0 and pid in self.renewing:
                self.renewing.discard(pid)
                continue  # replaced by one with the new certificate
            self.renewing.discard(pid)
            if code == EXIT_NOT_RUNNING:  # a worker that could not start
                self._read_status()
                raise Halt(f"worker {pid} could not start")
            how = f"exit status {code}" if code >= 0 else f"signal {-code}"
            # Status 0 is a worker stopped from outside (SIGTERM sent to the
            # whole group), not a crash; it is replaced all the same.
            log.log(INFO if code == 0 else ERROR,
                    "worker %d ended (%s); replacing it", pid, how)
            self._end_orphaned_commands()
            if not was_up or time.monotonic() - started < BOOT_GRACE_SECONDS and code > 0:
                # It died starting up: replace it, but not in a tight loop.
                self.fast_deaths += 1
                delay = min(0.1 * 2 ** (self.fast_deaths - 1), MAX_RESPAWN_DELAY)
                self.next_spawn = time.monotonic() + delay
            else:
                self.fast_deaths = 0

    def _end_orphaned_commands(self, why: str = "its worker died before answering") -> int:
        """A delivery command whose worker died is now our child (we are its
        subreaper).  Nobody will acknowledge its mail, so it must not go on
        to deliver it: kill its process group.  A command leads its own
        group (``start_new_session``); other adopted processes, left in the
        background by finished commands, are only reaped.  Returns how
        many commands were killed (and are still to be reaped)."""
        killed = 0
        for pid in children():
            if pid in self.workers or pid == self.runner.pid or is_zombie(pid):
                continue  # a command that already finished is merely reaped
            try:
                if os.getpgid(pid) != pid:
                    continue
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                continue
            killed += 1
            log.error("ended delivery command %d: %s", pid, why)
        return killed

    def _wanted(self) -> int:
        """Workers for the sessions running plus --spare-workers idle ones,
        at most --max-sessions: the pool grows the moment spares are taken
        (a worker reports "busy" on the status pipe, which wakes us)."""
        busy = self.scoreboard[:].count(BUSY)
        return min(self.config.max_sessions, busy + self.config.spare_workers)

    def _spawn_missing(self) -> None:
        if self.stopping or time.monotonic() < self.next_spawn:
            return
        while len(self.workers) < self._wanted():
            self._spawn()

    def _let_surplus_go(self) -> None:
        """Idle workers beyond the spares, for SURPLUS_IDLE_SECONDS, leave
        (SIGUSR2: a worker that has just taken a session finishes it first)."""
        idle = [pid for pid, slot in self.slots.items()
                if self.scoreboard[slot] == IDLE and pid in self.booted and pid not in self.renewing]
        surplus = len(idle) - self.config.spare_workers
        if surplus <= 0:
            self.surplus_since = None
            return
        now = time.monotonic()
        if self.surplus_since is None:
            self.surplus_since = now
        elif now - self.surplus_since >= SURPLUS_IDLE_SECONDS:
            for pid in idle[:surplus]:
                self.renewing.add(pid)
                kill(pid, signal.SIGUSR2)
            self.surplus_since = None

    def _spawn(self) -> None:
        slot = min(set(range(self.config.max_sessions)) - set(self.slots.values()))
        self.scoreboard[slot] = IDLE
        worker = Worker(self.service, self.sockets, os.getpid(), self.status_w,
                        self.config.user, self.scoreboard, slot)
        pid = fork_child(WORKER_SIGNALS, [self.wake_r, self.wake_w, self.status_r,
                                          *self._private_fds()], worker.run)
        self.workers[pid] = time.monotonic()
        self.slots[pid] = slot

    def _read_status(self) -> None:
        """Workers report ``ready PID`` or ``error PID why`` on the status pipe."""
        try:
            while True:
                chunk = os.read(self.status_r, 4096)
                if not chunk:
                    break
                self.status_buffer += chunk
        except BlockingIOError:
            pass
        while b"\n" in self.status_buffer:
            line, self.status_buffer = self.status_buffer.split(b"\n", 1)
            kind, _, rest = line.decode("utf-8", "replace").partition(" ")
            pid_text, _, why = rest.partition(" ")
            if kind == "error":
                raise Halt(why or f"worker {pid_text} could not start")
            if kind == "ready" and is_number(pid_text):
                self.booted.add(int(pid_text))
            # "busy PID" needs nothing more: it woke the loop, which grows the pool.

    def _wait_for_boot(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while len(self.booted) < self._wanted():
            if time.monotonic() > deadline:
                raise Halt("workers did not start in time")
            self._sleep(0.05)
            self._read_status()
            if self.signal_queue:
                signum = self.signal_queue.pop(0)
                getattr(self, f"handle_{SIGNAL_NAMES[signum]}")()
            self.reap()  # a worker killed while it boots is replaced, not waited for
            self._spawn_missing()

    def _stop_workers(self, graceful: bool) -> None:
        """Stop accepting, SIGTERM each worker once, wait for the grace time
        and the margin in which workers end their own commands, then
        SIGKILL; leave no delivery command behind."""
        self.stopping = True
        for sock in self.sockets:
            sock.close()
        for pid in list(self.workers):
            kill(pid, signal.SIGTERM)
        self.runner.signal(signal.SIGTERM)
        grace = self.config.timeout + STOP_MARGIN if graceful else 1.0
        deadline = time.monotonic() + grace
        while (self.workers or self.runner.pid) and time.monotonic() < deadline:
            self._sleep(0.05)
            self.reap()
        for pid in list(self.workers):
            log.error("worker %d did not stop in time; killing it", pid)
            kill(pid, signal.SIGKILL)
        if self.runner.pid is not None:
            log.error("queue runner %d did not stop in time; killing it", self.runner.pid)
            self.runner.signal(signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT
        while time.monotonic() < deadline:
            self.reap()
            left = self._end_orphaned_commands("msmtpd is stopping and its worker is gone")
            if not self.workers and not self.runner.pid and not left:
                break
            self._sleep(0.05)

    # -- the queue runner (--queue) -----------------------------------------

    def handle_usr1(self) -> None:
        """Retry every queued mail now: the runner does it."""
        if self.runner.pid is not None:
            log.info("SIGUSR1: asking the queue runner to try every queued mail now")
            self.runner.signal(signal.SIGUSR1)

    def _keep_runner(self) -> None:
        if not self.stopping:
            self.runner.keep_alive(lambda: [
                self.wake_r, self.wake_w, self.status_r, self.status_w,
                *(sock.fileno() for sock in self.sockets), *self._private_fds()])

    def _private_fds(self) -> List[int]:
        """What no child may keep: the readiness pipe and the pid file."""
        fds = [] if self.ready_fd is None else [self.ready_fd]
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
    service = prepare(config, shared, tls_context)
    _hand_log_to_user(config, service.log_handler)
    pidfile = None
    if config.pidfile is not None:
        pidfile = PidFile(config.pidfile)
        pidfile.acquire()
    if config.daemon:
        from msmtpd.system.daemonize import run_detached

        return run_detached(lambda ready_fd: Master(service, sockets, pidfile, ready_fd).run(),
                            keep=[*sockets, pidfile.fd if pidfile else None,
                                  service.log_handler], log_to_stderr=config.log == "-")
    return Master(service, sockets, pidfile).run()
