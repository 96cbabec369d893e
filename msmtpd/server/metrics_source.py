"""What the master serves at ``--metrics``: the shared counters summed,
and the gauges read at scrape time (the scoreboard, the queue directory,
the start time, the version)."""

from __future__ import annotations

import os
import time
from typing import Any, List, Optional, Tuple

from msmtpd.base.config import Config, ConfigError
from msmtpd.base.metrics import Counters, Gauge, render
from msmtpd.net.metrics_http import MetricsEndpoint, bind


class MetricsSource:
    """Renders the exposition for the master's endpoint.  ``pool`` is the
    master's WorkerPool (busy slots, the workers)."""

    def __init__(self, config: Config, counters: Counters, pool: Any) -> None:
        self.config = config
        self.counters = counters
        self.pool = pool
        self.started = time.time()

    def __call__(self) -> str:
        from msmtpd import __version__

        busy = self.pool.busy()
        workers = len(self.pool.children.workers())
        gauges = [
            Gauge("msmtpd_sessions_active", "SMTP sessions being served now.", [("", busy)]),
            Gauge("msmtpd_workers", "Worker processes, by state.",
                  [('state="busy"', busy), ('state="idle"', max(workers - busy, 0))]),
            Gauge("msmtpd_max_sessions", "Sessions served at once at most (--max-sessions).",
                  [("", self.config.max_sessions)]),
            Gauge("msmtpd_start_time_seconds", "When the daemon started, in Unix time.",
                  [("", self.started)]),
            Gauge("msmtpd_build_info", "The version of msmtpd, as a label; always 1.",
                  [(f'version="{__version__}"', 1)]),
        ]
        if self.config.queue is not None:
            length, oldest, failed = queue_state(self.config.queue, time.time())
            gauges += [
                Gauge("msmtpd_queue_mails", "Mails waiting in the queue (--queue).", [("", length)]),
                Gauge("msmtpd_queue_oldest_age_seconds",
                      "Age of the oldest mail waiting in the queue; 0 when it is empty.",
                      [("", oldest)]),
                Gauge("msmtpd_queue_failed_mails", "Mails given up on, in failed/.", [("", failed)]),
            ]
        return render(self.counters.totals(), gauges)


def queue_state(directory: str, now: float) -> Tuple[int, float, int]:
    """Queued mails, the age of the oldest (its message file's time: it is
    written once, as the mail arrives), and failed ones.  Only names and
    lstat: the master reads nothing of what --user can write."""
    length, oldest = 0, now
    for entry in _entries(directory):
        if entry.name.endswith(".env") and not entry.name.startswith("."):
            length += 1
            try:
                stat = os.lstat(os.path.join(directory, entry.name[:-4] + ".msg"))
            except OSError:
                continue  # delivered while we looked
            oldest = min(oldest, stat.st_mtime)
    failed = sum(1 for entry in _entries(os.path.join(directory, "failed"))
                 if entry.name.endswith(".env"))
    return length, max(now - oldest, 0.0), failed


def _entries(directory: str) -> List[Any]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError:
        return []


def open_endpoint(config: Config) -> Optional[MetricsEndpoint]:
    """Bind ``--metrics`` (ConfigError when it cannot be bound); the master
    gives it its MetricsSource."""
    if config.metrics is None:
        return None
    address, port = config.metrics
    try:
        listener = bind(address, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on --metrics {address}:{port}: "
                          f"{exc.strerror or exc}") from None
    return MetricsEndpoint(listener, config.timeout)
