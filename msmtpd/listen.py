"""Binding the listening sockets, before anything else can fail late."""

from __future__ import annotations

import socket
from typing import List

from msmtpd.config import Config, ConfigError
from msmtpd.log import log

# Connections beyond the busy workers wait in the kernel's queue.
BACKLOG = max(socket.SOMAXCONN, 128)


def bind_all(interfaces: List[str], port: int) -> List[socket.socket]:
    sockets: List[socket.socket] = []
    try:
        for interface in interfaces:
            sockets.append(_bind(interface, port))
    except ConfigError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind(interface: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((interface, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)  # a worker that loses the accept race goes back to waiting
    except OSError as exc:
        sock.close()
        where = f"[{interface}]" if family == socket.AF_INET6 else interface
        raise ConfigError(f"cannot listen on {where} port {port}: {exc.strerror}") from None
    return sock


def describe(sockets: List[socket.socket]) -> str:
    names = []
    for sock in sockets:
        address = sock.getsockname()
        if not isinstance(address, tuple):  # a Unix socket handed over by systemd
            names.append(str(address) or "unix socket")
            continue
        host, port = address[:2]
        names.append(f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}")
    return " ".join(names)


def reachable_from_outside(sockets: List[socket.socket]) -> List[str]:
    """The listening addresses other machines may reach: anything but
    loopback (127.0.0.0/8, ::1) and Unix sockets."""
    open_ones = []
    for sock in sockets:
        address = sock.getsockname()
        if not isinstance(address, tuple):
            continue
        host = str(address[0]).lower()
        if host.startswith("::ffff:"):
            host = host[len("::ffff:"):]
        if host == "::1" or (sock.family == socket.AF_INET or "." in host) and host.startswith("127."):
            continue
        open_ones.append(describe([sock]))
    return open_ones


def warn_if_open(config: Config, sockets: List[socket.socket]) -> None:
    """One warning per listening address others can reach, when nothing
    restricts who may send."""
    if config.auth_user is not None or config.auth_file is not None or config.allow:
        return
    for where in reachable_from_outside(sockets):
        log.warning("anyone who can reach %s can send mail through msmtpd:"
                    " use --allow, --auth or --auth-file to restrict it", where)
