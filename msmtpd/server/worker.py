"""A pre-forked worker: accepts on the shared listening sockets and serves
one session at a time.

Workers wait in ``select`` on the listening sockets and a wake-up pipe that
signals write to, so a stop request is never stuck behind ``accept()``.
While a session runs, the worker is the connection's :class:`Watch`: it
handles signals, closes an idle session for a stop or an overload, and
ends a delivery that outlives the stop's grace time.  A forked worker
always leaves through ``os._exit``.
"""

from __future__ import annotations

import os
import select
import socket
import time

from msmtpd.base.exit_codes import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_OK
from msmtpd.base.logger import log
from msmtpd.net.connection import (
    OVERLOAD_IDLE_SECONDS,
    Connection,
    Overloaded,
    ShutdownRequested,
    Transport,
)
from msmtpd.net.peer import peer_of
from msmtpd.server.service import LATE_MODULES, Service
from msmtpd.smtp.session import Session
from msmtpd.system import privileges
from msmtpd.system.processes import PARENT_CHECK_SECONDS, master_gone
from msmtpd.system.proctitle import set_title
from msmtpd.system.signal_inbox import RecordedSignals

TYPE_CHECKING = False  # typing at run time costs every process some 1.6 MB and 3 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Any, List, Optional

# Byte values in the scoreboard the master shares with its workers.
IDLE, BUSY = 0, 1
# The title of a worker waiting for a session.
IDLE_TITLE = "worker idle"


class _ListenerWatch:
    """Waits until a listening socket has a connection (or a signal came).

    With epoll, each listener is registered EPOLLEXCLUSIVE, so one new
    connection wakes one idle worker instead of all of them; elsewhere
    ``select`` does, and the losers of the accept race go back to waiting.
    """

    def __init__(self, sockets: List[socket.socket], wake_fd: int) -> None:
        self.sockets = {sock.fileno(): sock for sock in sockets}
        self.wake_fd = wake_fd
        self.epoll = select.epoll() if hasattr(select, "epoll") else None
        if self.epoll is not None:
            exclusive = getattr(select, "EPOLLEXCLUSIVE", 0)
            for fd in self.sockets:
                self.epoll.register(fd, select.EPOLLIN | exclusive)
            self.epoll.register(wake_fd, select.EPOLLIN)

    def wait(self, timeout: float) -> List[socket.socket]:
        if self.epoll is not None:
            fds = [fd for fd, _ in self.epoll.poll(timeout)]
        else:
            fds, _, _ = select.select([*self.sockets, self.wake_fd], [], [], timeout)
        return [self.sockets[fd] for fd in fds if fd in self.sockets]

    def __enter__(self) -> _ListenerWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.epoll is not None:
            self.epoll.close()


def _end_connection(connection: socket.socket) -> None:
    """FIN, then close (the session's connection has closed it already,
    unless the session failed before or while making it)."""
    if connection.fileno() < 0:
        return  # the session's connection closed it already (FIN, linger, close)
    try:
        connection.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    connection.close()


