"""A pid file that is locked for the master's whole life.

``flock`` locks belong to the open file description, so the lock taken in
the foreground survives the fork into the daemon; a file nobody holds
locked is stale and is taken over.
"""

from __future__ import annotations

import fcntl
import os
from typing import Optional

from msmtpd.config import ConfigError


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.fd: Optional[int] = None

    def acquire(self) -> None:
        """Open and lock the file, or refuse because a live instance holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot open pid file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise ConfigError(
                f"already running (pid {holder or 'unknown'} holds {self.path})") from None
        self.fd = fd

    def write(self, pid: int) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode("ascii"), 0)

    def remove(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
