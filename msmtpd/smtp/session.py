"""The SMTP state machine, free of sockets.

A :class:`Session` reads command lines from a :class:`Connection` and writes
replies to it, so the daemon's request handler, ``--inetd`` and the unit
tests (on a :class:`MemoryTransport`) all run the very same code; the
connection enforces the deadlines, the session only answers.  Verbs dispatch through one
table of ``smtp_<VERB>`` methods built once per class.  Every mistake is
answered and the session goes on, up to a bound on consecutive errors.
"""

from __future__ import annotations

from msmtpd.base.logger import ERROR, INFO, log
from msmtpd.net.connection import (
    ClientNotReading,
    DataTooSlow,
    Overloaded,
    ShutdownRequested,
    TLSFailed,
    TLSUnavailable,
)
from msmtpd.smtp import replies
from msmtpd.smtp.chunking import ChunkingVerbs
from msmtpd.smtp.replies import Reply, reply_text
from msmtpd.smtp.security_verbs import MAX_AUTH_FAILURES, SecurityVerbs
from msmtpd.smtp.session_parts import Closed, Envelope, Settings
from msmtpd.smtp.transaction_verbs import (
    MAX_HELO_IN_HEADER,
    MAX_RECIPIENT_OVERSHOOT,
    MAX_RECIPIENTS,
    sanitise_helo,
)

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Callable, Dict, Optional, Type

    Handler = Callable[["Session", str], Optional["Reply"]]

__all__ = ["MAX_AUTH_FAILURES", "MAX_HELO_IN_HEADER", "MAX_RECIPIENTS", "Closed", "Envelope", "Session",
           "Settings", "sanitise_helo"]


# RFC 5321 section 4.5.3.1.4 allows 512 octets per command line; SMTPUTF8
# addresses and long parameter lists need more, so accept a few KiB and
# answer anything longer with 500.
MAX_COMMAND_LINE = 4096
# Like Postfix's smtpd_hard_error_limit: this many errors in a row end the session.
MAX_CONSECUTIVE_ERRORS = 20
# The gates, checked in this order by the one dispatch before a verb runs.
# RFC 3207 section 4: what a client may do before STARTTLS with --tls-required.
BEFORE_TLS = frozenset({"EHLO", "HELO", "STARTTLS", "NOOP", "RSET", "HELP", "QUIT"})
# RFC 5321 section 4.1.4: a transaction starts after a greeting (503).
AFTER_GREETING = frozenset({"MAIL"})
# Contract 8: with --auth or --auth-file, what is refused (530) until the
# client has authenticated; EHLO, HELO, AUTH, STARTTLS, NOOP, RSET, HELP
# and QUIT are answered, and so are the verbs not implemented at all (502).
AFTER_AUTH = frozenset({"MAIL", "RCPT", "DATA", "BDAT", "VRFY", "EXPN"})
# Under overload, only these commands, when accepted (a reply under 400),
# move a session forward (EHLO and HELO only as its first greeting); NOOP,
# RSET, HELP, VRFY, EXPN and refused commands are junk, as in Postfix's
# smtpd_junk_command_limit.  The connection counts STARTTLS and DATA's
# content itself.  All are four letters, matched on a line's first four.
PROGRESS_VERBS = frozenset({b"EHLO", b"HELO", b"AUTH", b"MAIL", b"RCPT"})
GREETINGS = frozenset({b"EHLO", b"HELO"})
# Control characters other than TAB have no place in a command line.  (In
# UTF-8 these octets stand only for themselves, so the raw line is searched;
# bytes.translate spares --inetd the import of re.)
_CONTROL = bytes([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F])


class Ending:
    """How a session ends on an exception: its name (in --metrics,
    ``msmtpd_sessions_total{ending=...}``, and the JSON log's ``reason``),
    the log line after the peer's name (None: none), and the last reply
    (None: no reply can reach the client, or none is owed)."""

    __slots__ = ("name", "exception", "message", "reply", "level")

    def __init__(self, name: str, exception: Type[BaseException], message: Optional[str],
                 reply: Optional[Reply], level: int = INFO) -> None:
        self.name = name
        self.exception = exception
        self.message = message  # formatted with {exc} and {unproductive} (seconds)
        self.reply = reply  # formatted with {host}
        self.level = level


