"""Opening files that another user may have planted, without trusting them.

Root (or any process acting for it) must never follow a symbolic link that
an unprivileged user put where a file was expected, block on a FIFO put in
place of a regular file, append to a hard link of a file it alone may
write, or take a file of someone else for its own.  Every open here refuses
a final symbolic link (``O_NOFOLLOW``), never blocks (``O_NONBLOCK``,
cleared again unless a FIFO is wanted), and judges the open descriptor
(``fstat``), never a name that can change between a check and its use;
whatever is done to the file afterwards (``fchown``, writes) is done
through that descriptor.

What a file must be differs by use, and is a :class:`Rules`:
:func:`queue_file` for what root reads from the queue (no write by group or
others), :func:`written_file` for what root writes where ``--user`` may
(the log, the pid file: no other hard link).  This module sits in ``base``,
below everything that opens such a file (the log target included), and
imports nothing of msmtpd.
"""

from __future__ import annotations

import errno
import os
import stat

# Neither typing nor dataclasses at run time: this module is imported by the
# master before it forks (the pid file, the log), and dataclasses brings
# inspect, ast, dis and tokenize, some 2.5 MB that every worker would share.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Collection, FrozenSet, Optional

# What every open here adds to the caller's flags.
SAFE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# What group or others must not be able to do to a file of the queue.
UNSAFE_MODE_BITS = stat.S_IWGRP | stat.S_IWOTH
KINDS = {stat.S_IFREG: "a regular file", stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO",
         stat.S_IFLNK: "a symbolic link", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device",
         stat.S_IFBLK: "a device"}


class UnsafeFile(OSError):
    """The path is not a file we may use; ``str()`` says why, in a form fit
    for one log or terminal line.  An OSError (EPERM, ``strerror`` the
    reason alone), so that whoever reports a failed open reports this too;
    a caller that must tell the two apart catches it first."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(errno.EPERM, why, path)
        self.path = path
        self.why = why

    def __str__(self) -> str:
        return f"{self.path} {self.why}"


def kind_name(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), "an unknown kind of file")


def owner_name(uid: int) -> str:
    """``daemon (uid 1)``, or ``uid 4242`` for a uid without an account."""
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def account_name(uid: int) -> str:
    """``daemon``, or ``uid 4242`` for a uid without an account."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


class Words:
    """How a refusal reads.  The queue's lines name what was found; the log
    and pid file's lines say what is wrong.  Both are kept word for word:
    people and tests read them."""

    __slots__ = ("symlink", "wrong_kind", "wrong_owner", "name")

    def __init__(self, symlink: str, wrong_kind: str, wrong_owner: str,
                 name: Callable[[int], str]) -> None:
        self.symlink = symlink
        self.wrong_kind = wrong_kind  # {found}, {wanted}: kinds
        self.wrong_owner = wrong_owner  # {found}: the owner, {uid}: its uid, {wanted}: the owners allowed
        self.name = name  # how {found} and each of {wanted} name a uid


NAMING = Words("is a symbolic link", "is {found}, not {wanted}",
               "is owned by {found}, not by {wanted}", owner_name)
TERSE = Words("is a symbolic link; refusing to follow it", "is not {wanted}",
              "belongs to uid {uid}, not to {wanted}", account_name)


class Rules:
    """What a file must be before we use it."""

    __slots__ = ("kind", "owners", "refuse_shared_write", "refuse_hard_links", "words")

    def __init__(self, kind: int = stat.S_IFREG, owners: Optional[FrozenSet[int]] = None,
                 refuse_shared_write: bool = False, refuse_hard_links: bool = False,
                 words: Words = NAMING) -> None:
        self.kind = kind  # stat.S_IFREG, S_IFDIR, S_IFIFO
        self.owners = owners  # anyone when None
        self.refuse_shared_write = refuse_shared_write  # writable by group or others
        self.refuse_hard_links = refuse_hard_links  # a file that is also elsewhere
        self.words = words


