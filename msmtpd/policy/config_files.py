"""The small configuration files of who may do what (``--auth-file``,
``--senders``): read at start and on every SIGHUP, by the master as root,
so read safely and bounded, and parsed the same way: one user a line,
blank lines and ``#`` comments ignored, each user once."""

from __future__ import annotations

import os
import stat
from typing import Callable, Dict, Tuple, TypeVar

from msmtpd.base.config import ConfigError

Entry = TypeVar("Entry")

# A users or senders file is a handful of lines; this bounds a file read by mistake.
MAX_FILE_BYTES = 1 << 20


def read_text(path: str, option: str) -> str:
    """The UTF-8 text of a small configuration file; ConfigError names
    ``option`` and ``path`` when it cannot be read."""
    try:
        # Non-blocking, so that a FIFO named by mistake cannot hang a SIGHUP.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"invalid {option} {path}: not a regular file")
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {option} {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"invalid {option} {path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"invalid {option} {path}: not UTF-8 text") from None


def read_user_lines(path: str, option: str, parse_line: Callable[[str], Tuple[str, Entry]],
                    repeated: str) -> Dict[str, Entry]:
    """Each user's entry, as ``parse_line`` makes it of its line (raising
    ValueError with the reason); ConfigError names ``option``, the file and
    the line of the first problem, and ``repeated`` says how a user that
    comes twice already was ("defined", "listed")."""
    entries: Dict[str, Entry] = {}
    for number, line in enumerate(read_text(path, option).splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            user, entry = parse_line(line)
        except ValueError as exc:
            raise ConfigError(f"invalid {option} {path} line {number}: {exc}") from None
        if user in entries:
            raise ConfigError(f"invalid {option} {path} line {number}:"
                              f" user '{user}' is already {repeated}")
        entries[user] = entry
    if not entries:
        raise ConfigError(f"invalid {option} {path}: no users in it")
    return entries
