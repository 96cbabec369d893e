"""The mail queue on disk (``--queue=DIR``): durable storage, listing, locking.

One mail is two files side by side in DIR:

* ``ID.msg``: the message exactly as the delivery command reads it (LF line
  endings, dot-unstuffed, our ``Received:`` header first).  It is never
  replaced, so it carries the mail's lock (``flock``, which dies with the
  process that holds it).
* ``ID.env``: the envelope (:mod:`msmtpd.delivery.queue_envelope`), ``key: value``
  lines a person can read: the sender, the recipients, when it arrived, the
  message's size and SHA-256 as stored, the attempts so far, the next try
  and the last error.

Both are written under a temporary name, flushed to disk and renamed; the
envelope comes last and marks the mail committed; then the directory is
flushed.  Only then is the client answered 250.  A ``.msg`` without its
``.env`` is what a crash between the two renames leaves: never listed,
removed once old.  Mails moved to ``DIR/failed/`` keep both files and the
reason.

Every file read from DIR is opened through :mod:`msmtpd.base.safe_files`: no
symbolic link followed, no FIFO waited on, and only regular files of DIR's
owner that group and others cannot write are trusted; anything else raises
UnsafeFile and is never read as mail, delivered or removed.  This module
imports only light standard modules (and hashlib): an ``--inetd`` session
stores through it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
from typing import IO, TYPE_CHECKING, Iterator, List, Optional, Tuple

from msmtpd.base.safe_files import UnsafeFile, open_checked, queue_file
from msmtpd.delivery.queue_directory import (
    FAILED,
    RUNNER_LOCK,
    WAKE_FIFO,
    WAKE_FLUSH,
    WAKE_NEW,
    QueueError,
    make_fifo,
    prepare_directory,
)
from msmtpd.delivery.queue_envelope import (
    QUEUE_LATE_MODULES,
    QueuedEnvelope,
    decode_value,
    encode_value,
    is_id,
    iso_time,
    new_id,
    parse_iso_time,
)

if TYPE_CHECKING:
    pass

# The queue's names in one place (also those of the modules it grew out of).
__all__ = ["FAILED", "RUNNER_LOCK", "WAKE_FIFO", "WAKE_FLUSH", "WAKE_NEW", "QueueError",
           "make_fifo", "prepare_directory", "QUEUE_LATE_MODULES", "QueuedEnvelope", "encode_value",
           "is_id", "iso_time", "new_id", "parse_iso_time", "decode_value", "Queue",
           "TEMPORARY_PREFIX", "ORPHAN_SECONDS", "COPY_CHUNK", "size_damage"]

TEMPORARY_PREFIX = ".tmp-"
# A half-committed mail (a crash between the renames) older than this is removed.
ORPHAN_SECONDS = 3600.0
COPY_CHUNK = 1024 * 1024


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


def _locked(path: str) -> IO[bytes]:
    """A file we just wrote, opened for reading and flocked (nobody else
    knows its name yet: the lock is ours at once)."""
    handle = open(path, "rb", buffering=0)  # noqa: SIM115 (the caller closes it)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    except BaseException:
        handle.close()
        raise
    return handle


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
    """One queue directory.  ``owner`` is DIR's owner, whom every file in
    it must belong to; unknown (None), it is learnt from DIR when first
    opened."""

    def __init__(self, directory: str, owner: Optional[int] = None) -> None:
        self.directory = directory
        self.failed_directory = os.path.join(directory, FAILED)
        self.owner = owner

    # -- storing (a session) ----------------------------------------------

    def store(self, envelope: QueuedEnvelope, message: bytes | int) -> str:
        """Commit one mail durably; returns its id.  The envelope records
        the message's size and SHA-256, taken from the chunks as they are
        written (no second read).  Raises OSError (and leaves nothing
        behind) when the disk is full or DIR unwritable."""
        return self._store(envelope, message, None)

    def store_locked(self, envelope: QueuedEnvelope, message: bytes | int) -> Tuple[str, IO[bytes]]:
        """:meth:`store`, with the message open and locked for us from
        before it is committed (``--queue-first-try``): no runner can take
        the mail between its commit and our own attempt."""
        held: List[IO[bytes]] = []
        mail_id = self._store(envelope, message, held)
        return mail_id, held[0]

    def _store(self, envelope: QueuedEnvelope, message: bytes | int,
               held: Optional[List[IO[bytes]]]) -> str:
        mail_id = new_id()
        digest = hashlib.sha256()
        sizes = []

        def hashed(chunks: Iterator[bytes]) -> Iterator[bytes]:
            for chunk in chunks:
                digest.update(chunk)
                sizes.append(len(chunk))
                yield chunk

        message_tmp = _write_durably(self.directory, f"{mail_id}.msg",
                                     hashed(_message_chunks(message)))
        envelope.message_size, envelope.message_sha256 = sum(sizes), digest.hexdigest()
        envelope_tmp = ""
        message_path = self.path(mail_id, ".msg")
        try:
            if held is not None:  # the lock goes with the file through the renames
                held.append(_locked(message_tmp))
            envelope_tmp = _write_durably(self.directory, f"{mail_id}.env",
                                          iter([envelope.render(mail_id)]))
            os.rename(message_tmp, message_path)
            os.rename(envelope_tmp, self.path(mail_id, ".env"))  # committed
            _fsync_directory(self.directory)
        except BaseException:
            for path in (message_tmp, envelope_tmp, self.path(mail_id, ".env"), message_path):
                if path:
                    _unlink(path)
            for handle in held or ():
                handle.close()
            raise
        return mail_id

    def wake(self, byte: bytes = WAKE_NEW) -> bool:
        """Write ``byte`` to the runner's FIFO; True when a runner reads it.
        Harmless when none runs (nobody reads the FIFO: ENXIO), the FIFO is
        full (EAGAIN) or is no FIFO of DIR's owner (never followed)."""
        try:
            fd = self.open_wake_fifo()
        except OSError:  # UnsafeFile too
            return False
        try:
            return os.write(fd, byte) == 1
        except OSError:
            return False
        finally:
            os.close(fd)

    def open_wake_fifo(self) -> int:
        """The FIFO's writing end, checked: a FIFO of DIR's owner.  OSError
        (ENXIO: no runner reads it) or UnsafeFile."""
        return open_checked(os.path.join(self.directory, WAKE_FIFO), os.O_WRONLY,
                            queue_file(stat.S_IFIFO, self.owner), label=WAKE_FIFO)

    # -- reading ----------------------------------------------------------

    def path(self, mail_id: str, suffix: str, failed: bool = False) -> str:
        return os.path.join(self.failed_directory if failed else self.directory, mail_id + suffix)

    def open_directory(self, failed: bool = False) -> int:
        """DIR, or its failed/, opened and checked: a directory of DIR's
        owner that group and others cannot write.  UnsafeFile or OSError."""
        fd = open_checked(self.directory, os.O_RDONLY, queue_file(stat.S_IFDIR, self.owner),
                          label=f"queue directory {self.directory}")
        if self.owner is None:
            self.owner = os.fstat(fd).st_uid
        if not failed:
            return fd
        try:
            return open_checked(FAILED, os.O_RDONLY, queue_file(stat.S_IFDIR, self.owner), fd,
                                f"{FAILED}/")
        finally:
            os.close(fd)

    def open_file(self, mail_id: str, suffix: str, failed: bool = False) -> int:
        """One of a mail's files for reading, checked: a regular file of
        DIR's owner that group and others cannot write."""
        directory = self.open_directory(failed)
        try:
            return open_checked(mail_id + suffix, os.O_RDONLY, queue_file(stat.S_IFREG, self.owner),
                                directory, f"{FAILED + '/' if failed else ''}{mail_id}{suffix}")
        finally:
            os.close(directory)

    def ids(self, failed: bool = False) -> List[str]:
        """Committed mails, oldest first."""
        directory = self.open_directory(failed)
        try:
            names = os.listdir(directory)
        finally:
            os.close(directory)
        return sorted(name[:-4] for name in names if name.endswith(".env") and is_id(name[:-4]))

    def read_envelope(self, mail_id: str, failed: bool = False) -> QueuedEnvelope:
        """The envelope; OSError when it is gone, ValueError when it is not
        one, UnsafeFile when it is no file to trust."""
        with os.fdopen(self.open_file(mail_id, ".env", failed), "rb") as handle:
            return QueuedEnvelope.parse(handle.read())

    def envelope(self, mail_id: str, failed: bool = False) -> Optional[QueuedEnvelope]:
        """None when the mail is gone (delivered meanwhile) or unreadable."""
        try:
            return self.read_envelope(mail_id, failed)
        except (OSError, ValueError):  # UnsafeFile too
            return None

    def entries(self, failed: bool = False) -> List[Tuple[str, QueuedEnvelope | str]]:
        """Each mail with its envelope, or what is wrong with it (a damaged
        or refused mail stays in the queue, listed, for a person to look
        at)."""
        found: List[Tuple[str, QueuedEnvelope | str]] = []
        for mail_id in self.ids(failed):
            try:
                envelope = self.read_envelope(mail_id, failed)
            except FileNotFoundError:
                continue  # delivered or moved meanwhile
            except UnsafeFile as exc:
                found.append((mail_id, f"refused: {exc}; never read, delivered or removed"))
                continue
            except (OSError, ValueError) as exc:
                found.append((mail_id, "unreadable envelope: "
                              + (getattr(exc, "strerror", None) or str(exc))))
                continue
            found.append((mail_id, self._message_problem(mail_id, envelope, failed) or envelope))
        return found

    def _message_problem(self, mail_id: str, envelope: QueuedEnvelope, failed: bool) -> str:
        """What a listing can tell of the message without reading it."""
        try:
            fd = self.open_file(mail_id, ".msg", failed)
        except FileNotFoundError:
            return ""  # moved or delivered meanwhile
        except UnsafeFile as exc:
            return f"refused: {exc}; never read, delivered or removed"
        except OSError as exc:
            return f"unreadable message: {exc.strerror}"
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if envelope.message_size is not None and size != envelope.message_size and not failed:
            return f"damaged message: {size_damage(mail_id, size, envelope.message_size)}"
        return ""

    # -- delivering (a runner) --------------------------------------------

    def lock(self, mail_id: str) -> Optional[IO[bytes]]:
        """The open message, locked for us; None when another process
        delivers it right now or it is gone.  Closing the file unlocks.
        UnsafeFile when the message is no file to trust."""
        try:
            fd = self.open_file(mail_id, ".msg")
        except UnsafeFile:
            raise
        except OSError:
            return None
        handle = os.fdopen(fd, "rb")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        if not os.path.lexists(self.path(mail_id, ".env")):
            handle.close()  # delivered and removed between our listing and the lock
            return None
        return handle

    def damage(self, mail_id: str, handle: IO[bytes], envelope: QueuedEnvelope) -> str:
        """Why the open message is not the one stored ("" when it is, or
        when an envelope of an older version recorded no hash)."""
        if envelope.message_sha256 is None or envelope.message_size is None:
            return ""
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        if size != envelope.message_size:
            return f"damaged message: {size_damage(mail_id, size, envelope.message_size)}"
        digest = hashlib.sha256()
        offset = 0
        while True:
            chunk = os.pread(fd, COPY_CHUNK, offset)
            if not chunk:
                break
            digest.update(chunk)
            offset += len(chunk)
        if offset != size or digest.hexdigest() != envelope.message_sha256:
            return f"damaged message: {mail_id}.msg differs from the one stored (SHA-256)"
        return ""

    def update(self, mail_id: str, envelope: QueuedEnvelope) -> None:
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

    def fail(self, mail_id: str, envelope: QueuedEnvelope, reason: str) -> None:
        """Move to failed/ with the reason; OSError (nothing moved) when the
        new envelope cannot be written."""
        os.makedirs(self.failed_directory, mode=0o700, exist_ok=True)
        failed = QueuedEnvelope.parse(envelope.render(mail_id))
        failed.failed = reason
        temporary = _write_durably(self.failed_directory, f"{mail_id}.env",
                                   iter([failed.render(mail_id)]))
        try:
            os.rename(self.path(mail_id, ".msg"), self.path(mail_id, ".msg", failed=True))
        except BaseException:
            _unlink(temporary)
            raise
        os.rename(temporary, self.path(mail_id, ".env", failed=True))
        envelope.failed = reason
        _unlink(self.path(mail_id, ".env"))
        _fsync_directory(self.failed_directory)
        _fsync_directory(self.directory)

    def clean(self, now: float) -> None:
        """Remove what crashes left: temporary files and messages without
        an envelope, once older than ORPHAN_SECONDS.  Only regular files:
        anything else was not left by us."""
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            orphan = name.endswith(".msg") and not os.path.lexists(path[:-4] + ".env")
            if not (name.startswith(TEMPORARY_PREFIX) or orphan):
                continue
            try:
                status = os.lstat(path)
                if stat.S_ISREG(status.st_mode) and now - status.st_mtime > ORPHAN_SECONDS:
                    os.unlink(path)
            except OSError:
                pass


def size_damage(mail_id: str, size: int, stored: int) -> str:
    return f"{mail_id}.msg holds {size} octets, {stored} were stored"
