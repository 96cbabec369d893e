"""A daemon with --queue as the system tests drive it: a fast retry, a command
that fails on demand, mails sent and found queued."""

from __future__ import annotations

import os
import smtplib
from pathlib import Path
from typing import List, Sequence

from tests.helpers import (
    program,
)

FAST = dict(os.environ, MSMTPD_QUEUE_RETRY_SECONDS="0.2")



# Fails with $FAIL_STATUS for the first $FAILS attempts (counted in a file
# named after the last recipient), then delivers with msmtpd-maildir.
# $SLOW (a file) makes it wait before delivering while the file exists.
COMMAND = """#!/bin/sh
dir={dir}
for last; do :; done
n=$(cat "$dir/count-$last" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$dir/count-$last"
case $last in
    perm*) echo "no such user" >&2; exit 1 ;;
    temp*) echo "relay unreachable" >&2; exit 69 ;;
esac
if [ "$n" -le "{fails}" ]; then echo "attempt $n deferred" >&2; exit 75; fi
if ! mkdir "$dir/busy-$last" 2>/dev/null; then touch "$dir/overlap"; fi
touch "$dir/started-$last"
while [ -e "$dir/slow" ]; do sleep 0.05; done
sleep {pause}
"{maildir}" "$dir/maildir" "$@"
status=$?
rmdir "$dir/busy-$last"
exit $status
"""



def command(tmp_path: Path, fails: int = 0, pause: float = 0.0) -> str:
    script = tmp_path / "deliver.sh"
    script.write_text(COMMAND.format(dir=tmp_path, fails=fails, pause=pause,
                                     maildir=program("msmtpd-maildir")))
    script.chmod(0o755)
    return f"{script} -f %F --"



def send(port: int, recipients: Sequence[str], body: str = "hello\r\n") -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("test.example")
        client.mail("sender@example.test")
        for recipient in recipients:
            client.rcpt(recipient)
        code, text = client.data(f"Subject: queued\r\n\r\n{body}")
    assert code == 250, text
    return text.decode()



def queued(directory: Path, failed: bool = False) -> List[str]:
    where = directory / "failed" if failed else directory
    return sorted(p.name[:-4] for p in where.glob("*.env")) if where.is_dir() else []

