"""``--log-format=json``: one JSON object per event, one per line.

Each object holds ``time`` (RFC 3339 with the zone, milliseconds), ``level``,
``pid``, ``event``, the fields the log call gave (see
:mod:`msmtpd.base.logger`) and ``message``, the text line's message.  A
call without fields is the event ``message``.  Loaded only when the JSON
format is chosen: ``json`` and ``datetime`` cost nothing otherwise.

Clients choose much of what is logged (addresses, user names), so every
value is a JSON string made safe: ``json.dumps`` escapes quotes,
backslashes and control characters, and every other character that is not
printable (DEL, C1 controls, U+2028...) is written as a ``\\uNNNN``
escape, so the line stays one line whatever reads it.  A byte that was not
UTF-8 (a lone surrogate from ``surrogateescape``) becomes the text
``\\xNN``, as in the text format.  A line is at most :data:`MAX_JSON_LINE`
characters: the longest strings are cut, never the JSON syntax.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime
from typing import Any, Dict, List, Optional

from msmtpd.base.log_targets import LEVEL_NAMES, MAX_LINE

# A JSON line holds the message (at most MAX_LINE in the text format) and the
# fields it was made from: twice a text line's bound.
MAX_JSON_LINE = 2 * MAX_LINE
# Longest list logged (the recipients are already summarised by their caller).
MAX_LIST_ITEMS = 10
# A string is never cut below this many characters while a longer one remains.
MIN_KEPT = 16
# Keys every object has; a field of the same name cannot replace them.
STANDARD_KEYS = ("time", "level", "pid", "event", "message")


def _escape_unprintable(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def safe_text(text: str) -> str:
    """``text`` without lone surrogates: a byte that was not UTF-8 reads ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join(_unsurrogate(c) if "\ud800" <= c <= "\udfff" else c for c in text)


def _unsurrogate(char: str) -> str:
    code = ord(char)
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else "\ufffd"


def jsonable(value: object) -> Any:
    """A field's value as JSON can hold it: strings made safe, lists bounded,
    numbers kept (but not NaN), anything else as its text."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value[:MAX_LIST_ITEMS]]
    return safe_text(str(value))


def dumps(obj: Dict[str, Any]) -> str:
    """One line of JSON, printable characters only."""
    line = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if not line.isprintable():
        line = "".join(c if c.isprintable() else _escape_unprintable(c) for c in line)
    return line


def bounded(obj: Dict[str, Any], limit: int = MAX_JSON_LINE) -> str:
    """``obj`` as one line of at most ``limit`` characters: the longest
    strings are cut (and say by how much) until it fits."""
    line = dumps(obj)
    for _ in range(64):  # each round cuts one string; a few suffice
        if len(line) <= limit:
            return line
        place = _longest_string(obj)
        if place is None:
            break
        holder, key = place
        text = holder[key]
        if len(text) <= MIN_KEPT:
            break
        encoded = len(dumps({"": text})) - 5  # its length inside the line
        per_char = max(1.0, encoded / len(text))
        excess = len(line) - limit + 40  # room for the "... [N more characters]" note
        keep = max(MIN_KEPT, len(text) - int(math.ceil(excess / per_char)))
        holder[key] = f"{text[:keep]}... [{len(text) - keep} more characters]"
        line = dumps(obj)
    if len(line) <= limit:
        return line
    # Still too long (many short strings): keep what identifies the event.
    return dumps({key: obj[key] for key in STANDARD_KEYS[:4] if key in obj}
                 | {"truncated": True})


def _longest_string(obj: Dict[str, Any]) -> Optional[tuple]:  # type: ignore[type-arg]
    """(container, key) of the longest string longer than MIN_KEPT."""
    best: Optional[tuple] = None  # type: ignore[type-arg]
    best_length = MIN_KEPT
    places: List[tuple] = [(obj, key) for key in obj]  # type: ignore[type-arg]
    for holder, key in places:
        value = holder[key]
        if isinstance(value, list):
            places.extend((value, index) for index in range(len(value)))
        elif isinstance(value, str) and len(value) > best_length:
            best, best_length = (holder, key), len(value)
    return best


class JsonFormatter(logging.Formatter):
    """One object per record; ``prefix`` (syslog's ``msmtpd[pid]: ``) before it."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created).astimezone()
        obj: Dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds"),
            "level": LEVEL_NAMES.get(record.levelno, "info"),
            "pid": record.process,
            "event": jsonable(getattr(record, "event", "message")),
        }
        fields = getattr(record, "fields", None) or {}
        for key, value in fields.items():
            if key not in STANDARD_KEYS:
                obj[key] = jsonable(value)
        obj["message"] = safe_text(record.getMessage())
        prefix = self.prefix % {"process": record.process} if self.prefix else ""
        return prefix + bounded(obj)
