"""--auth for real: the password from a real GNOME keyring, from
passwordeval and from a prompt on a pseudo-terminal; PLAIN and LOGIN with
smtplib; the brute-force delay shared by all workers; no secret in logs."""

from __future__ import annotations

import base64
import os
import pty
import select
import signal
import smtplib
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import (
    Server,
    children,
    cmdline,
    free_port,
    maildir_command,
    program,
    run_inetd,
    tool,
    wait_for_mails,
    wait_for_port,
)

USER = "msmtpd-user"
SECRET = "s3cret-Pa55"


def login(port: int, mechanism: str, password: str = SECRET) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=15)
    smtp.ehlo("client")
    smtp.user, smtp.password = USER, password
    authobject = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
    smtp.auth(mechanism, authobject)
    return smtp


@pytest.fixture
def eval_server(tmp_path: Path) -> Iterator[Server]:
    log = tmp_path / "msmtpd.log"
    args = [f"--auth={USER},echo {SECRET}", f"--command={maildir_command(tmp_path / 'mail')}",
            "--max-sessions=2", f"--log={log}"]
    with Server(args) as server:
        yield server


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_login_and_send_with_passwordeval(eval_server: Server, tmp_path: Path, mechanism: str) -> None:
    smtp = login(eval_server.port, mechanism)
    assert smtp.has_extn("auth") and "PLAIN" in smtp.esmtp_features["auth"]
    smtp.sendmail("a@example.org", ["b@example.org"], "Subject: authed\r\n\r\nhi\r\n")
    smtp.quit()
    mails = wait_for_mails(tmp_path / "mail", 1)
    assert len(mails) == 1 and b"with ESMTPA" in mails[0]


def test_mail_before_auth_is_530_and_wrong_password_535(eval_server: Server) -> None:
    with smtplib.SMTP("127.0.0.1", eval_server.port, timeout=15) as smtp:
        smtp.ehlo("client")
        assert smtp.mail("a@example.org")[0] == 530
        assert smtp.rcpt("b@example.org")[0] == 530
        assert smtp.docmd("DATA")[0] == 530
        assert smtp.noop()[0] == 250
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            smtp.user, smtp.password = USER, "wrong"
            smtp.auth("PLAIN", smtp.auth_plain)
        assert failure.value.smtp_code == 535


def test_mutt_style_authzid(eval_server: Server) -> None:
    token = base64.b64encode(f"{USER}\0{USER}\0{SECRET}".encode()).decode()
    with smtplib.SMTP("127.0.0.1", eval_server.port, timeout=15) as smtp:
        smtp.ehlo("client")
        assert smtp.docmd("AUTH", f"PLAIN {token}")[0] == 235
        assert smtp.docmd("AUTH", f"PLAIN {token}")[0] == 503


def test_no_secret_reaches_the_log(eval_server: Server, tmp_path: Path) -> None:
    smtp = login(eval_server.port, "PLAIN")
    smtp.sendmail("a@example.org", ["b@example.org"], "Subject: x\r\n\r\nhi\r\n")
    smtp.quit()
    bad = smtplib.SMTP("127.0.0.1", eval_server.port, timeout=15)
    bad.ehlo("client")
    bad.user, bad.password = USER, "guess-" + SECRET
    with pytest.raises(smtplib.SMTPAuthenticationError):
        bad.auth("LOGIN", bad.auth_login)
    bad.close()
    eval_server.stop()
    text = (tmp_path / "msmtpd.log").read_text()
    assert "authenticated as msmtpd-user" in text and "authentication failed" in text
    plain = base64.b64encode(f"\0{USER}\0{SECRET}".encode()).decode()
    for secret in (SECRET, plain, base64.b64encode(SECRET.encode()).decode(), "AUTH "):
        assert secret not in text


def test_delay_is_shared_between_workers(eval_server: Server) -> None:
    first = smtplib.SMTP("127.0.0.1", eval_server.port, timeout=15)
    first.ehlo("one")
    started = time.monotonic()
    first.user, first.password = USER, "wrong"
    with pytest.raises(smtplib.SMTPAuthenticationError):
        first.auth("PLAIN", first.auth_plain)
    assert time.monotonic() - started < 0.9, "no failure happened before, so no delay"
    # The first session stays open, so the second one is served by the other worker.
    second = smtplib.SMTP("127.0.0.1", eval_server.port, timeout=15)
    second.ehlo("two")
    busy = [w for w in children(eval_server.pid) if cmdline(w).startswith("msmtpd: session")]
    assert len(busy) == 2
    started = time.monotonic()
    second.user, second.password = USER, SECRET
    second.auth("PLAIN", second.auth_plain)
    assert time.monotonic() - started >= 1.0
    first.close()
    second.close()


