"""systemd's two small protocols, without libsystemd: sockets handed over
at start (``sd_listen_fds``: ``LISTEN_PID``, ``LISTEN_FDS``, descriptors from
3 on) and readiness reported as datagrams to ``$NOTIFY_SOCKET``
(``sd_notify``).  Both variables are removed from the environment once
read, as libsystemd does, so neither a worker nor a delivery command acts
on them."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs about 3 ms before the port listens; annotations are strings
if TYPE_CHECKING:
    import socket
    from typing import List, Optional

# sd_listen_fds(3): inherited descriptors start here.
LISTEN_FDS_START = 3

_notify_address: Optional[str] = None


def listen_fds() -> List[socket.socket]:
    """The listening sockets systemd passed to this very process (none
    when the variables are missing or meant for another process)."""
    pid, count = os.environ.get("LISTEN_PID", ""), os.environ.get("LISTEN_FDS", "")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if not (pid.isdigit() and count.isdigit()) or int(pid) != os.getpid():
        return []
    # With Accept=yes the descriptor is a connection, not a listener: that
    # one is --inetd's standard input, and is left alone here.
    fds = range(LISTEN_FDS_START, LISTEN_FDS_START + min(int(count), 1024))
    return [adopt_listener(fd) for fd in fds if is_listening_socket(fd)]


def adopt_listener(fd: int) -> socket.socket:
    """A socket object for an inherited listening descriptor; ConfigError
    when it is not a listening stream socket."""
    import socket

    from msmtpd.base.config import ConfigError

    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(f"inherited descriptor {fd} is not a socket: {exc.strerror}") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ConfigError(f"inherited descriptor {fd} is not a listening stream socket")
    os.set_inheritable(fd, False)
    sock.setblocking(False)  # a worker that loses the accept race goes back to waiting
    return sock


def is_listening_socket(fd: int) -> bool:
    """inetd's ``wait = yes`` hands over the listening socket itself."""
    import _socket  # not socket, which imports enum and selectors (some 3 ms of an --inetd session)

    try:
        sock = _socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        return bool(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN))
    except OSError:
        return False
    finally:
        sock.close()


def take_stdin_listener() -> socket.socket:
    """The listening socket inetd put on standard input, as our own; the
    standard input and output become /dev/null so nothing else uses it."""
    listener = adopt_listener(os.dup(0))
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    os.close(devnull)
    return listener


def take_notify_socket() -> None:
    """Remember ``$NOTIFY_SOCKET`` for :func:`notify` and hide it from children."""
    global _notify_address
    _notify_address = os.environ.pop("NOTIFY_SOCKET", None) or None


def notify(*fields: str) -> None:
    """Send ``READY=1``, ``STATUS=...`` and so on; nothing without systemd."""
    address = _notify_address
    if address is None:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(fields).encode("utf-8", "replace"), address)
    except OSError:
        pass  # systemd gone or the socket not ours: the service goes on


class Status:
    """What the master tells systemd: readiness, and how many sessions run
    (``STATUS=``), sent only when it changes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._last: Optional[int] = None

    def ready(self) -> None:
        notify("READY=1", self._status(0))
        self._last = 0

    def sessions(self, busy: int) -> None:
        if busy != self._last:
            self._last = busy
            notify(self._status(busy))

    def reloading(self) -> None:
        import time

        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def reloaded(self) -> None:
        notify("READY=1")

    def stopping(self) -> None:
        notify("STOPPING=1", "STATUS=stopping: letting running sessions finish")

    def _status(self, busy: int) -> str:
        return f"STATUS={busy} of {self.capacity} sessions in use"
