"""What one SMTP conversation knows, declared once: the base class of the
session and of its verbs, so that the STARTTLS and AUTH verbs and the
command loop read the same attributes without declaring them again."""

from __future__ import annotations

from msmtpd.net.connection import Connection
from msmtpd.net.peer import Peer
from msmtpd.smtp import replies
from msmtpd.smtp.replies import Reply, reply_text
from msmtpd.smtp.session_parts import Envelope, Settings

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Optional

    from msmtpd.policy.rate_limit import Reservation
    from msmtpd.smtp.message import Spool
    from msmtpd.smtp.session_parts import Deliver


class SessionState:
    """The peer, the greeting, the envelope, who authenticated, and the one
    way to send a reply."""

    def __init__(self, connection: Connection, settings: Settings,
                 deliver: Deliver, peer: Optional[Peer] = None) -> None:
        self.connection = connection
        self.settings = settings
        self._deliver = deliver
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
        self.rate_hold: Optional[Reservation] = None  # this transaction's place under --rate-limit

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

    def drop_transaction(self) -> None:
        """RSET, a new greeting, STARTTLS: the transaction is abandoned."""
        self.envelope = None
        self.settle_rate(accepted=False)

    def deliver(self, envelope: Envelope, spool: Spool) -> Reply:
        """Hand the mail to the delivery; it counts against --rate-limit
        only when accepted."""
        reply = self._deliver(envelope, spool)
        self.settle_rate(accepted=reply.code < 300)
        return reply

    def hold_rate(self) -> Optional[Reply]:
        """--rate-limit at MAIL FROM: reserve this transaction's place, or
        the 450 that says how long to wait.  The logged-in user is the key,
        else the client's address (a Unix-socket caller's user)."""
        table = self.settings.rate_limit
        if table is None:
            return None
        self.settle_rate(accepted=False)  # a transaction that ended without a mail
        key = self._rate_key()
        hold = table.reserve(key)
        if isinstance(hold, float):
            from msmtpd.base.logger import log
            from msmtpd.policy.rate_limit import describe_period

            wait = max(1, int(hold + 0.999))
            refused = replies.RATE_LIMITED.format(count=table.count,
                                                  period=describe_period(table.period), wait=wait)
            log.info("%s: MAIL FROM refused: %s over --rate-limit (%d per %s); %d s to wait",
                     self.who, key, table.count, describe_period(table.period), wait,
                     event="refused", peer=self.who, reason="rate_limit", key=key,
                     reply=reply_text(refused))
            self.count("msmtpd_refusals_total", "rate_limit")
            return refused
        self.rate_hold = hold
        return None

    def _rate_key(self) -> str:
        """Whose mails --rate-limit counts: the logged-in user, else a
        Unix-socket caller's user, else the client's address."""
        peer = self.peer
        if self.authenticated_user is not None:
            return f"user {self.authenticated_user}"
        if peer.is_unix:
            return f"user {peer.user}" if peer.user is not None else f"uid {peer.uid}"
        return f"address {peer.address}"

    def settle_rate(self, accepted: bool) -> None:
        """The transaction is over: its --rate-limit place is used or given back."""
        hold, self.rate_hold = self.rate_hold, None
        if hold is not None:
            hold.settle(accepted)

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