# Every way a session ends but QUIT and end of input; the first that
# matches wins, so a subclass stands before its base (DataTooSlow is a
# TimeoutError; TimeoutError, TLSFailed and ClientNotReading are OSErrors).
ENDINGS = (
    Ending("data_too_slow", DataTooSlow,
           "data too slow (under the minimum rate); nothing delivered", replies.DATA_TOO_SLOW),
    Ending("timeout", TimeoutError, "idle timeout", replies.TIMEOUT),
    Ending("shutdown", ShutdownRequested, "closing for shutdown", replies.SHUTTING_DOWN),
    Ending("overload", Overloaded, "too busy: closing a session without progress for"
           " {unproductive:.0f} s while clients wait", replies.OVERLOADED),
    Ending("closed", Closed, None, None),
    Ending("tls_failed", TLSFailed, "TLS handshake failed: {exc}", None),
    Ending("tls_unavailable", TLSUnavailable, "--tls-implicit needs a socket, not a pipe", None,
           ERROR),
    Ending("client_not_reading", ClientNotReading, "client does not read its replies; dropped",
           None),
    Ending("connection_lost", OSError, "connection lost: {exc}", None),  # the connection broke
)
ENDING_EXCEPTIONS = tuple(ending.exception for ending in ENDINGS)
# Endings without an exception (also names in msmtpd_sessions_total).
QUIT, DISCONNECT, ERROR_LIMIT, ALLOW_REFUSED = "quit", "disconnect", "error_limit", "allow_refused"



