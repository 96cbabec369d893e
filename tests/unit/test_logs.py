"""Unit tests of the log format: what a client sent can neither forge a
line nor reach a terminal as an escape sequence, and a line stays short."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from msmtpd.base import log_targets
from msmtpd.delivery.pipe_command import summarise_recipients

FORGED = "mallory\n2026-12-01 20:00:00 msmtpd[1] info: forged\x1b[31m\u2028\x85\r"


def test_escape_writes_unprintable_characters_as_hex() -> None:
    assert log_targets.escape("a\nb\x1b[31mc\td") == "a\\x0ab\\x1b[31mc\\x09d"
    assert log_targets.escape("line\u2028sep\x85") == "line\\u2028sep\\x85"
    assert log_targets.escape("jörg@exämple.org") == "jörg@exämple.org"


def test_escape_bounds_a_line() -> None:
    text = log_targets.escape("x" * 100_000)
    assert len(text) < log_targets.MAX_LINE + 100
    assert text.endswith(f"[{100_000 - log_targets.MAX_LINE} more characters]")


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "msmtpd.log"
    handler = log_targets.open_handler(str(path))
    log_targets.install(handler)
    yield path
    log_targets.install(None)
    if handler is not None:
        handler.close()


def test_a_forged_user_name_stays_on_its_own_escaped_line(log_file: Path) -> None:
    logging.getLogger("msmtpd").info("client: authentication failed for user %s", FORGED)
    text = log_file.read_text()
    assert text.count("\n") == 1
    assert "\x1b" not in text and "\u2028" not in text and "\r" not in text
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d msmtpd\[\d+\] info: client: authentication "
                        r"failed for user mallory\\x0a2026-12-01 20:00:00 msmtpd\[1\] info: forged"
                        r"\\x1b\[31m\\u2028\\x85\\x0d\n", text)


def test_a_traceback_never_spreads_over_lines(log_file: Path) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("msmtpd").exception("it failed")
    assert log_file.read_text().count("\n") == 1


def test_many_recipients_are_summarised() -> None:
    recipients = [f"r{i}@example.org" for i in range(1000)]
    assert summarise_recipients(recipients) == "<r0@example.org>, <r1@example.org> and 998 more"
    assert summarise_recipients(recipients[:3]) == "<r0@example.org>, <r1@example.org>, <r2@example.org>"
    assert summarise_recipients(recipients[:1]) == "<r0@example.org>"
