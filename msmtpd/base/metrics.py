"""The counters of ``--metrics``: one table in memory shared by every
process of the daemon, made by the master before it forks.

Each process writes only its own slot (a worker the slot of its
scoreboard place, the queue runner the last one), so no lock is shared
between processes; the master sums the slots when it is scraped.  A
worker that dies leaves its counts in its slot, and the worker that
replaces it goes on adding to them: nothing counted is lost.  Within one
process (the queue runner's delivery threads) a process-local lock keeps
each read-modify-write whole.

Imported only with ``--metrics``: the sessions reach it through
``Settings.counters`` (None without it), so nothing is loaded before the
port listens that would not otherwise be.  Names follow Prometheus'
conventions (https://prometheus.io/docs/practices/naming/): the
``msmtpd_`` prefix, ``_total`` for counters, seconds and bytes.
"""

from __future__ import annotations

import mmap
import struct
import threading
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

# Each cell is a float64: counts stay exact up to 2**53.
CELL = struct.Struct("d")


class Family(NamedTuple):
    """One counter and its label's possible values (each its own cell)."""

    name: str
    help: str
    label: str
    values: Tuple[str, ...]


# How a session ended: QUIT, end of input, and the session's ENDINGS table
# (msmtpd.smtp.session names each ending's value), the error limit, and the
# refusals before a greeting.
SESSION_ENDINGS = ("quit", "disconnect", "error_limit", "auth_failures", "allow_refused", "proxy_refused",
                   "data_too_slow", "timeout", "shutdown", "overload", "closed", "tls_failed",
                   "tls_unavailable", "client_not_reading", "connection_lost")
MAIL_RESULTS = ("delivered", "tempfail", "permfail", "queued", "refused")
QUEUE_RESULTS = ("delivered", "tempfail", "permfail")
# rate_limit and loop are counted by --rate-limit and the hop limit; 0 until then.
REFUSAL_REASONS = ("allow", "sender", "size", "rate_limit", "loop")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3", "other")

FAMILIES = (
    Family("msmtpd_sessions_total", "SMTP sessions ended, by how they ended.", "ending",
           SESSION_ENDINGS),
    Family("msmtpd_mails_total", "Mails at the final dot, by the session's answer.", "result",
           MAIL_RESULTS),
    Family("msmtpd_mail_bytes_total", "Octets of the mails at the final dot, by the answer.",
           "result", MAIL_RESULTS),
    Family("msmtpd_queue_deliveries_total", "Delivery attempts of the queue runner, by result.",
           "result", QUEUE_RESULTS),
    Family("msmtpd_auth_total", "AUTH attempts, by result.", "result", ("success", "failure")),
    Family("msmtpd_refusals_total", "Clients, senders or mails refused by a policy, by reason.",
           "reason", REFUSAL_REASONS),
    Family("msmtpd_tls_sessions_total", "TLS handshakes completed, by protocol version.",
           "version", TLS_VERSIONS),
)
DELIVERY_HISTOGRAM = "msmtpd_delivery_seconds"
DELIVERY_HELP = "Time the delivery command ran, in sessions and from the queue."
# Upper bounds in seconds; up to the default --command-timeout (300).
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _layout() -> Dict[Tuple[str, str], int]:
    cells: Dict[Tuple[str, str], int] = {}
    for family in FAMILIES:
        for value in family.values:
            cells[(family.name, value)] = len(cells)
    for bound in (*(_bound_text(b) for b in DELIVERY_BUCKETS), "+Inf"):
        cells[(DELIVERY_HISTOGRAM + "_bucket", bound)] = len(cells)
    cells[(DELIVERY_HISTOGRAM + "_sum", "")] = len(cells)
    return cells


def _bound_text(bound: float) -> str:
    return repr(float(bound))


