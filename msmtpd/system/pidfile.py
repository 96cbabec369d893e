"""A pid file that is locked for the master's whole life.

``flock`` locks belong to the open file description, so the lock taken in
the foreground survives the fork into the daemon; a file nobody holds
locked is stale and is taken over.

The master is root, and the directory may be writable by someone else
(``--user``'s, or a shared one): a new pid file is created exclusively
(``O_EXCL``), an existing one is opened without following a symlink and
taken over only when it is a regular file of the master's own user with
no other hard link; anything else refuses the start.  On exit the name is
removed only while it still names the file the master holds.
"""

from __future__ import annotations

import errno
import fcntl
import os

from msmtpd.base.config import ConfigError
from msmtpd.base.safe_files import UnsafeFile, open_checked, still_there, written_file

TYPE_CHECKING = False  # typing at run time costs every process some 1.6 MB and 3 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Optional

# A name that vanishes between the exclusive create and the open of the
# existing file (another start removing a stale one) is tried again this often.
OPEN_ATTEMPTS = 3
PID_FILE_MODE = 0o644


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.fd: Optional[int] = None

    def acquire(self) -> None:
        """Open and lock the file, or refuse because a live instance holds it
        or because the path is not a file we may take (a symlink, a FIFO,
        another user's file, a hard link)."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise ConfigError(
                f"already running (pid {holder or 'unknown'} holds {self.path})") from None
        self.fd = fd

    def _open(self) -> int:
        for _ in range(OPEN_ATTEMPTS):
            try:
                return open_checked(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, written_file(),
                                    mode=PID_FILE_MODE)
            except FileExistsError:
                pass  # a stale file, a live instance's, or something planted: look at it
            except UnsafeFile as exc:
                raise ConfigError(f"refusing pid file {exc}") from None
            except OSError as exc:
                raise ConfigError(f"cannot open pid file {self.path}: {exc.strerror}") from None
            try:
                return open_checked(self.path, os.O_RDWR, written_file({os.geteuid()}))
            except FileNotFoundError:
                continue
            except UnsafeFile as exc:
                raise ConfigError(f"refusing pid file {exc}") from None
            except OSError as exc:
                raise ConfigError(f"cannot open pid file {self.path}: {exc.strerror}") from None
        raise ConfigError(f"cannot open pid file {self.path}: {os.strerror(errno.EAGAIN)}")

    def write(self, pid: int) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode("ascii"), 0)

    def remove(self) -> None:
        if self.fd is None:
            return
        if still_there(self.path, self.fd):  # not a file someone put in its place
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = None
