"""``--inetd``: one session on standard input and output.

Standard input may be a socket (xinetd, systemd ``Accept=yes``) or a plain
pipe; either way the connection layer bounds every read and every write by
``--timeout``, so a client that stops reading cannot keep the process.
"""

from __future__ import annotations

import sys

from msmtpd.config import Config
from msmtpd.connection import Connection, Transport, endpoint_of, peer_name
from msmtpd.service import prepare


def run_inetd(config: Config) -> int:
    service = prepare(config)
    if config.user is not None:
        from msmtpd import privileges

        privileges.drop(config.user)
    reader = endpoint_of(sys.stdin.fileno())
    writer = endpoint_of(sys.stdout.fileno())
    peer = peer_name(reader)
    connection = Connection(Transport(reader, writer), config.timeout, peer=peer)
    try:
        ended_well = service.session(connection, peer).run()
    finally:
        connection.close()
    return 0 if ended_well else 1