class Worker:
    """One process of the pool.  ``scoreboard`` is memory shared with the
    master and every worker, one byte per slot (IDLE or BUSY), so a worker
    can tell when the whole pool is busy."""

    def __init__(self, service: Service, sockets: List[socket.socket], master_pid: int,
                 status_fd: int, user: Optional[str], scoreboard: Any = None, slot: int = 0) -> None:
        self.service = service
        self.sockets = sockets
        self.master_pid = master_pid
        self.status_fd = status_fd
        self.user = user
        self.scoreboard = scoreboard
        self.slot = slot
        self.stopping = False
        self.signals: RecordedSignals  # made in _boot, in the worker process
        self.stop_deadline = float("inf")  # when running sessions and commands must end
        self.wake_fd = -1
        self.session: Optional[Session] = None
        self.master_check_at = 0.0  # when a session's reads look at the master again

    def run(self) -> None:
        """The worker's whole life; never returns."""
        try:
            self._boot()
        except Exception as exc:  # report why, then let the master halt
            self._report(f"error {os.getpid()} {exc}")
            os._exit(EXIT_NOT_RUNNING)  # the master halts on it
        self._report(f"ready {os.getpid()}")
        try:
            self._serve()
        except BaseException:
            os._exit(EXIT_FAILURE)
        os._exit(EXIT_OK)

    def _boot(self) -> None:
        """After processes.fork_child's set-up: the signals, then --user."""
        self.signals = RecordedSignals(retire=True)  # SIGTERM, SIGHUP, SIGUSR2
        self.signals.inbox.unblock()
        self.wake_fd = self.signals.wake_fd
        counters = self.service.settings.counters
        if counters is not None:
            counters.use_slot(self.slot)  # the slot's counts outlive this process
        if self.user is not None:
            privileges.drop(self.user, LATE_MODULES)

    def handle_signals(self) -> None:
        """Act on what the signal handlers recorded, and on the master's death."""
        self.master_check_at = time.monotonic() + PARENT_CHECK_SECONDS
        if self.signals.handle() or master_gone(self.master_pid):
            self.stop()
        elif self.signals.retire_requested and self.session is None:
            self.stop()  # idle: leave now; a running session first ends as usual

    def stop(self) -> None:
        """Stop accepting at once; a running session ends after its
        transaction, or when the grace time (``--timeout``) runs out."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.service.config.timeout
        for sock in self.sockets:
            sock.close()

    # -- while a session runs ---------------------------------------------

    def serve_session(self, connection: socket.socket) -> None:
        peer = peer_of(connection)
        set_title(f"session {peer.name}")
        self._mark(BUSY)
        self._report(f"busy {os.getpid()}")  # wakes the master: the pool may need a spare
        try:
            wire = Connection(Transport(connection, connection), self.service.config.timeout,
                              watch=self, peer=peer)
            try:
                client = self.service.client_of(wire, peer)
                if client is None:  # a trusted proxy's header was wrong: no greeting
                    counters = self.service.settings.counters
                    if counters is not None:
                        counters.add("msmtpd_sessions_total", "proxy_refused")
                    return
                if client is not peer:
                    set_title(f"session {client.name} via {peer.name}")
                self.session = self.service.session(wire, client, interrupt=self)
                self.session.run()
            finally:
                wire.close()
        finally:
            self.session = None
            self._mark(IDLE)
            set_title(IDLE_TITLE)
            if self.signals.retire_requested:
                self.stop()

    def check(self, connection: Connection, reading: bool) -> None:
        """The connection's Watch: called on every wake-up and tick."""
        self.handle_signals()
        if not reading:
            return
        if self.stopping:
            session = self.session
            if session is None or session.idle or time.monotonic() >= self.stop_deadline:
                raise ShutdownRequested()
            return
        if (connection.awaiting_command and connection.unproductive_seconds >= OVERLOAD_IDLE_SECONDS
                and self._pool_overloaded()):
            raise Overloaded()

    def before_read(self, connection: Connection) -> None:
        """The check before each read, done whole only when it may find
        something: a signal recorded, a stop under way, a session idle long
        enough for the overload rule, or a second since the master was last
        looked at.  The reads of a busy session then make no system call
        here (the wake-up descriptor is polled with the read, and a wake-up
        gets the whole check)."""
        if (self.signals.inbox.pending or self.stopping
                or connection.unproductive_seconds >= OVERLOAD_IDLE_SECONDS
                or time.monotonic() >= self.master_check_at):
            self.check(connection, reading=True)

    def interrupted(self) -> Optional[str]:
        """For a running delivery command: why it must end now, if it must."""
        self.handle_signals()
        if self.stopping and time.monotonic() >= self.stop_deadline:
            return "msmtpd is stopping and the grace time ran out"
        return None

    def _pool_overloaded(self) -> bool:
        """Every worker busy and a connection waiting in a listen queue."""
        if self.scoreboard is None or IDLE in self.scoreboard[:]:
            return False
        waiting, _, _ = select.select(self.sockets, [], [], 0)
        return bool(waiting)

    def _mark(self, state: int) -> None:
        if self.scoreboard is not None:
            self.scoreboard[self.slot] = state

    def _serve(self) -> None:
        with _ListenerWatch(self.sockets, self.wake_fd) as watch:
            while not self.stopping:
                ready = watch.wait(PARENT_CHECK_SECONDS)
                self.handle_signals()  # also notices a master that is gone
                for listener in ready:
                    if self.stopping:
                        break
                    self._accept(listener)

    def _accept(self, listener: socket.socket) -> None:
        """One connection, one session.  (Not socketserver's request cycle:
        socketserver imports threading, whose at-fork hook alone leaves some
        330 KB of private memory in every forked worker.)"""
        try:
            connection, address = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker won the race
        except OSError as exc:
            log.error("accept failed: %s", exc.strerror, event="accept_failed", error=exc.strerror)
            return
        connection.setblocking(True)
        try:
            self.serve_session(connection)
        except Exception:
            import traceback

            error = traceback.format_exc().strip().splitlines()[-1]
            log.error("session with %s failed: %s", address, error, event="session_failed",
                      peer=str(address), error=error)
        finally:
            _end_connection(connection)

    def _report(self, line: str) -> None:
        try:
            os.write(self.status_fd, (line.replace("\n", " ") + "\n").encode("utf-8", "replace"))
        except OSError:
            pass
