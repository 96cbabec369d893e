"""Processes and ports, for the benchmark and the load generator alike:
a free loopback port and waiting for it to listen, stopping a started
server, and the process tree under a pid as /proc shows it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import List, Optional


def free_port() -> int:
    """A loopback port nothing listens on at this moment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> float:
    """Seconds until a connect to 127.0.0.1:port succeeds."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return time.monotonic() - started
        except OSError:
            time.sleep(0.002)
    raise RuntimeError(f"nothing listens on port {port}")


def stop_process(process: subprocess.Popen[bytes], grace: float = 5.0) -> Optional[int]:
    """SIGTERM and wait; SIGKILL if it has not gone within ``grace``.  Its
    exit status, or None when it had to be killed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def children_of(pid: int, task: Optional[int] = None) -> List[int]:
    """The children of ``pid``'s thread ``task`` (its main thread by
    default), from /proc; none once it has gone."""
    try:
        text = Path(f"/proc/{pid}/task/{pid if task is None else task}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def tree_pids(pid: int) -> List[int]:
    """``pid`` and all its descendants (the children of any of their
    threads), from /proc; zombies included, as they are until reaped."""
    pids: List[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        pids.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            pending.extend(children_of(current, int(task)))
    return pids


def stat_fields(pid: int) -> Optional[List[str]]:
    """The fields of /proc/PID/stat after the command name (which may hold
    spaces): the state first, then fields 4 onwards of proc(5); None once
    the process has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()
