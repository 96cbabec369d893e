"""Opening files that another user may have planted, without trusting them.

Root (or any process acting for it) must never follow a symbolic link that
an unprivileged user put where a file was expected, block on a FIFO put in
place of a regular file, or take a file of someone else for its own.  Every
such open here refuses symbolic links (``O_NOFOLLOW``), never blocks
(``O_NONBLOCK``, cleared again for regular files), and checks the open
descriptor with ``fstat``: its type, its owner, and that neither group nor
others may write it.  Checking the descriptor, not the name, leaves no gap
between the check and the use.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import Optional

# What group or others must not be able to do to a file we trust.
UNSAFE_MODE_BITS = stat.S_IWGRP | stat.S_IWOTH
KINDS = {stat.S_IFREG: "a regular file", stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO",
         stat.S_IFLNK: "a symbolic link", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device",
         stat.S_IFBLK: "a device"}


class UnsafeFile(Exception):
    """A file that is not what it must be; the message says what it is."""


def kind(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), "an unknown kind of file")


def owner_name(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check(status: os.stat_result, label: str, want: int, owner: Optional[int]) -> None:
    """Raise UnsafeFile unless ``status`` is of type ``want`` (``stat.S_IFREG``
    ...), owned by ``owner`` (any owner when None) and not writable by group
    or others."""
    if stat.S_IFMT(status.st_mode) != want:
        raise UnsafeFile(f"{label} is {kind(status.st_mode)}, not {kind(want)}")
    if owner is not None and status.st_uid != owner:
        raise UnsafeFile(f"{label} is owned by {owner_name(status.st_uid)},"
                         f" not by {owner_name(owner)}")
    if status.st_mode & UNSAFE_MODE_BITS:
        raise UnsafeFile(f"{label} is writable by group or others"
                         f" (mode {stat.S_IMODE(status.st_mode):04o})")


def open_checked(path: str, flags: int, want: int, owner: Optional[int],
                 dir_fd: Optional[int] = None, label: str = "", mode: int = 0o600) -> int:
    """Open ``path`` (relative to ``dir_fd`` when given) without following a
    symbolic link and without blocking, then check the descriptor; returns
    it.  OSError as ``os.open`` raises it (ENOENT ...), UnsafeFile for a
    symbolic link or a file that fails the check.  A regular file or a
    directory is made blocking again; a FIFO stays non-blocking."""
    label = label or path
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode,
                     dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(f"{label} is a symbolic link") from None
        raise
    try:
        check(os.fstat(fd), label, want, owner)
        if want != stat.S_IFIFO:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_directory(path: str, owner: Optional[int], dir_fd: Optional[int] = None,
                   label: str = "") -> int:
    """A directory, opened for listing and for opening files inside it
    (``dir_fd``), checked like a file."""
    flags = os.O_RDONLY | os.O_DIRECTORY
    try:
        return open_checked(path, flags, stat.S_IFDIR, owner, dir_fd, label)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:  # O_DIRECTORY on anything else
            status = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
            raise UnsafeFile(f"{label or path} is {kind(status.st_mode)},"
                             f" not a directory") from None
        raise
