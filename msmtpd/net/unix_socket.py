"""``--interface=/PATH``: a Unix stream socket for local programs.

At start a socket file a dead msmtpd left behind is replaced; one that
something still accepts on is a start-up error, and so is a path that
exists and is not a socket (it is never removed).  The file is created with
``--socket-mode`` exactly (the umask is set around ``bind``, so the socket
is never reachable wider than asked, not even for a moment) and, with
``--user``, handed to that user and group.  Linux ignores ``fchmod`` and
``fchown`` on a bound socket's descriptor for the file (they change the
socket's own inode), so the file is reached by name once: opened with
``O_PATH | O_NOFOLLOW``, checked on that descriptor (a socket, ours, one
link) and changed through ``/proc/self/fd``, so what is changed is the
inode that was checked, never a file swapped in by name.

The directory may be writable by ``--user``, whose sessions run for the
daemon's whole life: at the stop, the master (root) removes the name only
while it still names the socket it made (``st_dev`` and ``st_ino``
recorded at start), looked up and unlinked relative to one open descriptor
of the directory, so a directory or symlink swapped into the path cannot
turn the removal onto another file.

Loaded before the port listens: ``_socket`` and ``os`` only.
"""

from __future__ import annotations

import _socket
import os
import stat

from msmtpd.base.config import DEFAULT_SOCKET_MODE, SOCKET_MODE_BITS, ConfigError

TYPE_CHECKING = False  # typing costs about 3 ms before the port listens; annotations are strings
if TYPE_CHECKING:
    from typing import List, Optional, Tuple

class SocketFile:
    """A socket file this process made, and the inode it made, so that the
    stop removes that one and nothing put in its place."""

    def __init__(self, path: str, device: int, inode: int) -> None:
        self.path = path
        self.device = device
        self.inode = inode

    def remove(self) -> None:
        _unlink_socket(self.path, (self.device, self.inode))


# What bind() made in this process, for remove_all() at the master's stop.
_made: List[SocketFile] = []


def bind(path: str, backlog: int, mode: int = DEFAULT_SOCKET_MODE,
         owner: Optional[Tuple[int, int]] = None) -> _socket.socket:
    """A listening Unix stream socket at ``path``, with ``mode`` and, when
    given, ``owner`` (uid, gid); ConfigError says why not."""
    _clear_stale(path)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    umask = os.umask(SOCKET_MODE_BITS & ~mode)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(umask)
    try:
        _settle(path, owner)
        sock.listen(backlog)
    except (ConfigError, OSError) as exc:
        sock.close()
        remove_all()
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    return sock


def remove_all() -> None:
    """Remove the socket files this process made (the master, at the end of
    its stop, or when the start fails after binding)."""
    while _made:
        _made.pop().remove()


def _clear_stale(path: str) -> None:
    """Nothing at ``path``, or a socket nobody accepts on (removed)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot listen on {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"cannot listen on {path}: it exists and is not a socket")
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    probe.setblocking(False)  # a full listen queue answers EAGAIN: something is there
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        _unlink_socket(path, (info.st_dev, info.st_ino))  # left by a msmtpd that died
        return
    except FileNotFoundError:
        return  # gone meanwhile
    except BlockingIOError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot listen on {path}: cannot tell whether it is in use:"
                          f" {exc.strerror}") from None
    finally:
        probe.close()
    raise ConfigError(f"cannot listen on {path}: something is accepting connections on it")


def _settle(path: str, owner: Optional[Tuple[int, int]]) -> None:
    """Check what ``path`` names now that bind made it, record it for its
    removal, and give it to ``owner``."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
            raise ConfigError(f"cannot listen on {path}: it was replaced as it was made")
        _made.append(SocketFile(path, info.st_dev, info.st_ino))
        if owner is not None and (info.st_uid, info.st_gid) != owner:
            os.chown(f"/proc/self/fd/{fd}", *owner)  # the inode just checked, not the name
    finally:
        os.close(fd)


def _unlink_socket(path: str, identity: Tuple[int, int]) -> None:
    """Remove ``path`` if it is the socket ``identity`` (st_dev, st_ino),
    looked up and removed in one open directory."""
    directory, name = os.path.split(path)
    try:
        dir_fd = os.open(directory or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISSOCK(info.st_mode) and (info.st_dev, info.st_ino) == identity:
            os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass  # gone already, or not ours to remove
    finally:
        os.close(dir_fd)