CELLS = _layout()
BUCKET_CELLS = [CELLS[(DELIVERY_HISTOGRAM + "_bucket", _bound_text(b))] for b in DELIVERY_BUCKETS]
INF_CELL = CELLS[(DELIVERY_HISTOGRAM + "_bucket", "+Inf")]
SUM_CELL = CELLS[(DELIVERY_HISTOGRAM + "_sum", "")]


class Counters:
    """``slots`` rows of CELLS float64s in anonymous shared memory.  Make it
    before forking; each child calls :meth:`use_slot` with its own row."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.row = len(CELLS) * CELL.size
        self.memory = mmap.mmap(-1, slots * self.row)  # MAP_SHARED, zero-filled
        self.slot: Optional[int] = None  # this process's row; None: counts nothing
        self.lock = threading.Lock()

    def use_slot(self, slot: int) -> None:
        """In a child after fork: write to row ``slot`` from now on."""
        self.slot = slot
        self.lock = threading.Lock()  # never one inherited in a held state

    def add(self, name: str, value: str, amount: float = 1.0) -> None:
        """Add to the cell of ``name`` with label ``value`` (one of its
        family's values; an unknown one is a programming error: KeyError)."""
        self._add_cells((CELLS[(name, value)],), amount)

    def observe_delivery(self, seconds: float) -> None:
        """One delivery command that ran ``seconds``: the histogram's cells."""
        cells = [cell for bound, cell in zip(DELIVERY_BUCKETS, BUCKET_CELLS) if seconds <= bound]
        self._add_cells((*cells, INF_CELL), 1.0)
        self._add_cells((SUM_CELL,), seconds)

    def _add_cells(self, cells: Iterable[int], amount: float) -> None:
        if self.slot is None:
            return
        base = self.slot * self.row
        with self.lock:
            for cell in cells:
                offset = base + cell * CELL.size
                CELL.pack_into(self.memory, offset, CELL.unpack_from(self.memory, offset)[0] + amount)

    def totals(self) -> List[float]:
        """Every cell summed over the slots (what the master serves)."""
        sums = [0.0] * len(CELLS)
        for slot in range(self.slots):
            row = struct.unpack_from(f"{len(CELLS)}d", self.memory, slot * self.row)
            for index, value in enumerate(row):
                sums[index] += value
        return sums


class Gauge(NamedTuple):
    """A value read at scrape time: its name, help, and (labels, value) pairs."""

    name: str
    help: str
    samples: Sequence[Tuple[str, float]]  # labels as written: 'state="idle"' or ""
    kind: str = "gauge"


def render(totals: Sequence[float], gauges: Sequence[Gauge]) -> str:
    """The Prometheus text exposition format, version 0.0.4."""
    lines: List[str] = []
    for family in FAMILIES:
        lines += [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} counter"]
        lines += [f'{family.name}{{{family.label}="{value}"}} {_number(totals[CELLS[(family.name, value)]])}'
                  for value in family.values]
    name = DELIVERY_HISTOGRAM
    lines += [f"# HELP {name} {DELIVERY_HELP}", f"# TYPE {name} histogram"]
    for bound in (*(_bound_text(b) for b in DELIVERY_BUCKETS), "+Inf"):
        lines.append(f'{name}_bucket{{le="{bound}"}} {_number(totals[CELLS[(name + "_bucket", bound)]])}')
    lines.append(f"{name}_sum {_number(totals[SUM_CELL])}")
    lines.append(f"{name}_count {_number(totals[INF_CELL])}")
    for gauge in gauges:
        lines += [f"# HELP {gauge.name} {gauge.help}", f"# TYPE {gauge.name} {gauge.kind}"]
        lines += [f"{gauge.name}{{{labels}}} {_number(value)}" if labels
                  else f"{gauge.name} {_number(value)}" for labels, value in gauge.samples]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 2 ** 53 else repr(value)


def tls_version(description: str) -> str:
    """The label of a TLS session described as 'TLSv1.3 (cipher ...)'."""
    version = description.split(" ", 1)[0]
    return version if version in TLS_VERSIONS else "other"
