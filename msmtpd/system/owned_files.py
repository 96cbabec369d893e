"""Opening a file in a directory that another user may write (the log in
``--user``'s directory, the pid file) without being turned against the
machine: root must not follow a symlink planted there, block on a FIFO,
append to a hard link of a file it alone may write, or hand such a file
over to the user.

Every file is opened without following a final symlink (``O_NOFOLLOW``)
and without blocking (``O_NONBLOCK``: a FIFO with no reader would hang the
open), and judged on the open descriptor (``fstat``), never on a name that
can change between a check and its use.  Whatever is done to the file
afterwards (``fchown``, writes) is done through that descriptor.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Collection, Optional

# What every open here adds to the caller's flags.
SAFE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeFile(OSError):
    """The path is not a file we may use; ``str()`` says why, in a form
    fit for one log or terminal line."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(errno.EPERM, why, path)
        self.path = path
        self.why = why

    def __str__(self) -> str:
        return f"{self.path} {self.why}"


def open_file(path: str, flags: int, mode: int = 0o644,
              owners: Optional[Collection[int]] = None) -> int:
    """A descriptor of the regular file at ``path``, opened with ``flags``
    plus :data:`SAFE_FLAGS` and blocking again afterwards.

    Raises :class:`UnsafeFile` when ``path`` is a symlink, not a regular
    file, has other hard links (a link to a file the caller alone may write,
    made where the user can write), or, with ``owners``, belongs to another
    user; any other OSError from ``open`` as it comes."""
    try:
        fd = os.open(path, flags | SAFE_FLAGS, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise UnsafeFile(path, "is a symbolic link; refusing to follow it") from None
        if exc.errno == errno.ENXIO:  # O_WRONLY on a FIFO that nobody reads
            raise UnsafeFile(path, "is not a regular file") from None
        raise
    try:
        problem = why_unsafe(os.fstat(fd), owners)
        if problem is not None:
            raise UnsafeFile(path, problem)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def why_unsafe(info: os.stat_result, owners: Optional[Collection[int]] = None) -> Optional[str]:
    """What makes an open file unfit, or None when it is a plain file of
    its own (one link) belonging to one of ``owners`` (anyone when None)."""
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_nlink != 1:
        return f"has {info.st_nlink} hard links; refusing a file that is also elsewhere"
    if owners is not None and info.st_uid not in owners:
        return f"belongs to uid {info.st_uid}, not to {_names(owners)}"
    return None


def still_there(path: str, fd: int) -> bool:
    """Whether ``path`` names, without following a symlink, the very file
    open on ``fd`` (so that removing the name removes ours, not a file put
    there in its place)."""
    try:
        named, held = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _names(uids: Collection[int]) -> str:
    import pwd

    names = []
    for uid in sorted(uids):
        try:
            names.append(pwd.getpwuid(uid).pw_name)
        except KeyError:
            names.append(f"uid {uid}")
    return " or ".join(names)
