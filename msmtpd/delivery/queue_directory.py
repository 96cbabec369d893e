"""The queue directory (``--queue=DIR``) at start-up: made if missing, and
checked before anything trusts it.

DIR belongs to the user the sessions run as.  Root must never act on what
that user can write as if it were its own, so every process that starts on
DIR (a daemon, ``--inetd``, ``--queue-list``, ``--queue-flush``) refuses it,
with one line, when it is a symbolic link, not a directory, writable by
group or others, owned by anyone but root or ``--user``, or when
``--user`` could not write it.  And root never runs a delivery command from
a DIR someone else owns: it delivers as that owner (like Postfix's pipe(8),
which never runs a command as root).
"""

from __future__ import annotations

import os
import stat
from typing import Optional

from msmtpd.base.safe_files import UnsafeFile, open_checked, owner_name, queue_file

FAILED = "failed"
WAKE_FIFO = ".wake"  # the runner reads it; a session writes a byte after storing
RUNNER_LOCK = ".runner"  # held by the running daemon's runner, holding its pid
# What a byte in the wake-up FIFO asks of the runner.
WAKE_NEW = b"w"  # a session stored a mail: look at the directory now
WAKE_FLUSH = b"f"  # --queue-flush: try every queued mail now (what SIGUSR1 asks)
# What a process does with DIR: its check differs in who must be able to write it.
SERVE, FLUSH, LIST = "serve", "flush", "list"
OWNER_WRITES = stat.S_IWUSR | stat.S_IXUSR


class QueueError(Exception):
    """The queue directory cannot be used; the message is one line."""


def prepare_directory(directory: str, user: Optional[str] = None) -> int:
    """A daemon's or ``--inetd``'s start: create DIR (mode 0700, owned by
    the sessions' user) and its failed/ if missing, then check both.
    Returns DIR's owner; raises QueueError with the reason."""
    account_uid = _uid_of(user)
    try:
        try:
            os.mkdir(directory, 0o700)
            created = True
        except FileExistsError:
            created = False
        fd = _open_checked_directory(directory)
    except OSError as exc:
        raise QueueError(f"cannot create queue directory {directory}: {exc.strerror}") from None
    try:
        if created and account_uid is not None and os.geteuid() == 0:
            os.fchown(fd, account_uid, -1)  # the descriptor we checked, never a name
        owner = _check_owner(directory, fd, user, SERVE)
        try:
            os.mkdir(FAILED, 0o700, dir_fd=fd)
            created = True
        except FileExistsError:
            created = False
        failed = _open_checked_directory(FAILED, owner=None if created else owner, dir_fd=fd,
                                         label=f"{directory}/{FAILED}")
        try:
            if created and os.fstat(failed).st_uid != owner:
                os.fchown(failed, owner, -1)
        finally:
            os.close(failed)
        return owner
    except OSError as exc:
        raise QueueError(f"cannot create queue directory {directory}/{FAILED}:"
                         f" {exc.strerror}") from None
    finally:
        os.close(fd)


def check_directory(directory: str, user: Optional[str], purpose: str) -> int:
    """``--queue-list`` and ``--queue-flush`` (``purpose`` LIST or FLUSH):
    DIR must exist and pass the checks; returns its owner."""
    try:
        fd = _open_checked_directory(directory)
    except OSError as exc:
        raise QueueError(f"cannot read queue {directory}: {exc.strerror}") from None
    try:
        owner = _check_owner(directory, fd, user, purpose)
        try:
            os.close(_open_checked_directory(FAILED, owner, fd, f"{directory}/{FAILED}"))
        except FileNotFoundError:
            pass  # made by the first mail that fails
        except OSError as exc:
            raise QueueError(f"cannot read queue {directory}/{FAILED}: {exc.strerror}") from None
        return owner
    finally:
        os.close(fd)


def delivery_user(user: Optional[str], owner: int) -> Optional[str]:
    """Whom a runner or a flush delivers as: ``--user``; or, for root
    without one, DIR's owner when that is not root; else nobody else."""
    if user is not None or os.geteuid() != 0 or owner == 0:
        return user
    import pwd

    try:
        return pwd.getpwuid(owner).pw_name
    except KeyError:
        raise QueueError(f"the queue's owner, uid {owner}, has no account to deliver as;"
                         f" give --user") from None


def _open_checked_directory(path: str, owner: Optional[int] = None, dir_fd: Optional[int] = None,
                            label: str = "") -> int:
    try:
        return open_checked(path, os.O_RDONLY, queue_file(stat.S_IFDIR, owner), dir_fd,
                            label or f"queue directory {path}")
    except UnsafeFile as exc:
        raise QueueError(str(exc)) from None


def _uid_of(user: Optional[str]) -> Optional[int]:
    if user is None:
        return None
    from msmtpd.system import privileges

    return privileges.resolve(user).uid


def _check_owner(directory: str, fd: int, user: Optional[str], purpose: str) -> int:
    """DIR's owner must be root or the user who writes it, and that user
    must be able to write it: root, or its owner with write permission."""
    status = os.fstat(fd)
    owner = status.st_uid
    writer = _uid_of(user)
    if writer is None:
        if purpose == SERVE:
            writer = os.geteuid()
        elif purpose == FLUSH:  # root delivers as DIR's owner
            writer = owner if os.geteuid() == 0 else os.geteuid()
    if writer is None:
        return owner
    if owner == writer and (writer == 0 or status.st_mode & OWNER_WRITES == OWNER_WRITES):
        return owner  # the usual case: no account looked up
    who = (f"--user {user}" if user is not None
           else f"the user msmtpd runs as, {owner_name(os.geteuid())}")
    if owner not in (0, writer):
        raise QueueError(f"queue directory {directory} is owned by {owner_name(owner)},"
                         f" not by root or {who}")
    if writer != 0 and (owner != writer or status.st_mode & OWNER_WRITES != OWNER_WRITES):
        raise QueueError(f"{who} cannot write queue directory {directory} (owned by"
                         f" {owner_name(owner)}, mode {stat.S_IMODE(status.st_mode):04o});"
                         f" chown it to that user")
    return owner


def make_fifo(directory: str) -> str:
    """The wake-up FIFO; an existing file of that name is left to the
    caller's checked open."""
    path = os.path.join(directory, WAKE_FIFO)
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        pass
    return path
