"""Everything a session may need still works after it dropped to --user.

The sessions' user may be unable to read the Python installation (here
pyenv lives under /root, mode 0700, as a virtualenv under /root would), so
a module imported only when first needed (a big message's temporary file,
an AUTH's constant-time compare, TLS) must already be loaded by then.
"""

from __future__ import annotations

import base64
import os
import smtplib
import subprocess
from pathlib import Path
from typing import List

import pytest

from tests import helpers
from tests.support.tls_daemons import WAIT, Certs, Daemon, run_daemons, stop_daemons
from tests.support.users_file import PASSWORDS, users_file

BIG = "Subject: big\r\n\r\n" + ("x" * 70 + "\r\n") * 30_000  # over the 1 MiB held in memory


@pytest.fixture(autouse=True)
def root() -> None:
    helpers.need_root()


def test_a_daemon_as_nobody_serves_auth_tls_and_big_mail(tmp_path: Path, certs: Certs) -> None:
    users = users_file(tmp_path)
    users.chmod(0o600)
    args = [f"--tls-cert={certs.combined}", "--user=nobody", f"--auth-file={users}"]
    daemon = Daemon(tmp_path, "nobody", args, command="cat >/dev/null; :", max_sessions=2)
    run_daemons(daemon)
    try:
        for _ in range(2):  # both workers, each one session
            with smtplib.SMTP(daemon.host, daemon.port, local_hostname="client.test", timeout=WAIT) as smtp:
                smtp.starttls(context=certs.context())
                smtp.login("alice", PASSWORDS["alice"])
                assert smtp.sendmail("alice@example.org", ["bob@example.org"], BIG) == {}
        daemon.wait_log("delivered, exit status 0", count=2)
    finally:
        stop_daemons([daemon])
    log = daemon.log_text()
    assert "error:" not in log, log


def test_an_inetd_session_as_nobody_serves_auth_and_big_mail(tmp_path: Path) -> None:
    token = base64.b64encode(b"\0u\0pw").decode()
    conversation = (f"EHLO client.test\r\nAUTH PLAIN {token}\r\nMAIL FROM:<a@example.org>\r\n"
                    f"RCPT TO:<b@example.org>\r\nDATA\r\n{BIG}.\r\nQUIT\r\n").encode()
    log = tmp_path / "inetd.log"
    args: List[str] = ["--user=nobody", "--auth=u,echo pw", "--command=cat >/dev/null; :",
                       f"--log={log}"]
    log.touch()
    os.chown(log, 65534, 65534)
    process, out, err = helpers.run_inetd_process(args, conversation)
    codes = [line[:3] for line in out.decode().split("\r\n") if line[3:4] == " "]
    assert codes == ["220", "250", "235", "250", "250", "354", "250", "221"], (out[-300:], err)
    assert process.returncode == 0
    assert "error:" not in log.read_text()


DEFER_ONCE = """#!/bin/sh
cat > /dev/null
[ -e {dir}/deferred ] && {{ touch {dir}/delivered; exit 0; }}
touch {dir}/deferred
exit 75
"""


def test_the_queue_runner_and_a_flush_as_nobody_read_envelopes_back(tmp_path: Path) -> None:
    """A deferred mail's envelope is read back (its times parsed) after the drop."""
    import shutil
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="msmtpd-nobody-", dir="/tmp"))
    try:
        shared.chmod(0o777)
        script = shared / "deliver.sh"
        script.write_text(DEFER_ONCE.format(dir=shared))
        script.chmod(0o755)
        queue, log = shared / "queue", tmp_path / "queue.log"
        env = dict(os.environ, MSMTPD_QUEUE_RETRY_SECONDS="0.2")
        with helpers.Server([f"--queue={queue}", "--user=nobody", f"--command={script}",
                             f"--log={log}"], env=env) as server:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as smtp:
                assert smtp.sendmail("a@example.org", ["b@example.org"], "Subject: q\r\n\r\nhi\r\n") == {}
            assert helpers.wait_until(lambda: (shared / "delivered").exists(), WAIT), log.read_text()
        text = log.read_text()
        assert "delivered after 2 attempts" in text and "failed" not in text, text
        # The same without a daemon: a mail deferred by an --inetd session's flush.
        for name in ("deferred", "delivered"):
            (shared / name).unlink()
        conversation = (b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
                        b"DATA\r\nhi\r\n.\r\nQUIT\r\n")
        stored = helpers.run_inetd([f"--queue={queue}", "--user=nobody"], conversation)
        assert b"queued as" in stored.stdout
        args = [helpers.program("msmtpd"), f"--queue={queue}", "--user=nobody", f"--command={script}"]
        first = subprocess.run([*args, "--queue-flush"], capture_output=True, text=True, timeout=WAIT)
        second = subprocess.run([*args, "--queue-flush"], capture_output=True, text=True, timeout=WAIT)
        assert (first.returncode, second.returncode) == (75, 0), (first.stderr, second.stderr)
        assert (shared / "delivered").exists()
    finally:
        shutil.rmtree(shared, ignore_errors=True)
