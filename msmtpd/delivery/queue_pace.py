"""``--queue-rate=N/PERIOD``: the queue starts at most N deliveries in any
PERIOD, a sliding window, so a burst accepted at once reaches the provider at
the pace its quota allows (Gmail's 500 a day, Office 365's 30 a minute).

:class:`Pace` is the rule, on times it is given.  :class:`PaceFile` keeps
the recent start times in DIR (``.rate``, DIR's owner's file, opened by
the safe-file rules), so the pace holds across a restart: one line appended
per start, the file rewritten (to a temporary name, then renamed) once it
holds twice what the window needs.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from typing import Deque, Iterable, Optional, Tuple

from msmtpd.base.safe_files import open_checked, queue_file

RATE_FILE = ".rate"
RATE_TEMPORARY = ".rate.new"
# The first line: what the file holds, and the rate that wrote it (for
# --queue-list, which may be run without --queue-rate).
MAGIC = "msmtpd-queue-rate"
# A start time further ahead than this is taken as now: a clock set back
# must not stop the queue for as long as it went back.
CLOCK_SLACK_SECONDS = 1.0
MAX_FILE_OCTETS = 64 * 1024 * 1024  # a rate file larger than this is not ours


class Pace:
    """The start times of the last window, and whether another may start."""

    def __init__(self, count: int, period: float, starts: Iterable[float] = ()) -> None:
        self.count = count
        self.period = period
        self.starts: Deque[float] = deque(sorted(starts)[-count:])

    def _forget(self, now: float) -> None:
        while self.starts and self.starts[0] <= now - self.period:
            self.starts.popleft()
        if self.starts and self.starts[-1] > now + CLOCK_SLACK_SECONDS:
            self.starts = deque(min(t, now) for t in self.starts)

    def free(self, now: float) -> int:
        """How many deliveries may start now."""
        self._forget(now)
        return max(self.count - len(self.starts), 0)

    def next_start(self, now: float) -> float:
        """When the next delivery may start (now if it may)."""
        if self.free(now):
            return now
        return self.starts[len(self.starts) - self.count] + self.period

    def record(self, now: float) -> None:
        self._forget(now)
        self.starts.append(now)


def parse(text: str) -> Tuple[Optional[Tuple[int, float]], list[float]]:
    """The rate the file was written with (None if unknown) and its start
    times; a torn or foreign line is skipped."""
    lines = text.split("\n")
    rate: Optional[Tuple[int, float]] = None
    head = lines[0].split()
    if len(head) == 3 and head[0] == MAGIC:
        try:
            rate = (int(head[1]), float(head[2]))
        except ValueError:
            rate = None
    starts = []
    for line in lines[1:]:
        try:
            value = float(line)
        except ValueError:
            continue
        if value == value and value not in (float("inf"), float("-inf")):
            starts.append(value)
    return rate, starts


def read_rate_file(directory: str, owner: int) -> str:
    """The file's text, "" when there is none; UnsafeFile or OSError when it
    cannot be trusted or read."""
    try:
        fd = open_checked(os.path.join(directory, RATE_FILE), os.O_RDONLY,
                          queue_file(stat.S_IFREG, owner), label=RATE_FILE)
    except FileNotFoundError:
        return ""
    with os.fdopen(fd, "rb") as handle:
        return handle.read(MAX_FILE_OCTETS).decode("ascii", "replace")


class PaceFile:
    """The runner's pace, remembered in DIR."""

    def __init__(self, directory: str, owner: int, count: int, period: float,
                 now: float) -> None:
        self._directory = directory
        self._owner = owner
        _, starts = parse(read_rate_file(directory, owner))
        self.pace = Pace(count, period, (t for t in starts if t > now - period))
        self._fd = -1
        self._lines = 0
        self._rewrite()

    def record(self, now: float) -> None:
        """One delivery starts now: remembered before it starts."""
        self.pace.record(now)
        if self._lines >= 2 * self.pace.count + 16:
            self._rewrite()
            return
        os.write(self._fd, f"{now:.6f}\n".encode())
        self._lines += 1

    def _rewrite(self) -> None:
        pace = self.pace
        text = f"{MAGIC} {pace.count} {pace.period!r}\n" + "".join(f"{t:.6f}\n" for t in pace.starts)
        temporary = os.path.join(self._directory, RATE_TEMPORARY)
        rule = queue_file(stat.S_IFREG, self._owner)
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        fd = open_checked(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, rule,
                          label=RATE_TEMPORARY, mode=0o600)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
            os.replace(temporary, os.path.join(self._directory, RATE_FILE))
        except BaseException:
            os.close(fd)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._lines = len(pace.starts)


def waiting_for_the_rate(directory: str, owner: int, rate: Optional[Tuple[int, float]],
                         now: float) -> bool:
    """For --queue-list: whether a due mail now waits for its turn, by the
    rate given, else the one the runner wrote in the file."""
    try:
        written, starts = parse(read_rate_file(directory, owner))
    except OSError:
        return False
    rate = rate or written
    if rate is None:
        return False
    return Pace(*rate, starts).free(now) == 0