class Session(ChunkingVerbs, SecurityVerbs):
    """One SMTP conversation; :meth:`run` returns True when it ended with QUIT.
    Its state is :class:`SessionState`'s; MAIL, RCPT and DATA come from
    :class:`TransactionVerbs`, BDAT from :class:`ChunkingVerbs`, STARTTLS
    and AUTH from :class:`SecurityVerbs`."""

    _verbs: Dict[str, Handler] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__()
        cls._verbs = _verb_table(cls)

    # -- the loop -------------------------------------------------------

    def run(self) -> bool:
        """Serve until QUIT (True) or until the client goes away, idles too
        long or makes too many mistakes (False)."""
        try:
            if not self._admitted():
                self.ending = ALLOW_REFUSED
                return False
            self._open()
            return self._serve()
        except ENDING_EXCEPTIONS as exc:
            self._end(exc)
            return False
        finally:
            self.drop_transaction()
            self.count("msmtpd_sessions_total", self.ending)

    def _admitted(self) -> bool:
        """--allow, before TLS and before anything else: a refused client
        costs one reply.  A Unix socket has no address: its mode decides
        who calls."""
        allow = self.settings.allow
        if allow is None or self.peer.is_unix or allow.permits(self.peer.address):
            return True
        log.info("refused %s: not in --allow", self.peer.name or "a client with no address",
                 event="refused", peer=self.who, reason="allow",
                 reply=reply_text(replies.ACCESS_DENIED))
        self.count("msmtpd_refusals_total", "allow")
        self.reply(replies.ACCESS_DENIED, final=True)
        return False

    def _open(self) -> None:
        """Implicit TLS (RFC 8314: from the first byte) if asked, then the
        greeting; one log line says both."""
        if self.settings.tls is not None and self.settings.tls_implicit:
            tls = self.connection.start_tls(self.settings.tls)
            self.count_tls(tls)
            log.info("session from %s over %s", self.peer.name or "unknown peer", tls,
                     event="session_start", peer=self.who, tls=str(tls))
        else:
            log.info("session from %s", self.peer.name or "unknown peer", event="session_start",
                     peer=self.who)
        if self.authenticated_user is not None:
            log.info("%s: logged in as %s by its uid (--unix-login)", self.who,
                     self.authenticated_user, event="auth", peer=self.who,
                     user=self.authenticated_user, result="unix_login")
        self.reply(replies.GREETING.format(host=self.settings.hostname))

    def _serve(self) -> bool:
        """Answer command lines until QUIT (True), 421 or end of input."""
        while True:
            line = self.connection.readline(MAX_COMMAND_LINE + 1)
            if not line:
                log.info("%s: client disconnected", self.who, event="session_end", peer=self.who,
                         reason="disconnected")
                return False
            reply = self.handle_line(line)
            if reply is None:
                continue
            sent = self.reply(reply, final=reply.code in (221, 421))
            if reply.code == 221:
                self.ending = QUIT
                return sent
            if reply.code == 421:
                return False

    def _end(self, exc: BaseException) -> None:
        """Log why the session ends and send its last reply, as ENDINGS says."""
        ending = next(ending for ending in ENDINGS if isinstance(exc, ending.exception))
        self.ending = ending.name
        if ending.message is not None:
            message = ending.message.format(exc=exc, unproductive=self.connection.unproductive_seconds)
            log.log(ending.level, "%s: %s", self.who, message, event="session_end", peer=self.who,
                    reason=ending.name, error=message)
        if ending.reply is not None:
            self.reply(ending.reply.format(host=self.settings.hostname), final=True)

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
        # Chunks sent behind one that failed (RFC 3030 section 2) are no new
        # mistakes: they were on their way before the client knew.
        if reply.code == 421 or self._overshooting(reply) or self.repeating_refusal:
            return reply
        self.errors += 1
        if self.errors >= MAX_CONSECUTIVE_ERRORS:
            self.reply(reply)
            log.info("%s: too many errors", self.who, event="session_end", peer=self.who,
                     reason=ERROR_LIMIT)
            self.ending = ERROR_LIMIT
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
        self.repeating_refusal = False
        self.after_crlf = raw.endswith(b"\r\n")
        text = _decode_line(raw)
        if text is None:
            return replies.BAD_ENCODING
        verb, _, argument = text.partition(" ")
        # ASCII only: str.upper() would read "rſet" as RSET.
        verb = verb.upper() if verb.isascii() else ""
        handler = self._verbs.get(verb)
        if verb != "BDAT":
            self.refused_chunks = None  # the failed BDAT transaction's chunks are over
        if handler is None:
            return replies.UNRECOGNISED
        refused = self._gate(verb)
        if refused is not None:
            self.discard_refused(verb, argument.strip())
            return refused
        return handler(self, argument.strip())

    def _gate(self, verb: str) -> Optional[Reply]:
        """What sets of verbs need first: TLS with --tls-required, a
        greeting, then authentication with --auth."""
        if self.settings.tls_required and self.tls is None and verb not in BEFORE_TLS:
            return replies.TLS_REQUIRED
        if verb in AFTER_GREETING and self.helo is None:
            return replies.NEED_HELO
        if verb in AFTER_AUTH and self.needs_auth():
            return replies.AUTH_REQUIRED
        return None

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
            "CHUNKING",
        ]
        if self.settings.tls is not None and self.tls is None and self.connection.can_start_tls:
            lines.append("STARTTLS")
        if self.settings.auth is not None and not self.auth_needs_tls():
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
        self.drop_transaction()

    def smtp_RSET(self, argument: str) -> Reply:
        if argument:
            return replies.SYNTAX.format(usage="RSET")
        self.drop_transaction()
        return replies.RESET_OK

    def smtp_NOOP(self, argument: str) -> Reply:
        return replies.OK

    def smtp_HELP(self, argument: str) -> Reply:
        extra = " STARTTLS" if self.settings.tls is not None else ""
        extra += " AUTH" if self.settings.auth is not None else ""
        return replies.HELP.format(auth=extra)

    def smtp_VRFY(self, argument: str) -> Reply:
        if not argument:
            return replies.SYNTAX.format(usage="VRFY address")
        return replies.VRFY_CANNOT

    def smtp_EXPN(self, argument: str) -> Reply:
        return replies.EXPN_REFUSED

    def smtp_QUIT(self, argument: str) -> Reply:
        return replies.BYE.format(host=self.settings.hostname)

    def _not_implemented(self, argument: str) -> Reply:
        return replies.NOT_IMPLEMENTED

    smtp_TURN = smtp_ETRN = smtp_ATRN = _not_implemented
    smtp_SEND = smtp_SOML = smtp_SAML = _not_implemented


def _decode_line(raw: bytes) -> Optional[str]:
    """The command text without its line ending; None for invalid UTF-8
    or control characters."""
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    if len(raw.translate(None, _CONTROL)) != len(raw):
        return None
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


def _verb_table(cls: type) -> Dict[str, Handler]:
    return {name[5:]: getattr(cls, name) for name in dir(cls) if name.startswith("smtp_")}


Session._verbs = _verb_table(Session)
