"""The logger every module writes to, without importing ``logging`` until
a log target is configured: an ``--inetd`` session with the default
``--log=none`` never pays for that import (about 5 ms here).

Each call names its event and gives its fields as keywords
(``log.info("%s: queued %s", who, mail_id, event="mail", peer=who,
queue_id=mail_id)``): the text format writes the message as before, the
JSON format (``--log-format=json``) writes the event and its fields."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs about 3 ms before the port listens; annotations are strings
if TYPE_CHECKING:
    from typing import Any


# logging's own numbers for its levels.
INFO = 20
WARNING = 30
ERROR = 40


class Log:
    """``info``, ``warning``, ``error`` and ``log`` as on a ``logging.Logger``; silent
    until :func:`msmtpd.base.log_targets.install` hands it the real one."""

    def __init__(self) -> None:
        self.logger: Any = None

    def log(self, level: int, message: str, *args: object, event: str = "message",
            **fields: object) -> None:
        """Log ``message % args``; ``event`` and ``fields`` ride along in the
        record's ``extra`` for the JSON format."""
        if self.logger is not None:
            self.logger.log(level, message, *args, extra={"event": event, "fields": fields})

    def info(self, message: str, *args: object, event: str = "message", **fields: object) -> None:
        self.log(INFO, message, *args, event=event, **fields)

    def warning(self, message: str, *args: object, event: str = "message",
                **fields: object) -> None:
        self.log(WARNING, message, *args, event=event, **fields)

    def error(self, message: str, *args: object, event: str = "message", **fields: object) -> None:
        self.log(ERROR, message, *args, event=event, **fields)


log = Log()