def test_every_auth_is_delayed_in_inetd_mode(tmp_path: Path) -> None:
    token = base64.b64encode(f"\0{USER}\0{SECRET}".encode()).decode()
    started = time.monotonic()
    result = run_inetd([f"--auth={USER},echo {SECRET}", "--command=cat"],
                       f"EHLO x\r\nAUTH PLAIN {token}\r\nQUIT\r\n".encode())
    assert b"235 " in result.stdout and result.returncode == 0
    assert time.monotonic() - started >= 1.0


@pytest.mark.parametrize(("passwordeval", "why"), [
    ("false", "failed with exit status 1"),
    ("true", "printed no password"),
])
def test_bad_passwordeval_is_one_line_and_exit_3(passwordeval: str, why: str) -> None:
    result = subprocess.run([program("msmtpd"), f"--port={free_port()}", f"--auth={USER},{passwordeval}"],
                            capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 3
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and why in lines[0]


def test_no_password_source_is_exit_3(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "XDG_"))}
    env.update(HOME=str(tmp_path), PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    result = subprocess.run([program("msmtpd"), f"--port={free_port()}", "--auth=nobody-here"],
                            capture_output=True, timeout=60, stdin=subprocess.DEVNULL, env=env)
    assert result.returncode == 3
    assert result.stderr.decode() == "msmtpd: cannot get password for (localhost, smtp, nobody-here)\n"


def test_password_from_a_prompt_on_a_terminal(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "XDG_"))}
    env.update(HOME=str(tmp_path), PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    controller, terminal = pty.openpty()
    process = subprocess.Popen([program("msmtpd"), f"--port={port}", f"--auth={USER}",
                                "--command=cat", "--max-sessions=1"],
                               stdin=terminal, stdout=terminal, stderr=terminal, env=env,
                               start_new_session=True)
    os.close(terminal)
    try:
        seen = b""
        deadline = time.monotonic() + 30
        while b"password for" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1)
            if ready:
                seen += os.read(controller, 1024)
        assert f"password for {USER} at localhost".encode() in seen
        os.write(controller, SECRET.encode() + b"\n")
        wait_for_port(port, process=process)
        login(port, "LOGIN").quit()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        os.close(controller)


def test_keyring_recipe_from_the_manual(tmp_path: Path) -> None:
    """The manual's mail-client set-up, step by step: the password stored
    with secret-tool in a real GNOME keyring, msmtpd started with
    --auth=msmtpd-user and --command='msmtp -f %F', and msmtp relaying to a
    second msmtpd that stores the mail."""
    tool("dbus-run-session")
    tool("gnome-keyring-daemon")
    tool("secret-tool")
    msmtp = tool("msmtp")
    home = tmp_path / "home"
    home.mkdir()
    relay_port, port = free_port(), free_port()
    (home / ".msmtprc").write_text(
        f"account default\nhost 127.0.0.1\nport {relay_port}\nauth off\ntls off\n"
        "from fallback@example.org\n")
    (home / ".msmtprc").chmod(0o600)
    pidfile = tmp_path / "msmtpd.pid"
    script = (
        "printf keyring-pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null\n"
        f"printf %s '{SECRET}' | secret-tool store --label=msmtpd host localhost service smtp user {USER}\n"
        f"exec {program('msmtpd')} --port={port} --auth={USER} --command='{msmtp} -f %F'"
        f" --pidfile={pidfile} --max-sessions=2\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "XDG_", "GNOME_"))}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_RUNTIME_DIR=str(tmp_path),
               XDG_CACHE_HOME=str(home / "cache"), XDG_CONFIG_HOME=str(home / "config"))
    with Server([f"--command={maildir_command(tmp_path / 'mail')}", "--max-sessions=2"],
                port=relay_port):
        session = subprocess.Popen(["dbus-run-session", "--", "sh", "-c", script], env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        try:
            wait_for_port(port, process=session, timeout=30)
            smtp = login(port, "PLAIN")
            smtp.sendmail("me@example.org", ["friend@example.org"],
                          "Subject: via the keyring\r\n\r\nhello\r\n")
            smtp.quit()
            mails = wait_for_mails(tmp_path / "mail", 1)
            assert len(mails) == 1
            assert b"Subject: via the keyring" in mails[0] and b"Return-Path: <me@example.org>" in mails[0]
        finally:
            if pidfile.exists():
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
            try:
                session.wait(30)
            except subprocess.TimeoutExpired:
                session.kill()
                session.wait()
            assert session.stderr is not None
            session.stderr.close()
