"""The session's STARTTLS (RFC 3207, RFC 8314) and AUTH (RFC 4954) verbs,
as a mixin of :class:`msmtpd.session.Session`: who may send a password,
when, and over what."""

from __future__ import annotations

import base64
import binascii
from typing import Optional

from msmtpd import replies
from msmtpd.connection import Connection
from msmtpd.log import log
from msmtpd.replies import Reply
from msmtpd.session_types import Closed, Envelope, Settings

# A session that fails authentication this often is closed.
MAX_AUTH_FAILURES = 3
# The longest AUTH answer, as for a command line.
MAX_AUTH_LINE = 4096


class SecurityVerbs:
    """STARTTLS and AUTH; the state they use belongs to the Session."""

    settings: Settings
    connection: Connection
    peer: str
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
        self.authenticated_user = None
        return None

    def _start_tls(self) -> None:
        self.tls = self.connection.start_tls(self.settings.tls)
        log.info("%s: TLS started: %s", self.peer or "client", self.tls)

    def _auth_needs_tls(self) -> bool:
        """With a certificate, a peer that is not on this machine may send
        its password only under TLS (like aiosmtpd's auth_require_tls)."""
        return self.settings.tls is not None and self.tls is None and not is_local(self.peer)

    # -- authentication (RFC 4954) --------------------------------------

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
            credentials = self._auth_plain(initial.strip())
        elif mechanism == "LOGIN":
            credentials = self._auth_login(initial.strip())
        elif not mechanism:
            return replies.SYNTAX.format(usage="AUTH mechanism [initial-response]")
        else:
            return replies.AUTH_MECHANISM
        if isinstance(credentials, Reply):
            return credentials
        user, password = credentials
        auth.wait()
        if auth.check(user, password):
            self.authenticated_user = user
            log.info("%s: authenticated as %s", self.peer or "client", user)
            return replies.AUTH_OK
        auth.failed()
        self.auth_failures += 1
        log.info("%s: authentication failed for user %s", self.peer or "client", user)
        if self.auth_failures >= MAX_AUTH_FAILURES:
            self.reply(replies.AUTH_FAILED)
            return replies.TOO_MANY_AUTH_FAILURES.format(host=self.settings.hostname)
        return replies.AUTH_FAILED

    def _auth_plain(self, initial: str) -> tuple[str, str] | Reply:
        decoded = self._answer("", initial)
        if isinstance(decoded, Reply):
            return decoded
        parts = decoded.split(b"\0")
        if len(parts) != 3:
            return replies.AUTH_BAD_BASE64
        _authzid, user, password = parts
        return user.decode("utf-8", "replace"), password.decode("utf-8", "replace")

    def _auth_login(self, initial: str) -> tuple[str, str] | Reply:
        user = self._answer("VXNlcm5hbWU6", initial)  # "Username:"
        if isinstance(user, Reply):
            return user
        password = self._answer("UGFzc3dvcmQ6")  # "Password:"
        if isinstance(password, Reply):
            return password
        return user.decode("utf-8", "replace"), password.decode("utf-8", "replace")

    def _answer(self, challenge: str, initial: str = "") -> bytes | Reply:
        """The client's answer, decoded: the initial response if it gave
        one, else what it sends back to a 334 ``challenge``."""
        if not initial:
            response = self._challenge(challenge)
            if isinstance(response, Reply):
                return response
            initial = response
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


def is_local(peer: str) -> bool:
    """A loopback address, or no network at all (a pipe)."""
    if not peer:
        return True
    from msmtpd.allow import addresses_of

    return any(address.is_loopback for address in addresses_of(peer))


def _b64decode(text: str) -> Optional[bytes]:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
