"""What one SMTP conversation knows, declared once: the base class of the
session and of its verbs, so that the STARTTLS and AUTH verbs and the
command loop read the same attributes without declaring them again."""

from __future__ import annotations

from typing import Optional

from msmtpd.net.connection import Connection
from msmtpd.net.peer import Peer
from msmtpd.smtp.replies import Reply
from msmtpd.smtp.session_parts import Deliver, Envelope, Settings


class SessionState:
    """The peer, the greeting, the envelope, who authenticated, and the one
    way to send a reply."""

    def __init__(self, connection: Connection, settings: Settings,
                 deliver: Deliver, peer: Optional[Peer] = None) -> None:
        self.connection = connection
        self.settings = settings
        self.deliver = deliver
        # Who is calling (contract 12): a TCP address, the client a trusted
        # proxy vouches for, or a Unix-socket caller's credentials.
        self.peer: Peer = Peer() if peer is None else peer
        self.who = self.peer.name or "client"  # the peer as a log line names it
        self.helo: Optional[str] = None
        self.esmtp = False
        self.authenticated_user: Optional[str] = self.unix_login()
        self._envelope: Optional[Envelope] = None
        # RFC 3030 section 2: the reply to a BDAT transaction that failed
        # mid-way, repeated to the chunks pipelined behind the failed one.
        self.refused_chunks: Optional[Reply] = None
        self.repeating_refusal = False  # the reply being made is that one again
        self.errors = 0  # error replies in a row
        self.auth_failures = 0
        self.after_crlf = True  # the last command line ended in CRLF
        self.ending = "disconnect"  # how the session ended, for --metrics

    @property
    def tls(self) -> Optional[str]:
        """``TLSv1.3 with ...`` once TLS is up, else None: the connection's."""
        return self.connection.tls

    @property
    def envelope(self) -> Optional[Envelope]:
        """The transaction under way; replacing it drops what BDAT stored."""
        return self._envelope

    @envelope.setter
    def envelope(self, envelope: Optional[Envelope]) -> None:
        if self._envelope is not None and self._envelope is not envelope:
            self._envelope.close()
        self._envelope = envelope

    @property
    def idle(self) -> bool:
        """Between transactions: closing now loses nothing."""
        return self.envelope is None

    def reply(self, reply: Reply, final: bool = False) -> bool:
        """Queue one reply; the connection sends queued replies together
        before it waits for input (RFC 2920), ``final`` ones at once.
        False when a final reply could not be sent."""
        try:
            self.connection.write(reply.encode())
            if final:
                self.connection.flush()
        except OSError:
            if not final:
                raise  # run() says why the session ended
            return False
        return True

    def count(self, name: str, value: str, amount: float = 1.0) -> None:
        """Add to a --metrics counter (msmtpd.base.metrics.FAMILIES)."""
        counters = self.settings.counters
        if counters is not None:
            counters.add(name, value, amount)

    def count_tls(self, description: str) -> None:
        """A TLS handshake done: count it by protocol version."""
        counters = self.settings.counters
        if counters is not None:
            from msmtpd.base.metrics import tls_version

            counters.add("msmtpd_tls_sessions_total", tls_version(description))

    def needs_auth(self) -> bool:
        """``--auth`` or ``--auth-file`` and nobody authenticated yet."""
        return self.settings.auth is not None and self.authenticated_user is None

    def auth_needs_tls(self) -> bool:
        """With a certificate, a peer that is not on this machine may send
        its password only under TLS (like aiosmtpd's auth_require_tls)."""
        return self.settings.tls is not None and self.tls is None and not self.peer.is_local

    def unix_login(self) -> Optional[str]:
        """``--unix-login``: the user a Unix-socket caller is logged in as
        without AUTH, the name of its uid (None for a uid with no name, or
        for any other peer)."""
        if self.settings.unix_login and self.peer.is_unix:
            return self.peer.user
        return None
