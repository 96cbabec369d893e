"""A damaged envelope in the queue: listed and logged, never dropped."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.helpers import Server, program, wait_until
from tests.support.queue_daemon import FAST, command, queued, send


def test_a_damaged_envelope_is_listed_logged_once_and_kept(tmp_path: Path) -> None:
    queue, log = tmp_path / "queue", tmp_path / "log"
    with Server([f"--queue={queue}", f"--command={command(tmp_path, fails=100)}", f"--log={log}"],
                env=FAST) as server:
        mail_id = send(server.port, ["kept@example.test"]).rsplit(" ", 1)[1]
        assert wait_until(lambda: "attempt 1" in log.read_text(), timeout=10)
        (queue / f"{mail_id}.env").write_bytes(b"\x00garbage\nno sender here\n")
        other = send(server.port, ["other@example.test"]).rsplit(" ", 1)[1]
        assert wait_until(lambda: f"queue {mail_id}: cannot read its envelope" in log.read_text(),
                          timeout=90)
        time.sleep(1.0)
        listing = subprocess.run([program("msmtpd"), f"--queue={queue}", "--queue-list"],
                                 capture_output=True, text=True, timeout=30)
        assert server.stop() == 0
    text = log.read_text()
    assert text.count(f"queue {mail_id}: cannot read its envelope") == 1, text
    assert "left in the queue" in text
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert f"{mail_id} queued unreadable envelope: envelope without sender or recipients" in lines
    assert any(line.startswith(f"{other} queued age ") for line in lines), lines
    assert mail_id in queued(queue) and (queue / f"{mail_id}.msg").exists()
