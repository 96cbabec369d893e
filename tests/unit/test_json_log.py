"""Unit tests of --log-format=json's formatter on in-memory records: the
fields, the escaping of what clients chose, the bound on a line, and that
every log call of the code names its event."""

from __future__ import annotations

import ast
import json
import logging
import re
from pathlib import Path

from msmtpd.base import json_log

HOSTILE = 'x"}\n{"event":"forged"}\x1b[31m\\\u2028\x85\x7f\udcff'


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    return logging.LogRecord("msmtpd", logging.INFO, __file__, 1, message, args, None) if not extra \
        else logging.makeLogRecord({"name": "msmtpd", "levelno": logging.ERROR, "msg": message,
                                    "args": args, **extra})


def test_an_event_with_its_fields() -> None:
    line = json_log.JsonFormatter().format(record("%s: queued %s", "127.0.0.1", "abc", event="mail",
                                                  fields={"peer": "127.0.0.1", "queue_id": "abc",
                                                          "recipients": ["a@x", "b@x"], "size": 3,
                                                          "seconds": 0.25, "event": "forged"}))
    obj = json.loads(line)
    assert list(obj)[:4] == ["time", "level", "pid", "event"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", obj["time"])
    assert obj["event"] == "mail" and obj["level"] == "error"  # a field cannot replace it
    assert obj["recipients"] == ["a@x", "b@x"] and obj["size"] == 3 and obj["seconds"] == 0.25
    assert obj["message"] == "127.0.0.1: queued abc"


def test_a_call_without_fields_is_the_event_message() -> None:
    obj = json.loads(json_log.JsonFormatter().format(record("plain %d", 5)))
    assert obj["event"] == "message" and obj["message"] == "plain 5"


def test_the_syslog_prefix() -> None:
    line = json_log.JsonFormatter("msmtpd[%(process)d]: ").format(record("x"))
    assert re.match(r"msmtpd\[\d+\]: \{", line)


def test_hostile_strings_stay_strings_on_one_printable_line() -> None:
    line = json_log.JsonFormatter().format(record("%s", HOSTILE, event="auth", fields={"user": HOSTILE}))
    assert line.isprintable() and "\n" not in line
    obj = json.loads(line)
    assert obj["event"] == "auth"
    assert obj["user"] == HOSTILE[:-1] + "\\xff"  # the byte that was no UTF-8, as the text format writes it


def test_a_line_is_bounded_by_cutting_strings() -> None:
    fields = {"user": "\u2028" * 5000, "sender": "s" * 3000, "recipients": ["r" * 3000] * 20}
    line = json_log.JsonFormatter().format(record("%s", "m" * 9000, event="mail", fields=fields))
    assert len(line) <= json_log.MAX_JSON_LINE
    obj = json.loads(line)
    assert obj["event"] == "mail" and len(obj["recipients"]) == json_log.MAX_LIST_ITEMS
    assert obj["user"].endswith("more characters]") and obj["user"].startswith("\u2028" * 16)


def test_numbers_that_json_cannot_hold() -> None:
    assert json_log.jsonable(float("nan")) is None and json_log.jsonable(True) is True
    assert json_log.jsonable(Path("/x")) == "/x"


def test_every_log_call_names_its_event() -> None:
    """--log-format=json has an event for every line: a call without one would be "message"."""
    unnamed = []
    for path in Path(json_log.__file__).parent.parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "log"
                    and node.func.attr in ("info", "warning", "error", "log")
                    and not any(keyword.arg == "event" for keyword in node.keywords)):
                unnamed.append(f"{path}:{node.lineno}")
    assert not unnamed
