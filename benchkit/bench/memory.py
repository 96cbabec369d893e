"""Row 6: the proportional set size of a server's whole tree, idle and at
its peak during load 1."""

from __future__ import annotations

import threading
from pathlib import Path

from benchkit.processes import children_of


def pss_kb(pid: int) -> int:
    """Proportional set size of ``pid`` and all its descendants.  A child
    caught between fork and exec shares its parent's memory and shows the
    parent's command line: it is skipped, or that memory would count twice."""
    total = 0
    pending = [(pid, b"")]
    while pending:
        current, parent_cmdline = pending.pop()
        try:
            cmdline = Path(f"/proc/{current}/cmdline").read_bytes()
            if cmdline != parent_cmdline:
                for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
            pending.extend((child, cmdline) for child in children_of(current))
        except OSError:
            continue
    return total


class PeakPss:
    """Samples the tree's PSS in a thread while a load runs; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.kb = max(self.kb, pss_kb(self.pid))
            self._stop.wait(0.05)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
