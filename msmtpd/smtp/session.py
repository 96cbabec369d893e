"""The SMTP state machine, free of sockets.

A :class:`Session` reads command lines from a :class:`Connection` and writes
replies to it, so the daemon's request handler, ``--inetd`` and the unit
tests (on a :class:`MemoryTransport`) all run the very same code; the
connection enforces the deadlines, the session only answers.  Verbs dispatch through one
table of ``smtp_<VERB>`` methods built once per class.  Every mistake is
answered and the session goes on, up to a bound on consecutive errors.
"""

from __future__ import annotations

import re
import time
from typing import Callable, Dict, Optional

from msmtpd.base.config import is_number
from msmtpd.base.logger import log
from msmtpd.net.connection import (
    ClientNotReading,
    Connection,
    DataTooSlow,
    Overloaded,
    ShutdownRequested,
    TLSFailed,
    TLSUnavailable,
)
from msmtpd.net.peer import Peer
from msmtpd.smtp import replies
from msmtpd.smtp.address import AddressError, parse_path, shell_unsafe_character, split_path
from msmtpd.smtp.message import Spool, receive_data
from msmtpd.smtp.replies import Reply
from msmtpd.smtp.security_verbs import MAX_AUTH_FAILURES, SecurityVerbs
from msmtpd.smtp.session_parts import Authenticator, Closed, Deliver, Envelope, Settings

__all__ = ["MAX_AUTH_FAILURES", "Authenticator", "Closed", "Deliver", "Envelope", "Session", "Settings",
           "sanitise_helo"]


# RFC 5321 section 4.5.3.1.4 allows 512 octets per command line; SMTPUTF8
# addresses and long parameter lists need more, so accept a few KiB and
# answer anything longer with 500.
MAX_COMMAND_LINE = 4096
# RFC 5321 section 4.5.3.1.8 requires at least 100 recipients per message.
MAX_RECIPIENTS = 1000
# Like Postfix's smtpd_recipient_overshoot_limit: this many RCPTs past the
# limit are answered 452 without counting as errors; the client is only
# following RFC 5321 section 4.5.3.1.10 and sends the rest later.
MAX_RECIPIENT_OVERSHOOT = 1000
# Like Postfix's smtpd_hard_error_limit: this many errors in a row end the session.
MAX_CONSECUTIVE_ERRORS = 20
# A HELO/EHLO name longer than this is cut in the Received: header.
MAX_HELO_IN_HEADER = 255

BODY_TYPES = ("7BIT", "8BITMIME")
# RFC 3207 section 4: what a client may do before STARTTLS with --tls-required.
BEFORE_TLS = frozenset({"EHLO", "HELO", "STARTTLS", "NOOP", "RSET", "HELP", "QUIT"})
# Under overload, only these commands, when accepted (a reply under 400),
# move a session forward (EHLO and HELO only as its first greeting); NOOP,
# RSET, HELP, VRFY, EXPN and refused commands are junk, as in Postfix's
# smtpd_junk_command_limit.  The connection counts STARTTLS and DATA's
# content itself.  All are four letters, matched on a line's first four.
PROGRESS_VERBS = frozenset({b"EHLO", b"HELO", b"AUTH", b"MAIL", b"RCPT"})
GREETINGS = frozenset({b"EHLO", b"HELO"})
# Control characters other than TAB have no place in a command line.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


Handler = Callable[["Session", str], Optional[Reply]]


