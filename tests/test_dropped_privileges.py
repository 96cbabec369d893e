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
from pathlib import Path
from typing import List

import pytest

from tests import helpers
from tests.test_tls import WAIT, Certs, Daemon, run_daemons, stop_daemons
from tests.test_tls import certs as certs  # the module's certificate fixture
from tests.test_users import PASSWORDS, users_file

BIG = "Subject: big\r\n\r\n" + ("x" * 70 + "\r\n") * 30_000  # over the 1 MiB held in memory


@pytest.fixture(autouse=True)
def root() -> None:
    if os.geteuid() != 0:
        if helpers.CI:
            pytest.fail("needs root")
        pytest.skip("needs root")


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
