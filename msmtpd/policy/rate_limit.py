"""``--rate-limit=N/PERIOD``: each logged-in user (else each client address)
may have at most N mails accepted per PERIOD, counted across every worker
at once.

The counts live in one table in shared memory (a memfd mapped before the
workers fork), guarded by a POSIX record lock on that memfd: the kernel
drops a lock whose holder dies, so a killed worker cannot wedge the others.

A *fixed* window: a key's window opens at its first MAIL FROM and lasts
PERIOD; at most N transactions are reserved in it, whatever happens at the
same moment in other workers.  A transaction reserves its place at MAIL
FROM, before any data is sent; one that does not end in acceptance (RSET,
QUIT, a refused or failed mail, a dropped connection) gives it back.  A
reservation held by a worker that is killed is given back when its window
ends.  A fixed window lets up to 2N through across a window boundary; the
provider's rolling quota is ``--queue-rate``'s job.

Bounded memory: SLOTS keys.  A key is looked for among PROBES slots from
its hash; when they are all taken by live windows, the oldest window among
them is forgotten.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import struct
import time
from typing import Callable, Optional, Union

# One slot: the key's hash (0: free), its window's start, the transactions
# reserved (and not given back) in that window.
SLOT = struct.Struct("<QdI4x")
SLOTS = 4096
PROBES = 16


def key_hash(key: str) -> int:
    """64 bits of BLAKE2b: two keys in one table do not collide in practice."""
    import hashlib

    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def describe_period(seconds: float) -> str:
    """``1h``, ``30m``, ``90s``: the PERIOD as the operator wrote it, roughly."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class Reservation:
    """One transaction's place in its key's window."""

    def __init__(self, table: RateTable, slot: int, hashed: int, window: float) -> None:
        self._table = table
        self._where: Optional[tuple[int, int, float]] = (slot, hashed, window)

    def settle(self, accepted: bool) -> None:
        """The transaction ended: its place is used (the mail was accepted)
        or given back.  Only the first call counts."""
        where, self._where = self._where, None
        if where is not None and not accepted:
            self._table.give_back(*where)


class RateTable:
    """N reservations per key per window of ``period`` seconds, in a
    table every worker shares."""

    def __init__(self, count: int, period: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.count = count
        self.period = period
        self._clock = clock
        self._fd = _shared_file(SLOT.size * SLOTS)
        self._map = mmap.mmap(self._fd, SLOT.size * SLOTS)

    def fileno(self) -> int:
        """The shared memory's file, which a daemon keeps open."""
        return self._fd

    def reserve(self, key: str) -> Union[Reservation, float]:
        """A place for one more transaction of ``key``, or the seconds to
        wait until its window ends."""
        hashed = key_hash(key)
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            now = self._clock()
            slot = self._find(hashed, now)
            owner, start, used = SLOT.unpack_from(self._map, slot * SLOT.size)
            if owner != hashed or start + self.period <= now or start > now:
                start, used = now, 0  # a new window (also after the clock went back)
            if used >= self.count:
                return max(float(start + self.period - now), 0.0)
            SLOT.pack_into(self._map, slot * SLOT.size, hashed, start, used + 1)
            return Reservation(self, slot, hashed, start)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _find(self, hashed: int, now: float) -> int:
        """The key's slot, else a free or expired one, else the one whose
        window began first among the key's PROBES slots."""
        first = hashed % SLOTS
        choice, oldest = first, math.inf
        for probe in range(PROBES):
            slot = (first + probe) % SLOTS
            owner, start, _ = SLOT.unpack_from(self._map, slot * SLOT.size)
            if owner == hashed:
                return slot
            begun = -math.inf if owner == 0 or start + self.period <= now else start
            if begun < oldest:
                choice, oldest = slot, begun
        return choice

    def give_back(self, slot: int, hashed: int, window: float) -> None:
        """One reservation less, if its window is still the key's."""
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            owner, start, used = SLOT.unpack_from(self._map, slot * SLOT.size)
            if owner == hashed and start == window and used > 0:
                SLOT.pack_into(self._map, slot * SLOT.size, owner, start, used - 1)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)


def _shared_file(size: int) -> int:
    """A file of ``size`` zero octets that exists only as long as it is
    open: a memfd, else an unlinked temporary file."""
    try:
        fd = os.memfd_create("msmtpd-rate-limit", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        import tempfile

        fd = os.dup(tempfile.TemporaryFile(prefix="msmtpd-rate-").fileno())
    os.ftruncate(fd, size)
    return fd
