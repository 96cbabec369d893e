"""Every SMTP reply the server sends, defined once and shared with the tests.

Codes follow RFC 5321 section 4.2; the enhanced status codes (x.y.z) follow
RFC 3463 and are announced with ENHANCEDSTATUSCODES (RFC 2034).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Tuple

    _CodeAndText = Tuple[int, str]
else:
    _CodeAndText = tuple


class Reply(_CodeAndText):
    """A reply code and its text: a plain tuple subclass, which a
    ``NamedTuple`` was (equal to the same pair, unpacked the same way)
    without the ``typing`` import and the class generation (about 1 ms of
    every --inetd session)."""

    __slots__ = ()

    def __new__(cls, code: int, text: str) -> Reply:
        return tuple.__new__(cls, (code, text))

    @property
    def code(self) -> int:
        return self[0]

    @property
    def text(self) -> str:
        return self[1]

    def __getnewargs__(self) -> tuple[int, str]:  # copy and pickle
        return self[0], self[1]

    def __repr__(self) -> str:
        return f"Reply(code={self[0]!r}, text={self[1]!r})"

    def encode(self) -> bytes:
        """The reply as it goes on the wire; a text with newlines becomes a
        multi-line reply (RFC 5321 section 4.2.1)."""
        wire = _ENCODED.get(self)
        return self._wire() if wire is None else wire

    def _wire(self) -> bytes:
        lines = self.text.split("\n")
        out = [f"{self.code}-{line}\r\n" for line in lines[:-1]]
        out.append(f"{self.code} {lines[-1]}\r\n")
        return "".join(out).encode("utf-8", "replace")

    def format(self, **values: object) -> Reply:
        return Reply(self.code, self.text.format(**values))

    @property
    def is_error(self) -> bool:
        return self.code >= 400


def reply_text(reply: Reply) -> str:
    """A reply as one log field: its code, then its text."""
    return f"{reply.code} {reply.text}"


GREETING = Reply(220, "{host} ESMTP msmtpd")
BYE = Reply(221, "2.0.0 {host} closing connection")
HELP = Reply(
    214,
    "2.0.0 Commands supported:\n"
    "2.0.0 EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY EXPN HELP QUIT{auth}\n"
    "2.0.0 Mail is piped to a local command for delivery",
)
OK = Reply(250, "2.0.0 OK")
HELO_OK = Reply(250, "{host}")
SENDER_OK = Reply(250, "2.1.0 Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5 Recipient OK")
RESET_OK = Reply(250, "2.0.0 Reset OK")
VRFY_CANNOT = Reply(252, "2.5.2 Cannot verify the user, but will accept mail for it")
CHUNK_OK = Reply(250, "2.0.0 {size} octets received")
START_DATA = Reply(354, "End data with <CR><LF>.<CR><LF>")
READY_FOR_TLS = Reply(220, "2.0.0 Ready to start TLS")

TIMEOUT = Reply(421, "4.4.2 {host} Idle too long, closing connection")
TOO_MANY_ERRORS = Reply(421, "4.7.0 {host} Too many errors, closing connection")
TOO_MANY_AUTH_FAILURES = Reply(421, "4.7.0 {host} Too many authentication failures, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2 {host} Service shutting down, try again later")
OVERLOADED = Reply(421, "4.3.2 {host} Too busy, closing idle connection; try again later")
DATA_TOO_SLOW = Reply(421, "4.4.2 {host} Data too slow, closing connection")
# --rate-limit: the client keeps the mail and retries (RFC 5321 section 4.2.5).
RATE_LIMITED = Reply(450, "4.7.1 Rate limit of {count} mails per {period} reached;"
                          " try again in {wait} seconds")
SPOOL_FAILED = Reply(451, "4.3.0 Cannot store the message: {reason}")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3 Too many recipients")
TLS_UNAVAILABLE = Reply(454, "4.7.0 TLS not available: the connection is not a socket")

LINE_TOO_LONG = Reply(500, "5.5.2 Line too long")
UNRECOGNISED = Reply(500, "5.5.2 Command not recognised")
BAD_ENCODING = Reply(500, "5.5.2 Command is not valid UTF-8 or contains control characters")
SYNTAX = Reply(501, "5.5.4 Syntax: {usage}")
BAD_ADDRESS = Reply(501, "5.1.3 Bad address syntax: {reason}")
BAD_BODY = Reply(501, "5.5.4 BODY must be 7BIT or 8BITMIME")
# RFC 3030 section 2: chunk-size is 1*DIGIT, end-marker "LAST".
BDAT_SYNTAX = Reply(501, "5.5.4 Syntax: BDAT size [LAST]")
BDAT_SIZE_TOO_LARGE = Reply(501, "5.5.4 BDAT size must be a number of at most {digits} digits")
BAD_SIZE = Reply(501, "5.5.4 SIZE must be a number of octets")
NOT_IMPLEMENTED = Reply(502, "5.5.1 Command not implemented")
EXPN_REFUSED = Reply(502, "5.5.1 EXPN is not supported")
NEED_HELO = Reply(503, "5.5.1 Send EHLO or HELO first")
NEED_MAIL = Reply(503, "5.5.1 Send MAIL FROM first")
NEED_RCPT = Reply(503, "5.5.1 Send RCPT TO first")
NESTED_MAIL = Reply(503, "5.5.1 Sender already given; send RSET to start over")
# RFC 3030 section 3: DATA and BDAT cannot be mixed in one transaction.
DATA_AFTER_BDAT = Reply(503, "5.5.1 DATA cannot follow BDAT in one transaction; send RSET")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1 Already authenticated")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1 TLS already active")
TLS_REQUIRED = Reply(530, "5.7.0 Must issue a STARTTLS command first")
ENCRYPTION_REQUIRED = Reply(538, "5.7.11 Encryption required for requested authentication mechanism")
AUTH_REQUIRED = Reply(530, "5.7.0 Authentication required")
AUTH_FAILED = Reply(535, "5.7.8 Authentication credentials invalid")
AUTH_CANCELLED = Reply(501, "5.7.0 Authentication cancelled")
AUTH_BAD_BASE64 = Reply(501, "5.5.2 Cannot decode the response (bad base64)")
# RFC 4954 section 4: "=" is an empty initial response, which holds no PLAIN credentials.
AUTH_PLAIN_EMPTY = Reply(501, "5.5.2 Empty response: AUTH PLAIN needs [authzid] NUL user NUL password")
AUTH_PLAIN_MALFORMED = Reply(501, "5.5.2 AUTH PLAIN needs [authzid] NUL user NUL password")
# RFC 4616 section 2: an authorization identity that is neither empty nor the user's own.
AUTH_OTHER_IDENTITY = Reply(535, "5.7.8 Authentication refused: the authorization identity"
                                 " must be empty or the user name")
AUTH_MECHANISM = Reply(504, "5.5.4 Unsupported authentication mechanism; use PLAIN or LOGIN")
AUTH_OK = Reply(235, "2.7.0 Authentication successful")
AUTH_CHALLENGE = Reply(334, "{challenge}")
MESSAGE_TOO_BIG = Reply(552, "5.3.4 Message exceeds the size limit of {limit} octets")
ADDRESS_REFUSED = Reply(553, "5.1.3 Address refused: {reason}")
SENDER_NOT_ALLOWED = Reply(553, "5.7.1 Sender address not allowed for this user")
NEEDS_SMTPUTF8 = Reply(553, "5.6.7 Non-ASCII address requires the SMTPUTF8 parameter")
# RFC 3030 section 3: BINARYMIME is not offered.
BINARYMIME_REFUSED = Reply(555, "5.5.4 BODY=BINARYMIME is not supported; use 7BIT or 8BITMIME")
UNKNOWN_PARAMETER = Reply(555, "5.5.4 Unsupported parameter {name}")

ACCESS_DENIED = Reply(554, "5.7.1 Access denied")
# RFC 5321 section 6.3: a mail that has passed too many relays is looping.
TOO_MANY_HOPS = Reply(554, "5.4.6 Too many hops")

DELIVERED = Reply(250, "2.0.0 OK, mail was handed to the delivery command")
DELIVERY_TEMPFAIL = Reply(451, "4.3.0 Delivery failed temporarily: {why}; try again later")
DELIVERY_FAILED = Reply(554, "5.3.0 Delivery failed: {why}")

# --queue: 250 only once the mail is on disk; 451 when it cannot be stored.
QUEUED = Reply(250, "2.0.0 OK, queued as {id}")
# --queue-first-try: the session's own attempt failed temporarily or ran out
# of time; the runner goes on trying.
QUEUED_AFTER_TRY = Reply(250, "2.0.0 OK, queued as {id}; first try: {why}; will retry")
QUEUE_FAILED = Reply(451, "4.3.0 Cannot queue the message: {reason}; try again later")

# The replies above encoded once, at import: the same few go out for every
# mail.  Formatted replies (a host name, a size, what a client sent) are
# encoded each time and never kept, so no client can grow this.
_ENCODED: dict[Reply, bytes] = {reply: reply._wire() for reply in list(globals().values())
                                if isinstance(reply, Reply)}
