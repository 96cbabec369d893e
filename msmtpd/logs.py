"""Logging set-up for ``--log=none|syslog|FILE|-``.

File and standard-error lines read
``2026-11-22 04:16:38 msmtpd[1234] info: message``; syslog gets facility
mail and the ident ``msmtpd[pid]``.  Nothing here ever sees a password:
the session logs user names and outcomes only.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

log = logging.getLogger("msmtpd")

SYSLOG_SOCKET = "/dev/log"
_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
                logging.ERROR: "error", logging.CRITICAL: "error"}


class _Formatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s msmtpd[%(process)d] %(lowername)s: %(message)s",
                         "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.lowername = _LEVEL_NAMES.get(record.levelno, "info")
        return super().format(record)


class ReopenableFileHandler(logging.FileHandler):
    """A log file that can be reopened after logrotate renamed it (SIGHUP)."""

    def reopen(self) -> None:
        self.acquire()
        try:
            self.close()
            self.stream = self._open()
        finally:
            self.release()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self) -> None:
        super().__init__(sys.stderr)


def open_handler(target: str) -> Optional[logging.Handler]:
    """The handler for a ``--log`` value; raises OSError when a log file
    cannot be opened, so start-up can refuse with a clear line."""
    if target == "none":
        return None
    handler: logging.Handler
    if target == "syslog":
        import logging.handlers

        handler = logging.handlers.SysLogHandler(
            SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_MAIL)
        handler.setFormatter(logging.Formatter("msmtpd[%(process)d]: %(message)s"))
        return handler
    if target == "-":
        handler = _StderrHandler()
    else:
        handler = ReopenableFileHandler(target, encoding="utf-8")
    handler.setFormatter(_Formatter())
    return handler


def install(handler: Optional[logging.Handler]) -> None:
    log.propagate = False
    for old in list(log.handlers):
        log.removeHandler(old)
    if handler is None:
        log.addHandler(logging.NullHandler())
        log.setLevel(logging.CRITICAL + 1)
        return
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def reopen() -> None:
    """Reopen the log file after a rotation; other targets need nothing."""
    for handler in log.handlers:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()
