"""The session's STARTTLS (RFC 3207, RFC 8314) and AUTH (RFC 4954) verbs,
as a mixin of :class:`msmtpd.smtp.session.Session`: who may send a password,
when, and over what."""

from __future__ import annotations

import base64
import binascii
from typing import NamedTuple, Optional

from msmtpd.base.logger import log
from msmtpd.net.connection import Connection
from msmtpd.net.peer import Peer
from msmtpd.smtp import replies
from msmtpd.smtp.replies import Reply
from msmtpd.smtp.session_parts import Authenticator, Closed, Envelope, Settings

# A session that fails authentication this often is closed.
MAX_AUTH_FAILURES = 3
# The longest AUTH answer, as for a command line.
MAX_AUTH_LINE = 4096
# What an exchange that gave no usable credentials is checked as: no
# user's name is empty, so this costs the work of an unknown name.
NO_CREDENTIALS = (b"", b"")


class Credentials(NamedTuple):
    """What the client sent, exactly as bytes: nothing is decoded before
    the comparison, so two different passwords can never become equal."""

    user: bytes
    password: bytes
    authzid: bytes = b""  # AUTH PLAIN's authorization identity (RFC 4616)


class SecurityVerbs:
    """STARTTLS and AUTH; the state they use belongs to the Session."""

    settings: Settings
    connection: Connection
    peer: Peer
    who: str
    helo: Optional[str]
    esmtp: bool
    envelope: Optional[Envelope]
    authenticated_user: Optional[str]
    auth_failures: int
    tls: Optional[str]

    def reply(self, reply: Reply, final: bool = False) -> bool:
        raise NotImplementedError

    # -- TLS (RFC 3207, RFC 8314) ---------------------------------------

    def smtp_STARTTLS(self, argument: str) -> Optional[Reply]:
        if self.settings.tls is None:
            return replies.NOT_IMPLEMENTED
        if argument:
            return replies.SYNTAX.format(usage="STARTTLS")
        if self.tls is not None:
            return replies.TLS_ALREADY_ACTIVE
        if not self.connection.can_start_tls:
            return replies.TLS_UNAVAILABLE
        self.reply(replies.READY_FOR_TLS, final=True)
        self._start_tls()
        # RFC 3207 section 4.2: forget everything learnt in plain text.
        self.helo = None
        self.esmtp = False
        self.envelope = None
        self.authenticated_user = self.unix_login()  # the kernel's word outlives the handshake
        return None

    def _start_tls(self) -> None:
        self.tls = self.connection.start_tls(self.settings.tls)
        log.info("%s: TLS started: %s", self.who, self.tls)

    def _auth_needs_tls(self) -> bool:
        """With a certificate, a peer that is not on this machine may send
        its password only under TLS (like aiosmtpd's auth_require_tls)."""
        return self.settings.tls is not None and self.tls is None and not self.peer.is_local

    # -- authentication (RFC 4954) --------------------------------------

    def unix_login(self) -> Optional[str]:
        """``--unix-login``: the user a Unix-socket caller is logged in as
        without AUTH, the name of its uid (None for a uid with no name, or
        for any other peer)."""
        if self.settings.unix_login and self.peer.is_unix:
            return self.peer.user
        return None

    def smtp_AUTH(self, argument: str) -> Reply:
        auth = self.settings.auth
        if auth is None:
            return replies.NOT_IMPLEMENTED
        if self._auth_needs_tls():
            return replies.ENCRYPTION_REQUIRED
        if self.helo is None or not self.esmtp:
            return replies.NEED_HELO
        if self.authenticated_user is not None:
            return replies.ALREADY_AUTHENTICATED
        if self.envelope is not None:
            return replies.NESTED_MAIL
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if mechanism == "PLAIN":
            exchange = self._auth_plain(initial.strip())
        elif mechanism == "LOGIN":
            exchange = self._auth_login(initial.strip())
        elif not mechanism:
            return replies.SYNTAX.format(usage="AUTH mechanism [initial-response]")
        else:
            return replies.AUTH_MECHANISM
        return self._authenticate(auth, exchange)

    def _authenticate(self, auth: Authenticator, exchange: Credentials | Reply) -> Reply:
        """Check what the exchange gave.  Whatever it gave (nothing usable,
        an unknown name, a known one) costs the same delay and the same
        work, so the answer's time tells nothing."""
        auth.wait()
        if isinstance(exchange, Reply):
            auth.check(*NO_CREDENTIALS)
            return exchange
        matched = auth.check(exchange.user, exchange.password)
        user = exchange.user.decode("utf-8", "replace")
        # RFC 4616 section 2: an authorization identity other than the
        # user's own would be acting as someone else, which no one may.
        as_self = exchange.authzid in (b"", exchange.user)
        if matched and as_self:
            self.authenticated_user = user
            log.info("%s: authenticated as %s", self.who, user)
            return replies.AUTH_OK
        auth.failed()
        self.auth_failures += 1
        if as_self:
            log.info("%s: authentication failed for user %s", self.who, user)
            reply = replies.AUTH_FAILED
        else:
            log.info("%s: authentication failed for user %s: may not act as %s",
                     self.who, user, exchange.authzid.decode("utf-8", "replace"))
            reply = replies.AUTH_OTHER_IDENTITY
        if self.auth_failures >= MAX_AUTH_FAILURES:
            self.reply(reply)
            return replies.TOO_MANY_AUTH_FAILURES.format(host=self.settings.hostname)
        return reply

    def _auth_plain(self, initial: str) -> Credentials | Reply:
        decoded = self._answer("", initial)
        if isinstance(decoded, Reply):
            return decoded
        if not decoded:
            return replies.AUTH_PLAIN_EMPTY
        parts = decoded.split(b"\0")
        if len(parts) != 3:
            return replies.AUTH_PLAIN_MALFORMED
        authzid, user, password = parts
        return Credentials(user, password, authzid)

    def _auth_login(self, initial: str) -> Credentials | Reply:
        user = self._answer("VXNlcm5hbWU6", initial)  # "Username:"
        if isinstance(user, Reply):
            return user
        password = self._answer("UGFzc3dvcmQ6")  # "Password:"
        if isinstance(password, Reply):
            return password
        return Credentials(user, password)

    def _answer(self, challenge: str, initial: str = "") -> bytes | Reply:
        """The client's answer, decoded: the initial response if it gave
        one, else what it sends back to a 334 ``challenge``."""
        if not initial:
            response = self._challenge(challenge)
            if isinstance(response, Reply):
                return response
            initial = response
        if initial == "=":
            return b""  # RFC 4954 section 4: an empty (initial) response
        decoded = _b64decode(initial)
        return replies.AUTH_BAD_BASE64 if decoded is None else decoded

    def _challenge(self, challenge: str) -> str | Reply:
        """Send a 334 and read the client's answer; ``*`` cancels."""
        self.reply(replies.AUTH_CHALLENGE.format(challenge=challenge), final=True)
        line = self.connection.readline(MAX_AUTH_LINE + 1)
        if not line:
            raise Closed()
        if not line.endswith(b"\n"):
            if not self.connection.skip_line():
                raise Closed()
            return replies.LINE_TOO_LONG
        answer = line.decode("ascii", "replace").strip()
        if answer == "*":
            return replies.AUTH_CANCELLED
        return answer

    def _needs_auth(self) -> bool:
        return self.settings.auth is not None and self.authenticated_user is None


def _b64decode(text: str) -> Optional[bytes]:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
