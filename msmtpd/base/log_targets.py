"""Logging set-up for ``--log=none|syslog|FILE|-``.

File and standard-error lines read
``2026-11-22 04:16:38 msmtpd[1234] info: message``; syslog gets facility
mail and the ident ``msmtpd[pid]``.  Nothing here ever sees a password:
the session logs user names and outcomes only.

Log lines carry what clients sent (EHLO names, addresses, user names), so
every target gets them escaped: a character that is not printable (a
newline, ESC, U+2028...) is written as ``\\xNN`` (``\\uNNNN`` above 0xff),
one event stays one line, and a line is cut at :data:`MAX_LINE`.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import sys
from typing import Any, Optional

from msmtpd.base.safe_files import UnsafeFile, open_checked, written_file

log = logging.getLogger("msmtpd")

SYSLOG_SOCKET = "/dev/log"
# Longest log message, in characters after escaping.
MAX_LINE = 2000
# A new log file: the logged addresses are not secret, the file is not for others to write.
LOG_FILE_MODE = 0o644
LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
                logging.ERROR: "error", logging.CRITICAL: "error"}


class _ReportOnce:
    """A log target that fails (disk full, file gone read-only) must not
    stop the service nor flood stderr with tracebacks: say it once."""

    reported = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if _ReportOnce.reported:
            return
        _ReportOnce.reported = True
        import sys as _sys

        exc = _sys.exc_info()[1]
        where = getattr(self, "baseFilename", None) or getattr(self, "address", "the log")
        message = f"cannot write to {where}: {exc}; log lines are lost until it works again"
        if _stderr_is_private():
            try:
                _sys.stderr.write(f"msmtpd: {message}\n")
                _sys.stderr.flush()
            except (OSError, ValueError):
                pass
        if not where == SYSLOG_SOCKET:  # a daemon's stderr is /dev/null: tell syslog too
            import syslog

            syslog.openlog("msmtpd", syslog.LOG_PID, syslog.LOG_MAIL)
            syslog.syslog(syslog.LOG_ERR, message)


def _stderr_is_private() -> bool:
    """False when standard error is the client's connection: xinetd hands
    the socket over as stdin, stdout and stderr, and nothing but SMTP may
    go there.  A terminal, a pipe or a journal shared with standard output
    is fine."""
    return not (_is_socket(2) and _same_file(2, 0))


def escape(text: str) -> str:
    """Non-printable characters as ``\\xNN``; at most MAX_LINE characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape_char(c) for c in text)
    if len(text) > MAX_LINE:
        text = f"{text[:MAX_LINE]}... [{len(text) - MAX_LINE} more characters]"
    return text


def _escape_char(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


class _Formatter(logging.Formatter):
    """Escapes the message: whatever a client put in it stays on one line."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape(record.message)
        record.lowername = LEVEL_NAMES.get(record.levelno, "info")
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802
        return ""  # a traceback is many lines: the message says what failed

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return ""


class ReopenableFileHandler(_ReportOnce, logging.FileHandler):
    """A log file that can be reopened after logrotate renamed it (SIGHUP).

    The master opens it as root in a directory ``--user`` may write, so it
    is opened by :mod:`msmtpd.base.safe_files` as a written file: never through a
    symlink, never a FIFO, never a hard link of another file.  A reopen
    that fails keeps the file already open and says why in it."""

    def _open(self) -> io.TextIOWrapper:
        fd = open_checked(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, written_file(),
                          mode=LOG_FILE_MODE)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def reopen(self) -> None:
        self.acquire()
        try:
            try:
                stream = self._open()
            except OSError as exc:
                why = str(exc) if isinstance(exc, UnsafeFile) else f"{self.baseFilename}: {exc.strerror}"
                if self.stream is None:
                    self.handleError(logging.makeLogRecord({"msg": why}))
                else:
                    self.emit(logging.makeLogRecord({
                        "msg": "cannot reopen the log file %s; still writing to the file open before",
                        "args": (why,), "levelno": logging.ERROR, "levelname": "ERROR"}))
                return
            self.close()
            self._closed = False
            self.stream = stream
            _ReportOnce.reported = False
        finally:
            self.release()

    def descriptor(self) -> Optional[int]:
        """The open file's descriptor, for :func:`msmtpd.system.privileges.hand_over`."""
        return None if self.stream is None else self.stream.fileno()


class _StderrHandler(_ReportOnce, logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self) -> None:
        super().__init__(sys.stderr)


def open_handler(target: str, log_format: str = "text") -> Optional[logging.Handler]:
    """The handler for a ``--log`` value, writing ``--log-format``'s lines;
    raises OSError when a log file cannot be opened, so start-up can refuse
    with a clear line."""
    if target == "none":
        return None
    handler: logging.Handler
    if target == "syslog":
        import logging.handlers

        class _SysLog(_ReportOnce, logging.handlers.SysLogHandler):
            pass

        handler = _SysLog(SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_MAIL)
        handler.setFormatter(_formatter(log_format, "msmtpd[%(process)d]: ", "msmtpd[%(process)d]: "))
        return handler
    if target == "-":
        if not _stderr_is_private():
            return None  # under xinetd stderr is the client's socket: log nothing there
        handler = _StderrHandler()
    else:
        handler = ReopenableFileHandler(target, encoding="utf-8")
    handler.setFormatter(_formatter(log_format, "%(asctime)s msmtpd[%(process)d] %(lowername)s: ", ""))
    return handler


def _formatter(log_format: str, text_prefix: str, json_prefix: str) -> logging.Formatter:
    """Today's text lines, or (``--log-format=json``) one JSON object per
    line; :mod:`json` is imported only for the latter."""
    if log_format == "json":
        from msmtpd.base.json_log import JsonFormatter

        return JsonFormatter(json_prefix)
    return _Formatter(text_prefix + "%(message)s", "%Y-%m-%d %H:%M:%S")


def install(handler: Optional[logging.Handler]) -> None:
    """Make ``handler`` the one target of msmtpd's log (None: no log)."""
    from msmtpd.base.logger import log as proxy

    logging.raiseExceptions = False
    log.propagate = False
    for old in list(log.handlers):
        log.removeHandler(old)
    if handler is None:
        log.addHandler(logging.NullHandler())
        log.setLevel(logging.CRITICAL + 1)
        proxy.logger = None
        return
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    proxy.logger = log


def reopen() -> None:
    """Reopen the log file after a rotation; other targets need nothing."""
    for handler in log.handlers:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()


def _same_file(fd_a: int, fd_b: int) -> bool:
    try:
        a, b = os.fstat(fd_a), os.fstat(fd_b)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False
