"""The queue store on its own (no server): what a stored mail looks like on
disk, that a hostile client cannot forge envelope lines, the locks, the
back-off, and the command-line checks of the queue options.
Here the real processes; the part in memory is in tests/unit/test_queue.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from msmtpd.delivery.queue_store import (
    QueuedEnvelope,
)
from tests.helpers import make_queue, program


@pytest.mark.parametrize("args, message", [
    (["--queue-list"], "--queue-list needs --queue=DIR"),
    (["--queue-flush"], "--queue-flush needs --queue=DIR"),
    (["--queue=/tmp", "--queue-list", "--queue-flush"], "cannot be combined"),
    (["--queue-workers=0"], "invalid --queue-workers"),
    (["--queue-lifetime=soon"], "invalid --queue-lifetime 'soon': expected a positive number of"
                                " seconds, or one with s, m, h or d (5d)"),
])
def test_queue_usage_errors_are_one_line_and_exit_3(args: list[str], message: str) -> None:
    result = subprocess.run([program("msmtpd"), *args], capture_output=True, text=True, timeout=20)
    assert result.returncode == 3
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert result.stderr.startswith("msmtpd: ")


@pytest.mark.parametrize("action", ["--queue-list", "--queue-flush"])
def test_a_missing_queue_directory_is_one_line_and_exit_3(tmp_path: Path, action: str) -> None:
    result = subprocess.run([program("msmtpd"), f"--queue={tmp_path / 'none'}", action],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 3
    assert result.stderr.startswith("msmtpd: cannot read queue ") and result.stderr.count("\n") == 1


def test_help_lists_the_queue_options() -> None:
    result = subprocess.run([program("msmtpd"), "--help"], capture_output=True, text=True, timeout=20)
    for option in ("--queue=DIR", "--queue-workers=N", "--queue-lifetime=", "--queue-list",
                   "--queue-flush"):
        assert option in result.stdout


def test_queue_list_shows_hostile_values_escaped_on_one_line(tmp_path: Path) -> None:
    queue = make_queue(tmp_path)
    queue.store(QueuedEnvelope("evil\nforged 1 queued", ["b@x.test\r\nmore"], 1.0, "c"), b"m\n")
    result = subprocess.run([program("msmtpd"), f"--queue={queue.directory}", "--queue-list"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    assert result.stdout.count("\n") == 1
    assert "<evil\\x0aforged 1 queued> -> <b@x.test\\x0d\\x0amore>" in result.stdout