def queue_file(kind: int, owner: Optional[int]) -> Rules:
    """A file or directory of the queue: of DIR's ``owner`` (anyone's while
    unknown), and nobody else may write it."""
    return Rules(kind, None if owner is None else frozenset({owner}), refuse_shared_write=True)


def written_file(owners: Optional[Collection[int]] = None) -> Rules:
    """A regular file root writes where ``--user`` may write (the log, the
    pid file): with no other hard link (a link made there to a file root
    alone may write would be written, or handed over, in its place)."""
    return Rules(owners=None if owners is None else frozenset(owners), refuse_hard_links=True,
                 words=TERSE)


def why_unsafe(info: os.stat_result, rules: Rules) -> Optional[str]:
    """What makes an open file unfit under ``rules``, or None."""
    words = rules.words
    if stat.S_IFMT(info.st_mode) != rules.kind:
        return words.wrong_kind.format(found=kind_name(info.st_mode), wanted=kind_name(rules.kind))
    if rules.refuse_hard_links and info.st_nlink != 1:
        return f"has {info.st_nlink} hard links; refusing a file that is also elsewhere"
    if rules.owners is not None and info.st_uid not in rules.owners:
        return words.wrong_owner.format(found=words.name(info.st_uid), uid=info.st_uid,
                                        wanted=" or ".join(map(words.name, sorted(rules.owners))))
    if rules.refuse_shared_write and info.st_mode & UNSAFE_MODE_BITS:
        return f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def open_checked(path: str, flags: int, rules: Rules, dir_fd: Optional[int] = None,
                 label: str = "", mode: int = 0o600) -> int:
    """Open ``path`` (relative to ``dir_fd`` when given) with ``flags`` plus
    :data:`SAFE_FLAGS` (and ``O_DIRECTORY`` when a directory is wanted),
    then judge the descriptor; returns it.  Raises :class:`UnsafeFile`,
    named ``label`` (``path`` by default), for a symbolic link or a file
    that breaks ``rules``; any other OSError from ``open`` as it comes
    (ENOENT; ENXIO when a FIFO is wanted and nobody reads it).  A FIFO stays
    non-blocking; anything else is made blocking again."""
    label = label or path
    if rules.kind == stat.S_IFDIR:
        flags |= os.O_DIRECTORY
    try:
        fd = os.open(path, flags | SAFE_FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        raise _refusal(exc, path, dir_fd, label, rules) from None
    try:
        problem = why_unsafe(os.fstat(fd), rules)
        if problem is not None:
            raise UnsafeFile(label, problem)
        if rules.kind != stat.S_IFIFO:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refusal(exc: OSError, path: str, dir_fd: Optional[int], label: str,
             rules: Rules) -> OSError:
    """The UnsafeFile a failed open means, or ``exc`` itself: ELOOP on a
    symbolic link (``O_NOFOLLOW``), ENOTDIR on anything but a directory
    (``O_DIRECTORY``), ENXIO where a FIFO nobody reads or a socket is
    where a regular file was wanted."""
    wrong_kind = ((exc.errno == errno.ENOTDIR and rules.kind == stat.S_IFDIR)
                  or (exc.errno == errno.ENXIO and rules.kind == stat.S_IFREG))
    if exc.errno != errno.ELOOP and not wrong_kind:
        return exc
    try:
        found = os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        return exc
    if exc.errno == errno.ELOOP:
        return UnsafeFile(label, rules.words.symlink) if stat.S_ISLNK(found) else exc
    return UnsafeFile(label, rules.words.wrong_kind.format(found=kind_name(found),
                                                          wanted=kind_name(rules.kind)))


def still_there(path: str, fd: int) -> bool:
    """Whether ``path`` names, without following a symlink, the very file
    open on ``fd`` (so that removing the name removes ours, not a file put
    there in its place)."""
    try:
        named, held = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
