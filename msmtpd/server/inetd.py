"""``--inetd``: one session on standard input and output.

Standard input may be a socket (xinetd, systemd ``Accept=yes``) or a plain
pipe; either way the connection layer bounds every read and every write by
``--timeout``, so a client that stops reading cannot keep the process.
SIGTERM (xinetd or systemd stopping) closes the session with 421 and kills
a running delivery command, so no mail is delivered after the process that
owned it stopped answering.
"""

from __future__ import annotations

import sys

from msmtpd.base.config import Config
from msmtpd.base.exit_codes import EXIT_FAILURE, EXIT_OK
from msmtpd.net.connection import Connection, ShutdownRequested, Transport, endpoint_of
from msmtpd.net.peer import peer_of
from msmtpd.server.service import LATE_MODULES, prepare
from msmtpd.system.signal_inbox import RecordedSignals

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Any, Optional


class _Signals:
    """The session's Watch and the delivery's Interrupt under --inetd."""

    def __init__(self) -> None:
        self.recorded = RecordedSignals()
        self.wake_fd = self.recorded.wake_fd

    def check(self, connection: Connection, reading: bool) -> None:
        if self.recorded.handle() and reading:
            raise ShutdownRequested()

    def before_read(self, connection: Connection) -> None:
        self.check(connection, reading=True)

    def interrupted(self) -> Optional[str]:
        return "msmtpd received SIGTERM" if self.recorded.handle() else None


def run_inetd(config: Config, tls_context: Any = None) -> int:
    service = prepare(config, tls_context=tls_context)
    if config.user is not None:
        from msmtpd.system import privileges

        privileges.drop(config.user, LATE_MODULES)
    signals = _Signals()
    reader = endpoint_of(sys.stdin.fileno())
    writer = endpoint_of(sys.stdout.fileno())
    peer = peer_of(reader)
    connection = Connection(Transport(reader, writer), config.timeout, watch=signals, peer=peer)
    try:
        client = service.client_of(connection, peer)
        if client is None:
            return EXIT_FAILURE  # a trusted proxy's header was wrong: no greeting
        ended_well = service.session(connection, client, interrupt=signals).run()
    finally:
        connection.close()
    return EXIT_OK if ended_well else EXIT_FAILURE
