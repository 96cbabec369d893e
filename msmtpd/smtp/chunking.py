"""CHUNKING (RFC 3030): the BDAT verb and the message it builds.

``BDAT <size> [LAST]`` is followed by exactly ``size`` octets of the
message, neither dot-stuffed nor ended by a dot; the session reads them
through the connection's DATA deadlines (contract 6).  The guarantees are
DATA's: the mail is delivered only after ``BDAT ... LAST`` has arrived
whole, CRLF becomes LF (also when the CR ends one chunk and the LF starts
the next), the Received header and the spool are the same, so the command
reads byte for byte what DATA would have given it.  A chunk that is refused
is still read and discarded (RFC 3030 section 2), so the stream stays in
step with a pipelining client.
"""

from __future__ import annotations

from msmtpd.base.config import is_number
from msmtpd.base.logger import log
from msmtpd.smtp import replies
from msmtpd.smtp.message import Spool, to_lf
from msmtpd.smtp.replies import Reply
from msmtpd.smtp.session_parts import Closed, Envelope
from msmtpd.smtp.transaction_verbs import TransactionVerbs

TYPE_CHECKING = False  # typing costs an --inetd session about 4 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Optional, Tuple, Union

# RFC 3030 section 2 puts no bound on chunk-size (1*DIGIT); like Postfix,
# which reads it as an off_t, accept up to 18 digits (under 2**63) and
# answer a longer one 501: no client has such a chunk to send, and a
# number that large is a mistake, not a size.
MAX_CHUNK_SIZE_DIGITS = 18
# The verbs whose command line is followed by octets that are not commands:
# refused or not, these octets are read and discarded (RFC 3030 section 2).
CARRIES_OCTETS = frozenset({"BDAT"})


def parse_bdat(argument: str) -> Union[Tuple[int, bool], Reply]:
    """``<size> [LAST]`` as (size, last), or the 501 for anything else."""
    words = argument.split()
    if not 1 <= len(words) <= 2 or not is_number(words[0]):
        return replies.BDAT_SYNTAX
    if len(words) == 2 and words[1].upper() != "LAST":
        return replies.BDAT_SYNTAX
    if len(words[0]) > MAX_CHUNK_SIZE_DIGITS:
        return replies.BDAT_SIZE_TOO_LARGE.format(digits=MAX_CHUNK_SIZE_DIGITS)
    return int(words[0]), len(words) == 2


class ChunkedMessage:
    """The message one BDAT transaction builds: its spool, and whether the
    last piece ended in a CR that the next one's LF may complete."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._cr_pending = False
        self._ends_line = True  # the content so far is empty or ends in LF

    def add(self, piece: bytes) -> None:
        """Store one piece of a chunk, CRLF as LF, as DATA does."""
        if self._cr_pending:
            piece = b"\r" + piece
        self._cr_pending = piece.endswith(b"\r")
        if self._cr_pending:
            piece = piece[:-1]
        if piece:
            self.spool.write(to_lf(piece))
            self._ends_line = piece.endswith(b"\n")

    def finish(self) -> None:
        """After the last chunk: a final CR or an unfinished last line is
        ended with LF, as every mail that DATA gives ends in one."""
        if self._cr_pending or not self._ends_line:
            self.spool.write(b"\n")
        self._cr_pending, self._ends_line = False, True

    def close(self) -> None:
        self.spool.close()


class ChunkingVerbs(TransactionVerbs):
    """BDAT, beside MAIL, RCPT and DATA (which refuses to follow a BDAT)."""

    def smtp_BDAT(self, argument: str) -> Reply:
        parsed = parse_bdat(argument)
        if isinstance(parsed, Reply):
            return parsed  # no size: nothing can be discarded
        size, last = parsed
        envelope = self.envelope
        refused = self._refuse_chunk(envelope, last)
        if refused is not None:
            self.discard_chunk(size)
            return refused
        assert envelope is not None
        message = envelope.chunks
        if message is None:
            message = ChunkedMessage(Spool(self.settings.max_size, self.settings.spool_dir))
            message.spool.write(self._received_header(envelope), counted=False)
            envelope.chunks = message
        if self.connection.receive_octets(size, message.add) < size:
            log.info("%s: client disconnected during BDAT; nothing delivered", self.who,
                     event="session_end", peer=self.who, reason="disconnected_in_data")
            raise Closed()
        if last:
            message.finish()
        problem = self._spool_problem(envelope, message.spool)
        if problem is not None:
            # RFC 3030 section 2: the transaction has failed; chunks the
            # client pipelined behind this one are read, discarded and
            # answered alike until its BDAT LAST.
            self.envelope = None
            self.refused_chunks = None if last else problem
            return problem
        if not last:
            return replies.CHUNK_OK.format(size=size)
        envelope.chunks = None  # the spool is the delivery's now
        self.envelope = None
        try:
            return self.deliver_counted(envelope, message.spool)
        finally:
            message.close()

    def _refuse_chunk(self, envelope: Optional[Envelope], last: bool) -> Optional[Reply]:
        """Why this chunk cannot be taken: a transaction that failed on an
        earlier chunk (its reply again), or none at all (503)."""
        if envelope is None:
            failed = self.refused_chunks
            if failed is not None:
                self.repeating_refusal = True
                if last:
                    self.refused_chunks = None
                return failed
            return replies.NEED_MAIL
        if not envelope.recipients:
            return replies.NEED_RCPT
        return None

    def discard_chunk(self, size: int) -> None:
        """Read and drop the octets of a refused chunk (RFC 3030 section 2)."""
        if self.connection.receive_octets(size, _drop) < size:
            log.info("%s: client disconnected", self.who, event="session_end", peer=self.who,
                     reason="disconnected")
            raise Closed()

    def discard_refused(self, verb: str, argument: str) -> None:
        """A verb refused before it ran (by a gate) that carries octets:
        they are read and dropped all the same."""
        if verb in CARRIES_OCTETS:
            parsed = parse_bdat(argument)
            if not isinstance(parsed, Reply):
                self.discard_chunk(parsed[0])


def _drop(piece: bytes) -> None:
    """A sink that keeps nothing."""
