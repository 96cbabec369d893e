"""Binding the listening sockets, before anything else can fail late.

The sockets are made with the C module ``_socket``: ``socket.py`` imports
``enum`` and ``selectors``, some 5 ms here, which can wait until the port
listens (a client that connects meanwhile waits in the listen queue).
"""

from __future__ import annotations

import _socket
import os

from msmtpd.base.config import Config, ConfigError, is_unix_path

TYPE_CHECKING = False  # typing costs about 3 ms before the port listens; annotations are strings
if TYPE_CHECKING:
    import socket
    from typing import List

# Connections beyond the busy workers wait in the kernel's queue.
BACKLOG = max(_socket.SOMAXCONN, 128)


def bind_all(config: Config) -> List[socket.socket]:
    """A listening socket for each --interface: an IP address and --port,
    or a Unix socket's path (:mod:`msmtpd.net.unix_socket`)."""
    listening: List[_socket.socket] = []
    try:
        for interface in config.interfaces:
            if is_unix_path(interface):
                listening.append(_bind_unix(config, interface))
            else:
                listening.append(_bind(interface, config.port))
    except ConfigError:
        for sock in listening:
            sock.close()
        if any(is_unix_path(interface) for interface in config.interfaces):
            from msmtpd.net import unix_socket

            unix_socket.remove_all()
        raise
    import socket  # now that every port listens

    sockets = [socket.socket(fileno=sock.detach()) for sock in listening]
    for sock in sockets:
        sock.setblocking(False)  # a worker that loses the accept race goes back to waiting
    return sockets


def _bind_unix(config: Config, path: str) -> _socket.socket:
    from msmtpd.net import unix_socket

    owner = None
    if config.user is not None and os.geteuid() == 0:  # the sessions' user may use it
        from msmtpd.system.privileges import resolve

        account = resolve(config.user)
        owner = (account.uid, account.gid)
    return unix_socket.bind(path, BACKLOG, config.socket_mode, owner)


def _bind(interface: str, port: int) -> _socket.socket:
    family = _socket.AF_INET6 if ":" in interface else _socket.AF_INET
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        if family == _socket.AF_INET6:
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
        sock.bind((interface, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        where = f"[{interface}]" if family == _socket.AF_INET6 else interface
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
        names.append(f"[{host}]:{port}" if sock.family == _socket.AF_INET6 else f"{host}:{port}")
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
        if host == "::1" or host.startswith("127."):
            continue
        open_ones.append(describe([sock]))
    return open_ones


def warn_if_open(config: Config, sockets: List[socket.socket]) -> None:
    """One warning per listening address others can reach, when nothing
    restricts who may send."""
    if config.auth_user is not None or config.auth_file is not None or config.allow:
        return
    from msmtpd.base.logger import log  # after bind: the port listens without it

    for where in reachable_from_outside(sockets):
        log.warning("anyone who can reach %s can send mail through msmtpd:"
                    " use --allow, --auth or --auth-file to restrict it", where,
                    event="open_relay", listening=where)
