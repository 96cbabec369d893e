"""A damaged message is never delivered (issue 17, item 10): the envelope
records the size and SHA-256 of ID.msg when the mail is stored; before a
delivery the locked message is checked against them, and a mismatch moves
the mail to failed/ with the reason, logged and listed.  Envelopes of older
versions (no hash) are still delivered.
Here the real processes; the part in memory is in tests/unit/test_queue_integrity.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import List

from tests import helpers


def store_by_inetd(queue: Path, args: List[str], subject: str) -> str:
    conversation = (b"EHLO x\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n"
                    b"DATA\r\nSubject: " + subject.encode() + b"\r\n\r\n" + helpers.FIFTY_KB_BODY
                    + b".\r\nQUIT\r\n")
    stored = helpers.run_inetd([f"--queue={queue}", *args], conversation)
    assert b"queued as" in stored.stdout, stored.stderr
    return stored.stdout.split(b"queued as ")[1].split(b"\r\n")[0].decode()


def msmtpd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helpers.program("msmtpd"), *args], capture_output=True, text=True,
                          timeout=60)


def test_a_truncated_or_altered_message_is_kept_aside_never_delivered(tmp_path: Path) -> None:
    queue, log, maildir = tmp_path / "queue", tmp_path / "log", tmp_path / "maildir"
    args = [f"--command={helpers.maildir_command(maildir)}", f"--log={log}"]
    truncated = store_by_inetd(queue, args, "truncated")
    altered = store_by_inetd(queue, args, "altered")
    intact = store_by_inetd(queue, args, "intact")
    message = queue / f"{truncated}.msg"
    size = message.stat().st_size
    assert size > 48_000
    subprocess.run(["truncate", "-s", "1000", str(message)], check=True)
    with open(queue / f"{altered}.msg", "r+b") as handle:  # same size, one octet differs
        handle.seek(30_000)
        handle.write(b"X")
    before = msmtpd(f"--queue={queue}", "--queue-list")
    assert (f"{truncated} queued damaged message: {truncated}.msg holds 1000 octets,"
            f" {size} were stored") in before.stdout.splitlines(), before.stdout
    flush = msmtpd(f"--queue={queue}", "--queue-flush", *args)
    assert flush.returncode == 0, flush.stderr  # nothing left queued: two in failed/
    mails = helpers.delivered(maildir)
    assert len(mails) == 1 and b"Subject: intact" in mails[0]
    text = log.read_text()
    assert (f"queue {truncated}: moved to failed/ after 0 attempts: mail from <a@example.test>"
            f" to <b@example.test>: damaged message: {truncated}.msg holds 1000 octets,"
            f" {size} were stored; not delivered") in text, text
    assert (f"queue {altered}: moved to failed/ after 0 attempts: mail from <a@example.test> to"
            f" <b@example.test>: damaged message: {altered}.msg differs from the one stored"
            " (SHA-256); not delivered") in text, text
    assert f"queue {intact}: delivered after 1 attempt" in text
    lines = msmtpd(f"--queue={queue}", "--queue-list").stdout.splitlines()
    [truncated_line] = [line for line in lines if line.startswith(truncated)]
    assert " failed " in truncated_line and "failed: damaged message: " in truncated_line
    [altered_line] = [line for line in lines if line.startswith(altered)]
    assert "failed: damaged message: " in altered_line and "(SHA-256)" in altered_line
    assert (queue / "failed" / f"{truncated}.msg").stat().st_size == 1000  # kept as it is


def test_an_envelope_of_an_older_version_is_still_delivered(tmp_path: Path) -> None:
    queue, maildir = tmp_path / "queue", tmp_path / "maildir"
    mail_id = store_by_inetd(queue, [], "old")
    envelope = queue / f"{mail_id}.env"
    lines = envelope.read_text().splitlines(keepends=True)
    envelope.write_text("".join(line for line in lines if not line.startswith("message-")))
    flush = msmtpd(f"--queue={queue}", "--queue-flush",
                   f"--command={helpers.maildir_command(maildir)}")
    assert flush.returncode == 0, flush.stderr
    [mail] = helpers.delivered(maildir)
    assert b"Subject: old" in mail and helpers.FIFTY_KB_BODY.replace(b"\r\n", b"\n") in mail
