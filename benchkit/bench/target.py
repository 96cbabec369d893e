"""A server under test, started as a daemon on a port of its own (rows
1 to 3, 5, 6 and 8)."""

from __future__ import annotations

import subprocess
import time
from typing import Optional, Sequence

from benchkit.bench.cpu import CpuMeter
from benchkit.processes import free_port, stop_process, wait_for_port


class Target:
    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = 0
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.meter: Optional[CpuMeter] = None  # loads 1 to 3 only

    def start(self) -> float:
        """Start the server; returns the seconds until it accepted a connection."""
        self.port = free_port()
        started = time.monotonic()
        self.process = subprocess.Popen([*self.argv, "--interface=127.0.0.1", f"--port={self.port}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process(self.process, 30)
        self.process = None
