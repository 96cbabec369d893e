"""The README's first command, as a newcomer runs it: install, start, and
see a mail land in ~/msmtpd-mail/new (here: a temporary directory)."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import time
from pathlib import Path

from tests.helpers import ROOT, free_port, tool


def test_install_and_run_delivers_a_mail_where_it_says(tmp_path: Path) -> None:
    port = free_port()
    mail = tmp_path / "msmtpd-mail"
    env = dict(os.environ, MSMTPD_PORT=str(port), MSMTPD_MAIL=str(mail))
    result = subprocess.run([str(ROOT / "scripts" / "install-and-run")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    pid = int((mail / "msmtpd.pid").read_text())
    try:
        first = list((mail / "new").iterdir())
        assert len(first) == 1 and b"Subject: Hello from msmtpd" in first[0].read_bytes()
        assert str(first[0]) in result.stdout  # it tells where the mail is
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:  # a mail of one's own
            smtp.sendmail("me@localhost", ["you@localhost"], "Subject: mine\r\n\r\nhello\r\n")
        assert len(list((mail / "new").iterdir())) == 2
        if os.getuid() == 0:  # installed where man looks first, before the C msmtpd's page
            found = subprocess.run([tool("man"), "-w", "msmtpd"], capture_output=True, text=True)
            page = found.stdout.strip()
            assert Path(page).read_bytes() == (ROOT / "msmtpd.1").read_bytes()
            assert "read the manual: man msmtpd" in result.stdout
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while (mail / "msmtpd.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not (mail / "msmtpd.pid").exists()