class Session(SecurityVerbs):
    """One SMTP conversation; :meth:`run` returns True when it ended with QUIT.
    STARTTLS and AUTH come from :class:`SecurityVerbs`."""

    _verbs: Dict[str, Handler] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__()
        cls._verbs = _verb_table(cls)

    def __init__(self, connection: Connection, settings: Settings,
                 deliver: Deliver, peer: Peer | str = "") -> None:
        self.connection = connection
        self.settings = settings
        self.deliver = deliver
        self.peer = peer if isinstance(peer, Peer) else Peer(peer)
        self.who = self.peer.name or "client"  # what the log lines begin with
        self.helo: Optional[str] = None
        self.esmtp = False
        self.authenticated_user: Optional[str] = self.unix_login()
        self.envelope: Optional[Envelope] = None
        self.errors = 0
        self._crlf = True  # the last command line ended in CRLF
        self.auth_failures = 0
        self.tls: Optional[str] = None  # "TLSv1.3 with ..." once TLS is up

    @property
    def idle(self) -> bool:
        """Between transactions: closing now loses nothing."""
        return self.envelope is None

    # -- the loop -------------------------------------------------------

    def run(self) -> bool:
        """Serve until QUIT (True) or until the client goes away, idles too
        long or makes too many mistakes (False)."""
        host = self.settings.hostname
        allow = self.settings.allow
        if allow is not None and not self.peer.is_unix and not allow.permits(self.peer.address):
            # Before TLS and before anything else: a refused client costs one
            # reply.  A Unix socket has no address: its mode decides who calls.
            log.info("refused %s: not in --allow", self.peer.name or "a client with no address")
            self.reply(replies.ACCESS_DENIED, final=True)
            return False
        try:
            if self.settings.tls is not None and self.settings.tls_implicit:
                # RFC 8314: TLS from the first byte; one line says both.
                self.tls = self.connection.start_tls(self.settings.tls)
                log.info("session from %s over %s", self.peer.name or "unknown peer", self.tls)
            else:
                log.info("session from %s", self.peer.name or "unknown peer")
            if self.authenticated_user is not None:
                log.info("%s: logged in as %s by its uid (--unix-login)", self.who,
                         self.authenticated_user)
            self.reply(replies.GREETING.format(host=host))
            while True:
                line = self.connection.readline(MAX_COMMAND_LINE + 1)
                if not line:
                    log.info("%s: client disconnected", self.who)
                    return False
                reply = self.handle_line(line)
                if reply is None:
                    continue
                sent = self.reply(reply, final=reply.code in (221, 421))
                if reply.code == 221:
                    return sent
                if reply.code == 421:
                    return False
        except DataTooSlow:
            log.info("%s: data too slow (under the minimum rate); nothing delivered",
                     self.who)
            self.reply(replies.DATA_TOO_SLOW.format(host=host), final=True)
            return False
        except TimeoutError:
            log.info("%s: idle timeout", self.who)
            self.reply(replies.TIMEOUT.format(host=host), final=True)
            return False
        except ShutdownRequested:
            log.info("%s: closing for shutdown", self.who)
            self.reply(replies.SHUTTING_DOWN.format(host=host), final=True)
            return False
        except Overloaded:
            log.info("%s: too busy: closing a session without progress for %.0f s while"
                     " clients wait", self.who, self.connection.unproductive_seconds)
            self.reply(replies.OVERLOADED.format(host=host), final=True)
            return False
        except Closed:
            return False
        except TLSFailed as exc:
            log.info("%s: TLS handshake failed: %s", self.who, exc)
            return False
        except TLSUnavailable:
            log.error("%s: --tls-implicit needs a socket, not a pipe", self.who)
            return False
        except ClientNotReading:
            log.info("%s: client does not read its replies; dropped", self.who)
            return False
        except OSError as exc:  # the connection broke
            log.info("%s: connection lost: %s", self.who, exc)
            return False

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

    def handle_line(self, raw: bytes) -> Optional[Reply]:
        """Answer one command line; counts consecutive errors and tells the
        connection which commands were progress (see PROGRESS_VERBS)."""
        greeted = self.helo is not None
        reply = self._dispatch(raw)
        if reply is not None and reply.code < 400:
            verb = raw.lstrip()[:4].upper()
            if verb in PROGRESS_VERBS and not (greeted and verb in GREETINGS):
                self.connection.progressed()
        if reply is None or not reply.is_error:
            self.errors = 0
            return reply
        if reply.code == 421 or self._overshooting(reply):
            return reply
        self.errors += 1
        if self.errors >= MAX_CONSECUTIVE_ERRORS:
            self.reply(reply)
            log.info("%s: too many errors", self.who)
            return replies.TOO_MANY_ERRORS.format(host=self.settings.hostname)
        return reply

    def _overshooting(self, reply: Reply) -> bool:
        """A 452 for recipients past the limit is no mistake of the client's."""
        envelope = self.envelope
        return (reply is replies.TOO_MANY_RECIPIENTS and envelope is not None
                and envelope.overshoot <= MAX_RECIPIENT_OVERSHOOT)

    def _dispatch(self, raw: bytes) -> Optional[Reply]:
        if not raw.endswith(b"\n"):
            if len(raw) > MAX_COMMAND_LINE:
                if not self.connection.skip_line():
                    raise Closed()
                return replies.LINE_TOO_LONG
        self._crlf = raw.endswith(b"\r\n")
        text = _decode_line(raw)
        if text is None:
            return replies.BAD_ENCODING
        verb, _, argument = text.partition(" ")
        # ASCII only: str.upper() would read "rſet" as RSET.
        handler = self._verbs.get(verb.upper()) if verb.isascii() else None
        if handler is None:
            return replies.UNRECOGNISED
        if self.settings.tls_required and self.tls is None and verb.upper() not in BEFORE_TLS:
            return replies.TLS_REQUIRED
        return handler(self, argument.strip())

    # -- greeting and housekeeping --------------------------------------

    def smtp_EHLO(self, argument: str) -> Reply:
        if not argument:
            return replies.SYNTAX.format(usage="EHLO hostname")
        self._greet(argument, esmtp=True)
        size = self.settings.max_size
        lines = [
            self.settings.hostname,
            "PIPELINING",
            "8BITMIME",
            "SMTPUTF8",
            f"SIZE {size}" if size else "SIZE",
            "ENHANCEDSTATUSCODES",
        ]
        if self.settings.tls is not None and self.tls is None and self.connection.can_start_tls:
            lines.append("STARTTLS")
        if self.settings.auth is not None and not self._auth_needs_tls():
            lines.append("AUTH PLAIN LOGIN")
        lines.append("HELP")
        return Reply(250, "\n".join(lines))

    def smtp_HELO(self, argument: str) -> Reply:
        if not argument:
            return replies.SYNTAX.format(usage="HELO hostname")
        self._greet(argument, esmtp=False)
        return replies.HELO_OK.format(host=self.settings.hostname)

    def _greet(self, name: str, esmtp: bool) -> None:
        self.helo = name
        self.esmtp = esmtp
        self.envelope = None

    def smtp_RSET(self, argument: str) -> Reply:
        if argument:
            return replies.SYNTAX.format(usage="RSET")
        self.envelope = None
        return replies.RESET_OK

    def smtp_NOOP(self, argument: str) -> Reply:
        return replies.OK

    def smtp_HELP(self, argument: str) -> Reply:
        extra = " STARTTLS" if self.settings.tls is not None else ""
        extra += " AUTH" if self.settings.auth is not None else ""
        return replies.HELP.format(auth=extra)

    def smtp_VRFY(self, argument: str) -> Reply:
        if self._needs_auth():
            return replies.AUTH_REQUIRED
        if not argument:
            return replies.SYNTAX.format(usage="VRFY address")
        return replies.VRFY_CANNOT

    def smtp_EXPN(self, argument: str) -> Reply:
        if self._needs_auth():
            return replies.AUTH_REQUIRED
        return replies.EXPN_REFUSED

    def smtp_QUIT(self, argument: str) -> Reply:
        return replies.BYE.format(host=self.settings.hostname)

    def _not_implemented(self, argument: str) -> Reply:
        return replies.NOT_IMPLEMENTED

    smtp_TURN = smtp_ETRN = smtp_ATRN = smtp_BDAT = _not_implemented
    smtp_SEND = smtp_SOML = smtp_SAML = _not_implemented

    # -- the transaction ------------------------------------------------

    def smtp_MAIL(self, argument: str) -> Reply:
        if self.helo is None:
            return replies.NEED_HELO
        if self._needs_auth():
            return replies.AUTH_REQUIRED
        if self.envelope is not None:
            return replies.NESTED_MAIL
        rest = _strip_keyword(argument, "FROM:")
        if rest is None:
            return replies.SYNTAX.format(usage="MAIL FROM:<address> [parameters]")
        try:
            path, params = split_path(rest)
        except AddressError as exc:
            return replies.BAD_ADDRESS.format(reason=exc)
        envelope = Envelope()
        problem = self._mail_parameters(params, envelope)
        if problem is not None:
            return problem
        sender = self._check_path(path, envelope, allow_null=True)
        if isinstance(sender, Reply):
            return sender
        user, senders = self.authenticated_user, self.settings.senders
        if user is not None and senders is not None and not senders.may_send(user, sender):
            log.info("%s: user %s may not send as <%s> (--senders)", self.who,
                     user, sender)
            return replies.SENDER_NOT_ALLOWED
        envelope.sender = sender
        self.envelope = envelope
        return replies.SENDER_OK

    def _mail_parameters(self, params: str, envelope: Envelope) -> Optional[Reply]:
        """RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8."""
        for param in params.split():
            name, _, value = param.partition("=")
            name = name.upper()
            if name == "SIZE":
                if not is_number(value):
                    return replies.BAD_SIZE
                limit = self.settings.max_size
                # Over 20 digits is over any limit (and int() refuses 4300).
                if limit and (len(value) > 20 or int(value) > limit):
                    return replies.MESSAGE_TOO_BIG.format(limit=limit)
            elif name == "BODY":
                if value.upper() not in BODY_TYPES:
                    return replies.BAD_BODY
                envelope.body = value.upper()
            elif name == "SMTPUTF8" and not value:
                envelope.smtputf8 = True
            else:
                return replies.UNKNOWN_PARAMETER.format(name=name)
        return None

    def _check_path(self, path: str, envelope: Envelope, allow_null: bool) -> str | Reply:
        try:
            address = parse_path(path, envelope.smtputf8, allow_null).address
        except AddressError as exc:
            if exc.needs_utf8:
                return replies.NEEDS_SMTPUTF8
            if exc.policy:
                return replies.ADDRESS_REFUSED.format(reason=exc)
            return replies.BAD_ADDRESS.format(reason=exc)
        if self.settings.shell_safe:
            unsafe = shell_unsafe_character(address)
            if unsafe is not None:
                return replies.ADDRESS_REFUSED.format(
                    reason=f"character {unsafe} is not allowed (--shell-safe-addresses)")
        return address

    def smtp_RCPT(self, argument: str) -> Reply:
        if self._needs_auth():
            return replies.AUTH_REQUIRED
        envelope = self.envelope
        if envelope is None:
            return replies.NEED_MAIL
        rest = _strip_keyword(argument, "TO:")
        if rest is None:
            return replies.SYNTAX.format(usage="RCPT TO:<address>")
        try:
            path, params = split_path(rest)
        except AddressError as exc:
            return replies.BAD_ADDRESS.format(reason=exc)
        if params:
            return replies.UNKNOWN_PARAMETER.format(name=params.split()[0].partition("=")[0].upper())
        if len(envelope.recipients) >= MAX_RECIPIENTS:
            envelope.overshoot += 1
            return replies.TOO_MANY_RECIPIENTS
        address = self._check_path(path, envelope, allow_null=False)
        if isinstance(address, Reply):
            return address
        envelope.recipients.append(address)
        return replies.RECIPIENT_OK

    def smtp_DATA(self, argument: str) -> Optional[Reply]:
        if self._needs_auth():
            return replies.AUTH_REQUIRED
        envelope = self.envelope
        if envelope is None:
            return replies.NEED_MAIL
        if not envelope.recipients:
            return replies.NEED_RCPT
        if argument:
            return replies.SYNTAX.format(usage="DATA")
        self.reply(replies.START_DATA)  # the connection sends it before it reads
        spool = Spool(self.settings.max_size, self.settings.spool_dir)
        self.connection.begin_data()
        try:
            spool.write(self._received_header(envelope), counted=False)
            if not receive_data(self.connection, spool, after_crlf=self._crlf):
                log.info("%s: client disconnected during DATA; nothing delivered",
                         self.who)
                raise Closed()
            self.connection.end_data()
            self.envelope = None
            return self._finish(envelope, spool)
        finally:
            self.connection.end_data()
            spool.close()

    def _finish(self, envelope: Envelope, spool: Spool) -> Reply:
        """Answer the final dot: errors found while receiving come first."""
        if spool.too_big:
            log.info("%s: message from <%s> refused: %d octets over the limit of %d",
                     self.who, envelope.sender, spool.size, spool.max_size)
            return replies.MESSAGE_TOO_BIG.format(limit=spool.max_size)
        if spool.error is not None:
            log.error("%s: cannot spool message: %s", self.who, spool.error)
            return replies.SPOOL_FAILED.format(reason=spool.error.strerror or spool.error)
        return self.deliver(envelope, spool)

    def _received_header(self, envelope: Envelope) -> bytes:
        """RFC 5321 section 4.4 trace header; the client's HELO name is
        sanitised so it cannot inject header lines."""
        helo = sanitise_helo(self.helo or "")
        # RFC 3848 and RFC 6531: ESMTP, ESMTPS, ESMTPA, ESMTPSA, UTF8SMTPSA ...
        protocol = "UTF8SMTP" if envelope.smtputf8 else ("ESMTP" if self.esmtp else "SMTP")
        if self.tls is not None and protocol != "SMTP":
            protocol += "S"
        if self.authenticated_user is not None:
            protocol += "A"
        tls = f" ({self.tls})" if self.tls is not None else ""
        date = time.strftime("%a, %d %b %Y %H:%M:%S %z")
        peer = self.peer.address_literal
        if self.peer.is_unix and self.authenticated_user is not None:
            peer += f", user {sanitise_helo(self.authenticated_user)}"
        return (
            f"Received: from {helo} ({peer})\n"
            f"\tby {self.settings.hostname} (msmtpd) with {protocol}{tls};\n"
            f"\t{date}\n"
        ).encode()


def sanitise_helo(name: str) -> str:
    """Printable ASCII only, no comment delimiters, bounded length."""
    cleaned = "".join(c if 32 < ord(c) < 127 and c not in "()\\" else "?" for c in name)
    return cleaned[:MAX_HELO_IN_HEADER] or "unknown"


def _decode_line(raw: bytes) -> Optional[str]:
    """The command text without its line ending; None for invalid UTF-8
    or control characters."""
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _CONTROL.search(text):
        return None
    return text.strip()


def _strip_keyword(argument: str, keyword: str) -> Optional[str]:
    """``FROM:<a>`` or ``FROM: <a>`` (accepted, as most servers do)."""
    if argument[: len(keyword)].upper() != keyword:
        return None
    return argument[len(keyword) :].strip()


def _verb_table(cls: type) -> Dict[str, Handler]:
    return {name[5:]: getattr(cls, name) for name in dir(cls) if name.startswith("smtp_")}


Session._verbs = _verb_table(Session)
