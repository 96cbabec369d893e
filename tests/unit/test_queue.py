"""The queue store on its own (no server): what a stored mail looks like on
disk, that a hostile client cannot forge envelope lines, the locks, the
back-off, and the command-line checks of the queue options.
Here the part without processes; the real ones are in tests/system/test_queue.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from msmtpd.base.config import DEFAULT_QUEUE_LIFETIME, ConfigError, parse_duration
from msmtpd.commands.cli import parse_args
from msmtpd.delivery.queue_runner import MAX_RETRY_SECONDS, retry_delay
from msmtpd.delivery.queue_store import (
    Queue,
    QueuedEnvelope,
    decode_value,
    encode_value,
    new_id,
)
from tests.helpers import make_queue


def test_a_stored_mail_is_its_message_and_a_readable_envelope(tmp_path: Path) -> None:
    queue = make_queue(tmp_path)
    message = b"Received: from x\nSubject: hi\n\nbody\n"
    mail_id = queue.store(QueuedEnvelope("a@example.test", ["b@example.test", "c@example.test"],
                                   1_800_000_000.25, "[127.0.0.1]:4000", len(message)), message)
    assert queue.ids() == [mail_id]
    assert Path(queue.path(mail_id, ".msg")).read_bytes() == message
    text = Path(queue.path(mail_id, ".env")).read_text()
    assert "sender: a@example.test\n" in text
    assert "recipient: b@example.test\nrecipient: c@example.test\n" in text
    assert "arrived: 2027-01-15T08:00:00.250Z\n" in text
    assert "attempts: 0\n" in text
    # Nothing else is left in the directory: no temporary file.
    assert sorted(os.listdir(queue.directory)) == sorted(
        ["failed", f"{mail_id}.msg", f"{mail_id}.env"])
    assert os.stat(queue.directory).st_mode & 0o777 == 0o700
    assert os.stat(queue.path(mail_id, ".msg")).st_mode & 0o777 == 0o600
    envelope = queue.envelope(mail_id)
    assert envelope is not None
    assert (envelope.sender, envelope.recipients, envelope.arrived) == (
        "a@example.test", ["b@example.test", "c@example.test"], 1_800_000_000.25)


def test_a_message_from_a_file_descriptor_is_copied_whole(tmp_path: Path) -> None:
    queue = make_queue(tmp_path)
    source = tmp_path / "big"
    data = os.urandom(3 * 1024 * 1024 + 17)
    source.write_bytes(data)
    with open(source, "rb") as handle:
        mail_id = queue.store(QueuedEnvelope("", ["b@x.test"], 1.0, "c"), handle.fileno())
    assert Path(queue.path(mail_id, ".msg")).read_bytes() == data


def test_hostile_values_cannot_forge_envelope_lines(tmp_path: Path) -> None:
    queue = make_queue(tmp_path)
    hostile = "evil\nrecipient: victim@example.test\r\x1b[2J\\x41\u2028"
    mail_id = queue.store(QueuedEnvelope(hostile, ["b@x.test"], 1.0, hostile), b"m\n")
    lines = Path(queue.path(mail_id, ".env")).read_text().splitlines()
    assert [line for line in lines if line.startswith("recipient:")] == ["recipient: b@x.test"]
    envelope = queue.envelope(mail_id)
    assert envelope is not None
    assert envelope.sender == hostile and envelope.client == hostile
    assert envelope.recipients == ["b@x.test"]
    assert decode_value(encode_value(hostile)) == hostile


def test_a_mail_is_locked_by_one_holder_at_a_time(tmp_path: Path) -> None:
    queue = make_queue(tmp_path)
    mail_id = queue.store(QueuedEnvelope("a@x.test", ["b@x.test"], 1.0, "c"), b"m\n")
    first = queue.lock(mail_id)
    assert first is not None
    assert queue.lock(mail_id) is None  # another open file: flock refuses
    # An envelope rewritten by rename does not lift the lock (it is on the message).
    envelope = queue.envelope(mail_id)
    assert envelope is not None
    envelope.attempts = 3
    queue.update(mail_id, envelope)
    assert queue.lock(mail_id) is None
    first.close()
    second = queue.lock(mail_id)
    assert second is not None
    second.close()


def test_a_failed_mail_moves_with_its_reason(tmp_path: Path) -> None:
    queue = make_queue(tmp_path)
    mail_id = queue.store(QueuedEnvelope("a@x.test", ["b@x.test"], 1.0, "c"), b"m\n")
    envelope = queue.envelope(mail_id)
    assert envelope is not None
    queue.fail(mail_id, envelope, "permanent failure: command exit status 1")
    assert queue.ids() == [] and queue.ids(failed=True) == [mail_id]
    failed = queue.envelope(mail_id, failed=True)
    assert failed is not None and failed.failed == "permanent failure: command exit status 1"
    assert Path(queue.path(mail_id, ".msg", failed=True)).read_bytes() == b"m\n"


def test_a_store_that_fails_leaves_nothing(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "missing"))
    with pytest.raises(OSError):
        queue.store(QueuedEnvelope("a@x.test", ["b@x.test"], 1.0, "c"), b"m\n")
    assert not (tmp_path / "missing").exists()


def test_ids_sort_by_arrival_and_are_safe_file_names() -> None:
    ids = [new_id() for _ in range(50)]
    assert len(set(ids)) == 50
    assert ids == sorted(ids)
    assert all(set(i) <= set("0123456789abcdef-") for i in ids)


def test_back_off_doubles_from_a_minute_to_an_hour() -> None:
    assert [retry_delay(n, 60.0) for n in (1, 2, 3, 4, 5, 6, 7, 8)] == [
        60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert retry_delay(50, 60.0) == MAX_RETRY_SECONDS
    # The tests' shortened first delay shortens the longest in proportion.
    assert retry_delay(1, 0.1) == 0.1 and retry_delay(30, 0.1) == pytest.approx(6.0)


def test_queue_options_parse() -> None:
    config = parse_args(["--queue=q", "--queue-workers=5", "--queue-lifetime=2d"])
    assert config.queue == os.path.abspath("q")
    assert config.queue_workers == 5 and config.queue_lifetime == 2 * 86400
    assert parse_args([]).queue_lifetime == DEFAULT_QUEUE_LIFETIME == 5 * 86400
    assert parse_duration("90", "--queue-lifetime") == 90
    assert parse_duration("3h", "--queue-lifetime") == 3 * 3600
    for bad in ("0", "x", "5w", "-1d", "400d"):
        with pytest.raises(ConfigError):
            parse_duration(bad, "--queue-lifetime")
