"""The session's delivery hook under ``--queue``: store the mail, wake
the runner, answer 250 with the id (or, with ``--queue-first-try``, try
it once first and answer the truth)."""

from __future__ import annotations

import time
from typing import IO, TYPE_CHECKING, Callable, Optional

from msmtpd.base.logger import log
from msmtpd.delivery.queue_envelope import QueuedEnvelope
from msmtpd.delivery.queue_store import Queue

if TYPE_CHECKING:
    from msmtpd.smtp.message import Spool
    from msmtpd.smtp.replies import Reply
    from msmtpd.smtp.session_parts import Envelope as SessionEnvelope


class Queuer:
    """The session's delivery hook under ``--queue``: store, wake the
    runner, answer 250 with the id; 451 when the mail cannot be stored.
    With ``first_try`` (``--queue-first-try``, :mod:`msmtpd.delivery.first_try`)
    the session tries the stored mail itself before it answers."""

    accepted_as = "queued"  # what --metrics calls a mail this hook took

    def __init__(self, queue: Queue, peer: str = "",
                 first_try: Optional[Callable[[str, IO[bytes], QueuedEnvelope], Reply]] = None
                 ) -> None:
        self.queue = queue
        self.peer = peer
        self.first_try = first_try

    def __call__(self, envelope: SessionEnvelope, spool: Spool) -> Reply:
        from msmtpd.delivery.pipe_command import summarise_recipients
        from msmtpd.smtp import replies
        from msmtpd.smtp.replies import reply_text

        queued = QueuedEnvelope(envelope.sender, envelope.recipients, time.time(), self.peer, spool.size)
        held: Optional[IO[bytes]] = None
        try:
            if self.first_try is None:
                mail_id = self.queue.store(queued, spool.contents())
            else:
                mail_id, held = self.queue.store_locked(queued, spool.contents())
        except OSError as exc:
            reason = exc.strerror or str(exc)
            failed = replies.QUEUE_FAILED.format(reason=reason)
            log.error("%s: cannot queue mail from <%s> to %s: %s", self.peer or "client",
                      envelope.sender, summarise_recipients(envelope.recipients), reason,
                      event="mail", peer=self.peer or "client", **envelope.log_fields(),
                      size=spool.size, result="temporary_failure", reply=reply_text(failed),
                      error=reason)
            return failed
        queued_reply = replies.QUEUED.format(id=mail_id)
        log.info("%s: queued %s: mail from <%s> to %s, %d octets", self.peer or "client", mail_id,
                 envelope.sender, summarise_recipients(envelope.recipients), spool.size,
                 event="mail", peer=self.peer or "client", **envelope.log_fields(), size=spool.size,
                 result="queued", reply=reply_text(queued_reply), queue_id=mail_id)
        # Also before a first try: should this session die in it, the
        # runner knows the mail (it skips it while we hold its lock).
        self.queue.wake()
        if self.first_try is not None and held is not None:
            reply = self.first_try(mail_id, held, queued)
            self.accepted_as = "delivered" if getattr(self.first_try, "delivered", False) else "queued"
            return reply
        return queued_reply
