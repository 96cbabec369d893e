"""What the session shares with its verbs and with the code that
builds it: the settings, the envelope, and the hooks for delivery and
authentication."""

from __future__ import annotations

# typing costs an --inetd session about 4 ms: the hooks' Protocols exist
# for mypy alone (nothing checks them at run time) and annotations are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Protocol, Sequence

    from msmtpd.policy.allow_list import AllowList
    from msmtpd.policy.rate_limit import RateTable
    from msmtpd.policy.senders import Senders
    from msmtpd.smtp.chunking import ChunkedMessage
    from msmtpd.smtp.message import Spool
    from msmtpd.smtp.replies import Reply

    class Deliver(Protocol):
        def __call__(self, envelope: Envelope, spool: Spool) -> Reply: ...

    class Authenticator(Protocol):
        """Checks credentials; ``wait`` applies the brute-force delay before an
        AUTH answer, ``failed`` records a failure for it."""

        def check(self, user: bytes, password: bytes) -> bool:
            """Whether these exact bytes are a user's name and password; the
            same work whatever they are (``b"", b""`` for an exchange that
            gave no credentials), so the time of the answer tells nothing."""
            ...

        def wait(self) -> None: ...

        def failed(self) -> None: ...


class Settings:
    """What a session needs to know of the configuration."""

    def __init__(self, hostname: str = "localhost", max_size: int = 0,
                 spool_dir: Optional[str] = None, auth: Optional[Authenticator] = None,
                 shell_safe: bool = False, tls: Any = None, tls_implicit: bool = False,
                 tls_required: bool = False, allow: Optional[AllowList] = None,
                 senders: Optional[Senders] = None, unix_login: bool = False,
                 rate_limit: Optional[RateTable] = None) -> None:
        self.hostname = hostname
        self.max_size = max_size
        self.spool_dir = spool_dir
        self.auth = auth
        self.shell_safe = shell_safe  # --shell-safe-addresses
        self.tls = tls  # the ssl.SSLContext of --tls-cert, or None
        self.tls_implicit = tls_implicit
        self.tls_required = tls_required
        self.allow = allow  # --allow: the client networks that may connect
        self.senders = senders  # --senders: whom each authenticated user may send as
        self.unix_login = unix_login  # --unix-login: a Unix-socket caller is its uid's user
        # --metrics: the shared msmtpd.base.metrics.Counters (None: nothing counted,
        # and that module never imported)
        self.counters: Any = None
        self.rate_limit = rate_limit  # --rate-limit: the mails each user or client may send


# A log line names this many recipients, then "and N more".
LOGGED_RECIPIENTS = 2


def shown_recipients(recipients: Sequence[str]) -> Sequence[str]:
    """The recipients a log line names: all of up to one more than
    LOGGED_RECIPIENTS (rather than "and 1 more"), else the first ones."""
    return recipients if len(recipients) <= LOGGED_RECIPIENTS + 1 else recipients[:LOGGED_RECIPIENTS]


def recipient_fields(recipients: Sequence[str]) -> Dict[str, object]:
    """The recipients as the JSON log holds them: a bounded list and the count."""
    return {"recipients": list(shown_recipients(recipients)), "recipients_total": len(recipients)}


class Envelope:
    """One transaction's sender, recipients and MAIL parameters, and the
    user logged in when MAIL was given (None: nobody)."""

    def __init__(self, sender: str = "", recipients: Optional[List[str]] = None) -> None:
        self.user: Optional[str] = None
        self.sender = sender
        self.recipients: List[str] = list(recipients or [])
        self.smtputf8 = False
        self.body = "7BIT"
        self.overshoot = 0  # RCPTs refused for being past MAX_RECIPIENTS
        self.chunks: Optional[ChunkedMessage] = None  # the message BDAT is building

    def log_fields(self) -> Dict[str, object]:
        """Who sent this mail to whom, as the JSON log holds it."""
        fields: Dict[str, object] = {} if self.user is None else {"user": self.user}
        fields["sender"] = self.sender
        fields.update(recipient_fields(self.recipients))
        return fields

    def close(self) -> None:
        """Drop what BDAT stored of a message that will not be delivered."""
        if self.chunks is not None:
            self.chunks.close()


class Closed(Exception):
    """The session is over (QUIT, end of input, timeout or error bound)."""
