"""--start: an msmtpd master of our own on a free loopback port, with the
delivery command it runs, and, with --queue, the wait for its queue to
empty."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from benchkit.load.killer import workers_of
from benchkit.processes import free_port, stop_process

BIN = Path(sys.executable).parent
# The tool's entry point, which is also its own delivery command (--store).
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "load.py"


def delivery_command(options: argparse.Namespace, maildir: Path) -> str:
    if options.store_with == "maildir":
        return f"{BIN / 'msmtpd-maildir'} {maildir} -f %F --"
    rate = f" --fail-rate {options.fail_rate:g}" if options.queue else ""
    return f"{sys.executable} -I -S {SCRIPT} --store {maildir}{rate} -f %F --"


class StartedServer:
    """An msmtpd master of our own on a free loopback port."""

    def __init__(self, options: argparse.Namespace, workdir: Path, command: str) -> None:
        self.port = free_port()
        self.log = workdir / "msmtpd.log"
        self.stderr_path = workdir / "msmtpd.stderr"
        self.argv = [options.msmtpd, "--interface=127.0.0.1", f"--port={self.port}",
                     f"--max-sessions={options.max_sessions}", f"--command={command}",
                     f"--log={self.log}", f"--timeout={max(1, int(options.timeout))}",
                     f"--command-timeout={max(1, int(options.timeout))}"]
        env = None
        self.queue: Optional[Path] = None
        if options.queue:
            self.queue = workdir / "queue"
            self.argv += [f"--queue={self.queue}", f"--queue-workers={options.queue_workers}"]
            env = dict(os.environ, MSMTPD_QUEUE_RETRY_SECONDS=str(options.queue_retry))
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=stderr, env=env)

    def queued(self) -> Tuple[int, int]:
        """Mails in the queue and in its failed/."""
        if self.queue is None:
            return 0, 0
        def count(where: Path) -> int:
            return sum(1 for p in where.glob("*.env")) if where.is_dir() else 0
        return count(self.queue), count(self.queue / "failed")

    def wait_ready(self, timeout: float) -> None:
        """Until a worker greets (and the master has its whole pool)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"msmtpd exited with status {self.process.returncode}: "
                                   + self.stderr_path.read_text(errors="replace").strip())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    if sock.recv(512).startswith(b"220"):
                        sock.sendall(b"QUIT\r\n")
                        break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError(f"msmtpd did not greet on port {self.port} within {timeout:g} s")
        while len(workers_of(self.process.pid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        return stop_process(self.process, timeout)


def drain(server: StartedServer, deadline: float) -> Dict[str, Any]:
    """Wait for the queue runner to deliver everything queued."""
    began = time.monotonic()
    left, failed = server.queued()
    while left and time.monotonic() < deadline and server.process.poll() is None:
        time.sleep(0.1)
        left, failed = server.queued()
    attempts = 0
    try:
        attempts = server.log.read_text(errors="replace").count(": attempt ")
    except OSError:
        pass
    return {"left": left, "failed": failed, "drain_seconds": round(time.monotonic() - began, 3),
            "attempts": attempts}
