"""--queue-first-try without processes: the option's bounds, its need of
--queue, and the lock a session holds from before the mail's commit."""

from __future__ import annotations

from pathlib import Path

import pytest

from msmtpd.base.config import MAX_FIRST_TRY_SECONDS, ConfigError, parse_first_try
from msmtpd.commands.cli import UsageError, parse_args
from msmtpd.delivery.queue_store import QueuedEnvelope
from msmtpd.smtp import replies
from tests.helpers import make_queue


def test_the_option_takes_0_to_600_seconds_and_needs_a_queue() -> None:
    assert parse_args([]).queue_first_try == 0
    assert parse_args(["--queue=q", "--queue-first-try=2.5"]).queue_first_try == 2.5
    assert parse_first_try("0", "--queue-first-try") == 0
    assert parse_first_try("600", "--queue-first-try") == MAX_FIRST_TRY_SECONDS == 600
    for bad in ("601", "-1", "nan", "x", "", "inf"):
        with pytest.raises(ConfigError):
            parse_first_try(bad, "--queue-first-try")
    with pytest.raises(UsageError, match="--queue-first-try needs --queue=DIR"):
        parse_args(["--queue-first-try=3"])
    parse_args(["--queue-first-try=0"])  # today's behaviour: nothing to need


def test_a_mail_stored_locked_is_skipped_by_the_runner_until_released(tmp_path: Path) -> None:
    queue = make_queue(tmp_path)
    envelope = QueuedEnvelope("a@example.test", ["b@example.test"], 1.0, "client", 5)
    mail_id, handle = queue.store_locked(envelope, b"hello")
    assert queue.ids() == [mail_id]
    assert queue.lock(mail_id) is None  # the runner's lock: busy, no attempt
    assert handle.read() == b"hello"
    handle.close()
    taken = queue.lock(mail_id)
    assert taken is not None
    taken.close()


def test_the_queued_reply_names_the_id_and_the_first_reason() -> None:
    reply = replies.QUEUED_AFTER_TRY.format(id="ID1", why="command timed out after 3 s")
    assert reply.code == 250
    assert reply.text == "2.0.0 OK, queued as ID1; first try: command timed out after 3 s; will retry"
