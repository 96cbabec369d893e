"""What every process needs to serve a session, built once at start-up and
shared by ``--inetd`` and the pre-forked workers."""

from __future__ import annotations

import _socket  # not socket (enum, selectors): an --inetd session needs only gethostname

from msmtpd.base.config import Config, ConfigError
from msmtpd.base.logger import log
from msmtpd.delivery.pipe_command import Deliverer, PipeCommand
from msmtpd.net.connection import Connection
from msmtpd.net.peer import Peer
from msmtpd.smtp.session import Session, Settings

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    import logging
    from typing import Any, Optional

    from msmtpd.delivery.pipe_command import Interrupt
    from msmtpd.policy.allow_list import AllowList
    from msmtpd.smtp.session_parts import Deliver


# What a session imports only when it first needs it (a message over the
# memory limit, an AUTH, a read from a socket, a TLS session, a failure to
# log): privileges.drop imports them before the switch to --user.
LATE_MODULES = ("tempfile", "hmac", "base64", "mmap", "msmtpd.policy.allow_list", "traceback",
                "msmtpd.net.tls_context")


class Service:
    def __init__(self, config: Config, command: PipeCommand, settings: Settings,
                 log_handler: Optional[logging.Handler]) -> None:
        self.config = config
        self.command = command
        self.settings = settings
        self.log_handler = log_handler
        self.proxies: Optional[AllowList] = None  # --proxy-protocol: who may send a header

    def client_of(self, connection: Connection, peer: Peer) -> Optional[Peer]:
        """Who the session serves (contract 12): the connection's own
        ``peer``, or, from a trusted proxy (``--proxy-protocol``), the client
        its header names; None when that header is missing or wrong and the
        connection must close without a greeting (one log line says why).
        A Unix-socket caller is never a proxy: the kernel named it."""
        if self.proxies is None or peer.is_unix or not self.proxies.permits(peer.address):
            return peer  # not a listed proxy: plain SMTP, a PROXY line is a command (500)
        from msmtpd.net.proxy_header import ProxyHeaderError
        from msmtpd.net.proxy_intake import read_proxy_header

        try:
            header = read_proxy_header(connection)
        except ProxyHeaderError as exc:
            log.info("%s: closed without a greeting: %s", peer.name, exc, event="proxy_refused",
                     peer=peer.name, error=str(exc))
            return None
        log.info("%s: %s", peer.name, header.describe(), event="proxy_header", peer=peer.name,
                 client=header.source, header=header.describe())
        # LOCAL and UNKNOWN (no source) keep the real connection's peer.
        client = Peer(header.source, header.source_port) if header.source else peer
        connection.peer = client  # one peer for everything
        return client

    def session(self, connection: Connection, peer: Peer,
                interrupt: Optional[Interrupt] = None) -> Session:
        deliver: Deliver
        if self.config.queue is not None:
            from msmtpd.delivery.queue_intake import Queuer
            from msmtpd.delivery.queue_store import Queue

            queue = Queue(self.config.queue)
            first_try = None
            if self.config.queue_first_try > 0:
                from msmtpd.delivery.first_try import FirstTry

                first_try = FirstTry(queue, self.command, min(self.config.queue_first_try,
                                                              self.config.command_timeout),
                                     interrupt, peer.name, self.settings.counters)
            deliver = Queuer(queue, peer.name, first_try)
        else:
            deliver = Deliverer(self.command, self.config.command_timeout, peer.name, interrupt,
                                self.settings.counters)
        return Session(connection, self.settings, deliver, peer)


def prepare(config: Config, shared_failure_time: Any = None, tls_context: Any = None,
            counters: Any = None) -> Service:
    """Check everything that can fail at start-up; raises ConfigError.
    ``counters``: --metrics' shared msmtpd.base.metrics.Counters."""
    try:
        command = PipeCommand(config.command)
    except ValueError as exc:
        raise ConfigError(f"invalid --command: {exc}") from None
    handler = None
    if config.log != "none":  # without a log, logging is never imported
        from msmtpd.base import log_targets

        try:
            handler = log_targets.open_handler(config.log, config.log_format)
        except OSError as exc:
            raise ConfigError(f"cannot open log file {config.log}: {exc.strerror}") from None
        log_targets.install(handler)
    if config.queue is not None:  # before --user drops the right to create it
        from msmtpd.delivery.queue_store import QueueError, prepare_directory

        try:
            prepare_directory(config.queue, config.user)
        except QueueError as exc:
            raise ConfigError(str(exc)) from None
    settings = Settings(hostname=_socket.gethostname() or "localhost",
                        max_size=config.max_size, spool_dir=config.spool_dir,
                        shell_safe=config.shell_safe_addresses, tls=tls_context,
                        tls_implicit=config.tls_implicit, tls_required=config.tls_required,
                        unix_login=config.unix_login)
    settings.counters = counters
    if config.auth_user is not None:
        from msmtpd.policy.passwords import FailureClock, PasswordCheck, obtain_password

        password = obtain_password(config.auth_user, config.auth_passwordeval)
        settings.auth = PasswordCheck(config.auth_user, password, FailureClock(shared_failure_time))
    elif config.auth_file is not None:
        from msmtpd.policy.passwords import FailureClock
        from msmtpd.policy.users_file import load_accounts

        settings.auth = load_accounts(config.auth_file, FailureClock(shared_failure_time))
    if config.rate_limit is not None:
        from msmtpd.policy.rate_limit import RateTable

        settings.rate_limit = RateTable(*config.rate_limit)  # before the workers fork
    if config.senders is not None:
        from msmtpd.policy.senders import load_senders

        settings.senders = load_senders(config.senders)
    if config.allow:
        from msmtpd.policy.allow_list import AllowList

        # A listed proxy may always connect (its health checks keep its
        # own address); the clients it vouches for are judged by --allow.
        settings.allow = AllowList([*config.allow, *config.proxy_protocol])
    service = Service(config, command, settings, handler)
    if config.proxy_protocol:  # imported now, while --user's drop is still ahead
        from msmtpd.net import proxy_header, proxy_intake  # noqa: F401
        from msmtpd.policy.allow_list import AllowList

        service.proxies = AllowList(config.proxy_protocol)
    return service
