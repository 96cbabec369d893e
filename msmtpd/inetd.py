"""``--inetd``: one session on standard input and output.

Standard input may be a socket (xinetd, systemd ``Accept=yes``) or a plain
pipe; either way the idle timeout applies through ``select``.
"""

from __future__ import annotations

import os
import socket
import sys

from msmtpd.config import Config
from msmtpd.service import prepare
from msmtpd.stream import LineReader, fd_recv


def peer_of(fd: int) -> str:
    """The client's address when standard input is a socket, else ""."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return ""
    try:
        address = sock.getpeername()
    except OSError:
        return ""
    finally:
        sock.close()
    if isinstance(address, tuple):
        return str(address[0])
    return ""


def run_inetd(config: Config) -> int:
    service = prepare(config)
    if config.user is not None:
        from msmtpd import privileges

        privileges.drop(config.user)
    stdin = sys.stdin.fileno()
    reader = LineReader(fd_recv(stdin, config.timeout))
    writer = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=64 * 1024)
    try:
        ended_well = service.serve(reader, writer, peer_of(stdin))
    finally:
        try:
            writer.close()
        except OSError:
            pass
    return 0 if ended_well else 1
