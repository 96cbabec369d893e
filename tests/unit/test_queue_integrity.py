"""A damaged message is never delivered (issue 17, item 10): the envelope
records the size and SHA-256 of ID.msg when the mail is stored; before a
delivery the locked message is checked against them, and a mismatch moves
the mail to failed/ with the reason, logged and listed.  Envelopes of older
versions (no hash) are still delivered.
Here the part without processes; the real ones are in tests/system/test_queue_integrity.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

from msmtpd.delivery.queue_store import Queue, QueuedEnvelope, prepare_directory
from tests import helpers


def test_the_store_records_size_and_sha256_of_the_message(tmp_path: Path) -> None:
    prepare_directory(str(tmp_path / "queue"))
    queue = Queue(str(tmp_path / "queue"))
    message = b"Received: x\nSubject: s\n\n" + helpers.FIFTY_KB_BODY
    mail_id = queue.store(QueuedEnvelope("a@x.test", ["b@x.test"], 1.0, "c", 10), message)
    text = Path(queue.path(mail_id, ".env")).read_text()
    assert f"message-size: {len(message)}\n" in text
    assert f"message-sha256: {hashlib.sha256(message).hexdigest()}\n" in text
    assert "size: 10\n" in text  # the client's octets, as before
