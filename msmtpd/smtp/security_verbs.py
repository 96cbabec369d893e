"""The session's STARTTLS (RFC 3207, RFC 8314) and AUTH (RFC 4954) verbs:
who may send a password, when, and over what.  A base class of
:class:`msmtpd.smtp.session.Session`; the state they use is
:class:`msmtpd.smtp.session_state.SessionState`'s, and the decoding of
what the client sends is :mod:`msmtpd.smtp.sasl`."""

from __future__ import annotations

from msmtpd.base.logger import log
from msmtpd.smtp import replies, sasl
from msmtpd.smtp.replies import Reply
from msmtpd.smtp.sasl import Credentials
from msmtpd.smtp.session_parts import Closed
from msmtpd.smtp.session_state import SessionState

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Optional, Union

    from msmtpd.smtp.session_parts import Authenticator

# A session that fails authentication this often is closed.
MAX_AUTH_FAILURES = 3
# The longest AUTH answer, as for a command line.
MAX_AUTH_LINE = 4096
# What an exchange that gave no usable credentials is checked as: no
# user's name is empty, so this costs the work of an unknown name.
NO_CREDENTIALS = (b"", b"")


class SecurityVerbs(SessionState):
    """STARTTLS and AUTH."""

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
        description = self.connection.start_tls(self.settings.tls)
        self.count_tls(description)
        log.info("%s: TLS started: %s", self.who, description, event="tls", peer=self.who,
                 tls=str(description))
        # RFC 3207 section 4.2: forget everything learnt in plain text.
        self.helo = None
        self.esmtp = False
        self.drop_transaction()
        self.authenticated_user = self.unix_login()  # the kernel's word outlives the handshake
        return None

    # -- authentication (RFC 4954) --------------------------------------

    def smtp_AUTH(self, argument: str) -> Reply:
        auth = self.settings.auth
        if auth is None:
            return replies.NOT_IMPLEMENTED
        if self.auth_needs_tls():
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

    def _authenticate(self, auth: Authenticator, exchange: Union[Credentials, Reply]) -> Reply:
        """Check what the exchange gave.  Whatever it gave (nothing usable,
        an unknown name, a known one) costs the same delay and the same
        work, so the answer's time tells nothing."""
        auth.wait()
        if isinstance(exchange, Reply):
            auth.check(*NO_CREDENTIALS)
            return exchange
        matched = auth.check(exchange.user, exchange.password)
        user = exchange.user.decode("utf-8", "replace")
        as_self = sasl.acts_as_self(exchange)
        if matched and as_self:
            self.authenticated_user = user
            log.info("%s: authenticated as %s", self.who, user, event="auth", peer=self.who,
                     user=user, result="success")
            self.count("msmtpd_auth_total", "success")
            return replies.AUTH_OK
        auth.failed()
        self.auth_failures += 1
        self.count("msmtpd_auth_total", "failure")
        if as_self:
            log.info("%s: authentication failed for user %s", self.who, user, event="auth",
                     peer=self.who, user=user, result="failure")
            reply = replies.AUTH_FAILED
        else:
            authzid = exchange.authzid.decode("utf-8", "replace")
            log.info("%s: authentication failed for user %s: may not act as %s",
                     self.who, user, authzid, event="auth", peer=self.who, user=user,
                     result="failure", authzid=authzid)
            reply = replies.AUTH_OTHER_IDENTITY
        if self.auth_failures >= MAX_AUTH_FAILURES:
            self.ending = "auth_failures"
            self.reply(reply)
            return replies.TOO_MANY_AUTH_FAILURES.format(host=self.settings.hostname)
        return reply

    def _auth_plain(self, initial: str) -> Union[Credentials, Reply]:
        message = self._answer("", initial)
        return message if isinstance(message, Reply) else sasl.plain_credentials(message)

    def _auth_login(self, initial: str) -> Union[Credentials, Reply]:
        user = self._answer(sasl.LOGIN_USER_CHALLENGE, initial)
        if isinstance(user, Reply):
            return user
        password = self._answer(sasl.LOGIN_PASSWORD_CHALLENGE)
        if isinstance(password, Reply):
            return password
        return Credentials(user, password)

    def _answer(self, challenge: str, initial: str = "") -> Union[bytes, Reply]:
        """The client's answer, decoded: the initial response if it gave
        one, else what it sends back to a 334 ``challenge``."""
        if not initial:
            response = self._challenge(challenge)
            if isinstance(response, Reply):
                return response
            initial = response
        return sasl.decode_response(initial)

    def _challenge(self, challenge: str) -> Union[str, Reply]:
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
        if answer == sasl.CANCEL:
            return replies.AUTH_CANCELLED
        return answer
