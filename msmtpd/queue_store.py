"""The mail queue on disk (``--queue=DIR``): durable storage, listing, locking.

One mail is two files side by side in DIR:

* ``ID.msg``: the message exactly as the delivery command reads it (LF line
  endings, dot-unstuffed, our ``Received:`` header first).  It is never
  replaced, so it carries the mail's lock (``flock``, which dies with the
  process that holds it).
* ``ID.env``: the envelope, ``key: value`` lines a person can read: the
  sender, one ``recipient:`` line per recipient, when it arrived, the
  client, the attempts so far, the next try and the last error.  Values are
  escaped (``\\\\`` and ``\\xNN``), so no client string can forge a line.

Both are written under a temporary name, flushed to disk and renamed; the
envelope comes last and marks the mail committed; then the directory is
flushed.  Only then is the client answered 250.  A ``.msg`` without its
``.env`` is what a crash between the two renames leaves: never listed,
removed once old.  Mails moved to ``DIR/failed/`` keep both files and the
reason.  This module imports only light standard modules: an ``--inetd``
session stores through it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from typing import IO, TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple

from msmtpd.log import log

if TYPE_CHECKING:
    from msmtpd.message import Spool
    from msmtpd.replies import Reply
    from msmtpd.session_types import Envelope as SessionEnvelope

FAILED = "failed"
WAKE_FIFO = ".wake"  # the runner reads it; a session writes a byte after storing
RUNNER_LOCK = ".runner"  # held by the running daemon's runner, holding its pid
TEMPORARY_PREFIX = ".tmp-"
# A half-committed mail (a crash between the renames) older than this is removed.
ORPHAN_SECONDS = 3600.0
COPY_CHUNK = 1024 * 1024


class QueueError(Exception):
    """The queue directory cannot be used; the message is one line."""


def escape(value: str) -> str:
    """Backslash and every control character escaped: one value, one line."""
    out = []
    for char in value:
        if char == "\\":
            out.append("\\\\")
        elif ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 or char in "\u2028\u2029":
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


def unescape(text: str) -> str:
    out = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and text[index + 1:index + 2] == "\\":
            out.append("\\")
            index += 2
        elif char == "\\" and text[index + 1:index + 2] in ("x", "u"):
            width = 2 if text[index + 1] == "x" else 4
            try:
                out.append(chr(int(text[index + 2:index + 2 + width], 16)))
            except ValueError:
                out.append(char)
                index += 1
                continue
            index += 2 + width
        else:
            out.append(char)
            index += 1
    return "".join(out)


def iso_time(when: float) -> str:
    """UTC as ISO 8601, to the millisecond: what a person reads in the envelope."""
    whole = int(when)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{int((when - whole) * 1000):03d}Z"


# What reading an envelope imports on first use (time.strptime's module and
# calendar): a queue process hands these to privileges.drop.
QUEUE_LATE_MODULES = ("calendar", "_strptime")


def parse_iso_time(text: str) -> float:
    import calendar

    seconds, _, fraction = text.rstrip("Z").partition(".")
    try:
        whole = calendar.timegm(time.strptime(seconds, "%Y-%m-%dT%H:%M:%S"))
        return whole + (int(fraction) / 10 ** len(fraction) if fraction.isdigit() else 0.0)
    except ValueError:
        return 0.0


def new_id() -> str:
    """Sortable by arrival (UTC time to the microsecond), unique (pid and
    random bits), safe as a file name; nothing from the client."""
    now = time.time()
    micro = int(now * 1_000_000) % 1_000_000
    return f"{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}{micro:06d}-{os.getpid()}-{os.urandom(3).hex()}"


def is_id(name: str) -> bool:
    return bool(name) and not name.startswith(".") and all(c.isalnum() or c == "-" for c in name)


class Envelope:
    """What the queue knows of one mail besides its message."""

    def __init__(self, sender: str, recipients: Sequence[str], arrived: float, client: str,
                 size: int = 0) -> None:
        self.sender = sender
        self.recipients = list(recipients)
        self.arrived = arrived
        self.client = client
        self.size = size
        self.attempts = 0
        self.next_try = arrived
        self.last_try = 0.0
        self.last_error = ""
        self.failed = ""  # the reason, once in failed/

    def render(self, mail_id: str) -> bytes:
        lines = [f"id: {mail_id}", f"sender: {escape(self.sender)}"]
        lines += [f"recipient: {escape(r)}" for r in self.recipients]
        lines += [f"arrived: {iso_time(self.arrived)}", f"client: {escape(self.client)}",
                  f"size: {self.size}", f"attempts: {self.attempts}",
                  f"next-try: {iso_time(self.next_try)}",
                  f"last-try: {iso_time(self.last_try) if self.last_try else ''}",
                  f"last-error: {escape(self.last_error)}"]
        if self.failed:
            lines.append(f"failed: {escape(self.failed)}")
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")

    @classmethod
    def parse(cls, data: bytes) -> Envelope:
        fields: Dict[str, str] = {}
        recipients: List[str] = []
        for line in data.decode("utf-8", "surrogateescape").splitlines():
            key, _, value = line.partition(": ")
            if key == "recipient":
                recipients.append(unescape(value))
            else:
                fields[key] = value
        if "sender" not in fields or not recipients:
            raise ValueError("envelope without sender or recipients")
        envelope = cls(unescape(fields["sender"]), recipients,
                       parse_iso_time(fields.get("arrived", "")), unescape(fields.get("client", "")),
                       int(fields.get("size", "0") or 0))
        envelope.attempts = int(fields.get("attempts", "0") or 0)
        envelope.next_try = parse_iso_time(fields.get("next-try", "")) or envelope.arrived
        envelope.last_try = parse_iso_time(fields.get("last-try", ""))
        envelope.last_error = unescape(fields.get("last-error", ""))
        envelope.failed = unescape(fields.get("failed", ""))
        return envelope


def _write_durably(directory: str, name: str, chunks: Iterator[bytes]) -> str:
    """Write to a temporary name in ``directory`` and fsync it; the caller
    renames.  Returns the temporary path (removed again on failure)."""
    temporary = os.path.join(directory, f"{TEMPORARY_PREFIX}{name}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink(temporary)
        raise
    os.close(fd)
    return temporary


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _message_chunks(message: bytes | int) -> Iterator[bytes]:
    if isinstance(message, bytes):
        yield message
        return
    while True:
        chunk = os.read(message, COPY_CHUNK)
        if not chunk:
            return
        yield chunk


class Queue:
    """One queue directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.failed_directory = os.path.join(directory, FAILED)

    # -- storing (a session) ----------------------------------------------

    def store(self, envelope: Envelope, message: bytes | int) -> str:
        """Commit one mail durably; returns its id.  Raises OSError (and
        leaves nothing behind) when the disk is full or DIR unwritable."""
        mail_id = new_id()
        message_tmp = _write_durably(self.directory, f"{mail_id}.msg", _message_chunks(message))
        envelope_tmp = ""
        message_path = self.path(mail_id, ".msg")
        try:
            envelope_tmp = _write_durably(self.directory, f"{mail_id}.env",
                                          iter([envelope.render(mail_id)]))
            os.rename(message_tmp, message_path)
            os.rename(envelope_tmp, self.path(mail_id, ".env"))  # committed
            _fsync_directory(self.directory)
        except BaseException:
            for path in (message_tmp, envelope_tmp, self.path(mail_id, ".env"), message_path):
                if path:
                    _unlink(path)
            raise
        return mail_id

    def wake(self) -> None:
        """Tell a runner on this DIR that a mail is waiting: harmless when
        none runs (nobody reads the FIFO: ENXIO) or it is full (EAGAIN)."""
        try:
            fd = os.open(os.path.join(self.directory, WAKE_FIFO),
                         os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.write(fd, b"w")
        except OSError:
            pass
        finally:
            os.close(fd)

    # -- reading ----------------------------------------------------------

    def path(self, mail_id: str, suffix: str, failed: bool = False) -> str:
        return os.path.join(self.failed_directory if failed else self.directory, mail_id + suffix)

    def ids(self, failed: bool = False) -> List[str]:
        """Committed mails, oldest first."""
        names = os.listdir(self.failed_directory if failed else self.directory)
        return sorted(name[:-4] for name in names if name.endswith(".env") and is_id(name[:-4]))

    def read_envelope(self, mail_id: str, failed: bool = False) -> Envelope:
        """The envelope; OSError when it is gone, ValueError when it is not one."""
        with open(self.path(mail_id, ".env", failed), "rb") as handle:
            return Envelope.parse(handle.read())

    def envelope(self, mail_id: str, failed: bool = False) -> Optional[Envelope]:
        """None when the mail is gone (delivered meanwhile) or unreadable."""
        try:
            return self.read_envelope(mail_id, failed)
        except (OSError, ValueError):
            return None

    def entries(self, failed: bool = False) -> List[Tuple[str, Envelope | str]]:
        """Each mail with its envelope, or why it cannot be read (a damaged
        envelope stays in the queue, listed, for a person to look at)."""
        found: List[Tuple[str, Envelope | str]] = []
        for mail_id in self.ids(failed):
            try:
                found.append((mail_id, self.read_envelope(mail_id, failed)))
            except FileNotFoundError:
                continue  # delivered or moved meanwhile
            except (OSError, ValueError) as exc:
                found.append((mail_id, getattr(exc, "strerror", None) or str(exc)))
        return found

    # -- delivering (a runner) --------------------------------------------

    def lock(self, mail_id: str) -> Optional[IO[bytes]]:
        """The open message, locked for us; None when another process
        delivers it right now or it is gone.  Closing the file unlocks."""
        try:
            handle = open(self.path(mail_id, ".msg"), "rb")
        except OSError:
            return None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        if not os.path.exists(self.path(mail_id, ".env")):
            handle.close()  # delivered and removed between our listing and the lock
            return None
        return handle

    def update(self, mail_id: str, envelope: Envelope) -> None:
        """Record an attempt: a new envelope renamed over the old one."""
        temporary = _write_durably(self.directory, f"{mail_id}.env", iter([envelope.render(mail_id)]))
        try:
            os.rename(temporary, self.path(mail_id, ".env"))
        except BaseException:
            _unlink(temporary)
            raise
        _fsync_directory(self.directory)

    def remove(self, mail_id: str) -> None:
        """Delivered: the envelope goes first, so a crash leaves at most an
        orphan message, never a mail that would be delivered again."""
        _unlink(self.path(mail_id, ".env"))
        _unlink(self.path(mail_id, ".msg"))
        _fsync_directory(self.directory)

    def fail(self, mail_id: str, envelope: Envelope, reason: str) -> None:
        """Move to failed/ with the reason."""
        os.makedirs(self.failed_directory, mode=0o700, exist_ok=True)
        envelope.failed = reason
        temporary = _write_durably(self.failed_directory, f"{mail_id}.env",
                                   iter([envelope.render(mail_id)]))
        os.rename(self.path(mail_id, ".msg"), self.path(mail_id, ".msg", failed=True))
        os.rename(temporary, self.path(mail_id, ".env", failed=True))
        _unlink(self.path(mail_id, ".env"))
        _fsync_directory(self.failed_directory)
        _fsync_directory(self.directory)

    def clean(self, now: float) -> None:
        """Remove what crashes left: temporary files and messages without
        an envelope, once older than ORPHAN_SECONDS."""
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            orphan = name.endswith(".msg") and not os.path.exists(path[:-4] + ".env")
            if not (name.startswith(TEMPORARY_PREFIX) or orphan):
                continue
            try:
                if now - os.stat(path).st_mtime > ORPHAN_SECONDS:
                    os.unlink(path)
            except OSError:
                pass


def prepare_directory(directory: str, user: Optional[str] = None) -> None:
    """Create DIR (mode 0700) and its failed/ if missing, owned by the
    sessions' user; raise QueueError with the reason when that fails."""
    try:
        for path in (directory, os.path.join(directory, FAILED)):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            if user is not None and os.getuid() == 0:
                from msmtpd import privileges

                account = privileges.resolve(user)
                os.chown(path, account.uid, account.gid)
    except OSError as exc:
        raise QueueError(f"cannot create queue directory {directory}: {exc.strerror}") from None


def make_fifo(directory: str) -> str:
    path = os.path.join(directory, WAKE_FIFO)
    try:
        os.mkfifo(path, 0o600)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
    return path


class Queuer:
    """The session's delivery hook under ``--queue``: store, wake the
    runner, answer 250 with the id; 451 when the mail cannot be stored."""

    def __init__(self, queue: Queue, peer: str = "") -> None:
        self.queue = queue
        self.peer = peer

    def __call__(self, envelope: SessionEnvelope, spool: Spool) -> Reply:
        from msmtpd import replies
        from msmtpd.delivery import summarise_recipients

        queued = Envelope(envelope.sender, envelope.recipients, time.time(), self.peer, spool.size)
        try:
            mail_id = self.queue.store(queued, spool.contents())
        except OSError as exc:
            reason = exc.strerror or str(exc)
            log.error("%s: cannot queue mail from <%s> to %s: %s", self.peer or "client",
                      envelope.sender, summarise_recipients(envelope.recipients), reason)
            return replies.QUEUE_FAILED.format(reason=reason)
        log.info("%s: queued %s: mail from <%s> to %s, %d octets", self.peer or "client", mail_id,
                 envelope.sender, summarise_recipients(envelope.recipients), spool.size)
        self.queue.wake()
        return replies.QUEUED.format(id=mail_id)
