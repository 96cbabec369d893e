"""The session's transaction verbs, MAIL, RCPT and DATA (RFC 5321
section 3.3): the envelope, its parameters (SIZE, BODY, SMTPUTF8), the
message received into a spool, and its delivery.  A base class of
:class:`msmtpd.smtp.session.Session`; the state they use is
:class:`msmtpd.smtp.session_state.SessionState`'s.  The gates that refuse a
verb before it runs (TLS, a greeting, AUTH) are the session's dispatch."""

from __future__ import annotations

import time

from msmtpd.base.config import is_number
from msmtpd.base.logger import log
from msmtpd.smtp import replies
from msmtpd.smtp.address import AddressError, parse_path, shell_unsafe_character, split_path
from msmtpd.smtp.message import MAX_RECEIVED_HEADERS, Spool, receive_data
from msmtpd.smtp.replies import Reply, reply_text
from msmtpd.smtp.session_parts import Closed, Envelope
from msmtpd.smtp.session_state import SessionState

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Optional, Tuple, Union

# RFC 5321 section 4.5.3.1.8 requires at least 100 recipients per message.
MAX_RECIPIENTS = 1000
# Like Postfix's smtpd_recipient_overshoot_limit: this many RCPTs past the
# limit are answered 452 without counting as errors; the client is only
# following RFC 5321 section 4.5.3.1.10 and sends the rest later.
MAX_RECIPIENT_OVERSHOOT = 1000
# A HELO/EHLO name longer than this is cut in the Received: header.
MAX_HELO_IN_HEADER = 255

BODY_TYPES = ("7BIT", "8BITMIME")


class TransactionVerbs(SessionState):
    """MAIL, RCPT and DATA."""

    def smtp_MAIL(self, argument: str) -> Reply:
        if self.envelope is not None:
            return replies.NESTED_MAIL
        split = _path_and_parameters(argument, "FROM:", "MAIL FROM:<address> [parameters]")
        if isinstance(split, Reply):
            return split
        path, params = split
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
                     user, sender, event="refused", peer=self.who, user=user, sender=sender,
                     reason="sender_not_allowed", reply=reply_text(replies.SENDER_NOT_ALLOWED))
            self._count_refusal("sender")
            return replies.SENDER_NOT_ALLOWED
        limited = self.hold_rate()
        if limited is not None:
            return limited
        envelope.sender = sender
        envelope.user = user
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
                    self._count_refusal("size")
                    return replies.MESSAGE_TOO_BIG.format(limit=limit)
            elif name == "BODY":
                if value.upper() == "BINARYMIME":
                    return replies.BINARYMIME_REFUSED
                if value.upper() not in BODY_TYPES:
                    return replies.BAD_BODY
                envelope.body = value.upper()
            elif name == "SMTPUTF8" and not value:
                envelope.smtputf8 = True
            else:
                return replies.UNKNOWN_PARAMETER.format(name=name)
        return None

    def _check_path(self, path: str, envelope: Envelope, allow_null: bool) -> Union[str, Reply]:
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
        envelope = self.envelope
        if envelope is None:
            return replies.NEED_MAIL
        split = _path_and_parameters(argument, "TO:", "RCPT TO:<address>")
        if isinstance(split, Reply):
            return split
        path, params = split
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
        envelope = self.envelope
        if envelope is None:
            return replies.NEED_MAIL
        if not envelope.recipients:
            return replies.NEED_RCPT
        if argument:
            return replies.SYNTAX.format(usage="DATA")
        if envelope.chunks is not None:
            return replies.DATA_AFTER_BDAT
        self.reply(replies.START_DATA)  # the connection sends it before it reads
        spool = Spool(self.settings.max_size, self.settings.spool_dir)
        self.connection.begin_data()
        try:
            spool.write(self._received_header(envelope), counted=False)
            if not receive_data(self.connection, spool, after_crlf=self.after_crlf):
                log.info("%s: client disconnected during DATA; nothing delivered",
                         self.who, event="session_end", peer=self.who,
                         reason="disconnected_in_data")
                raise Closed()
            self.connection.end_data()
            self.envelope = None
            return self._finish(envelope, spool)
        finally:
            self.connection.end_data()
            spool.close()

    def _finish(self, envelope: Envelope, spool: Spool) -> Reply:
        """Answer the final dot: errors found while receiving come first."""
        return self._spool_problem(envelope, spool) or self.deliver_counted(envelope, spool)

    def deliver_counted(self, envelope: Envelope, spool: Spool) -> Reply:
        """Hand the mail over; --metrics counts it by the answer."""
        reply = self.deliver(envelope, spool)
        if reply.code < 400:
            result = getattr(self._deliver, "accepted_as", "delivered")
        else:
            result = "tempfail" if reply.code < 500 else "permfail"
        self._count_mail(result, spool.size)
        return reply

    def _count_mail(self, result: str, size: int) -> None:
        self.count("msmtpd_mails_total", result)
        self.count("msmtpd_mail_bytes_total", result, size)

    def _count_refusal(self, reason: str, size: int = 0) -> None:
        self.count("msmtpd_refusals_total", reason)
        self._count_mail("refused", size)

    def _spool_problem(self, envelope: Envelope, spool: Spool) -> Optional[Reply]:
        """The reply to a message over --max-size, one that loops, or one
        the spool lost; such a mail does not count against --rate-limit."""
        problem = self._refusal(envelope, spool)
        if problem is not None:
            self.settle_rate(accepted=False)
        return problem

    def _refusal(self, envelope: Envelope, spool: Spool) -> Optional[Reply]:
        if spool.too_big:
            refused = replies.MESSAGE_TOO_BIG.format(limit=spool.max_size)
            log.info("%s: message from <%s> refused: %d octets over the limit of %d",
                     self.who, envelope.sender, spool.size, spool.max_size, event="mail",
                     peer=self.who, **envelope.log_fields(), size=spool.size, result="refused",
                     reason="size", reply=reply_text(refused))
            self._count_refusal("size", spool.size)
            return refused
        if spool.hops.too_many:
            log.info("%s: message from <%s> refused: more than %d Received: headers (a loop)",
                     self.who, envelope.sender, MAX_RECEIVED_HEADERS, event="mail", peer=self.who,
                     **envelope.log_fields(), size=spool.size, result="refused", reason="loop",
                     reply=reply_text(replies.TOO_MANY_HOPS))
            self._count_refusal("loop", spool.size)
            return replies.TOO_MANY_HOPS
        if spool.error is not None:
            failed = replies.SPOOL_FAILED.format(reason=spool.error.strerror or spool.error)
            log.error("%s: cannot spool message: %s", self.who, spool.error, event="mail",
                      peer=self.who, **envelope.log_fields(), result="temporary_failure",
                      reply=reply_text(failed), error=str(spool.error))
            self._count_mail("tempfail", spool.size)
            return failed
        return None

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


def _path_and_parameters(argument: str, keyword: str,
                         usage: str) -> Union[Tuple[str, str], Reply]:
    """MAIL's or RCPT's path and parameters, or the reply to a malformed line."""
    rest = _strip_keyword(argument, keyword)
    if rest is None:
        return replies.SYNTAX.format(usage=usage)
    try:
        return split_path(rest)
    except AddressError as exc:
        return replies.BAD_ADDRESS.format(reason=exc)


def _strip_keyword(argument: str, keyword: str) -> Optional[str]:
    """``FROM:<a>`` or ``FROM: <a>`` (accepted, as most servers do)."""
    if argument[: len(keyword)].upper() != keyword:
        return None
    return argument[len(keyword) :].strip()
