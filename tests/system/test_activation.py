"""Sockets handed over by systemd (``systemd-socket-activate``, the
sd_listen_fds protocol) and by xinetd's ``wait = yes``, served by the pool;
``--idle-exit``; readiness and status sent to a ``NOTIFY_SOCKET`` the test
binds itself."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from tests.helpers import free_port, maildir_command, program, tool, wait_for_mails, wait_for_port, wait_until
from tests.support.service_files import ETC, stop_xinetd

WAIT = 20.0


def send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as smtp:
        smtp.sendmail("a@example.org", ["b@example.org"], f"Subject: {subject}\r\n\r\nhi\r\n")


def activate(port: int, args: List[str], notify: Optional[socket.socket] = None) -> subprocess.Popen[bytes]:
    """msmtpd under systemd-socket-activate, which binds the port, waits for
    the first connection and then execs msmtpd with LISTEN_FDS=1 (and
    NOTIFY_SOCKET; it passes no other variable but PATH, HOME and TERM)."""
    setenv = ["-E", f"NOTIFY_SOCKET={notify.getsockname()}"] if notify is not None else []
    return subprocess.Popen([tool("systemd-socket-activate"), "-l", f"127.0.0.1:{port}", *setenv,
                             program("msmtpd"), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def end(process: subprocess.Popen[bytes]) -> None:
    """Kill a server a test could not stop the proper way."""
    if process.poll() is None:
        process.kill()
        process.communicate()


def test_listen_fds_are_served_by_the_pool(tmp_path: Path) -> None:
    """--interface and --port are ignored: the inherited socket is served,
    by the pool (several sessions at once), not one session."""
    port = free_port()
    process = activate(port, [f"--command={maildir_command(tmp_path)}", "--max-sessions=3",
                              "--interface=127.0.0.9", "--port=1", "--log=-"])
    try:
        wait_for_port(port, process=process)
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as first, \
                smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as second:
            for n, smtp in enumerate((first, second)):
                smtp.sendmail("a@example.org", ["b@example.org"], f"Subject: {n}\r\n\r\nhi\r\n")
        send(port, "third")
        assert len(wait_for_mails(tmp_path, 3)) == 3
        assert process.poll() is None
        workers = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        assert len(workers) == 3
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=WAIT)
    assert process.returncode == 0
    assert b"listening on 127.0.0.1:" + str(port).encode() in out


def test_idle_exit_leaves_after_the_last_session(tmp_path: Path) -> None:
    port = free_port()
    process = activate(port, [f"--command={maildir_command(tmp_path)}", "--idle-exit=2", "--max-sessions=2",
                              "--log=-"])
    try:
        wait_for_port(port, process=process)
        send(port, "before idling")
        started = time.monotonic()
        out, _ = process.communicate(timeout=WAIT)
        idled = time.monotonic() - started
    finally:
        end(process)
    assert process.returncode == 0
    assert 1.5 <= idled < 10, idled
    assert b"no session for 2 s: exiting" in out
    assert len(wait_for_mails(tmp_path, 1)) == 1


def test_idle_exit_waits_while_a_session_runs(tmp_path: Path) -> None:
    port = free_port()
    process = activate(port, [f"--command={maildir_command(tmp_path)}", "--idle-exit=1", "--log=-"])
    try:
        wait_for_port(port, process=process)
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as smtp:
            smtp.ehlo("client")
            for _ in range(4):  # 3 s in a session, longer than --idle-exit
                assert smtp.noop()[0] == 250
                time.sleep(0.75)
            assert process.poll() is None
            smtp.sendmail("a@example.org", ["b@example.org"], b"Subject: late\r\n\r\nhi\r\n")
        process.communicate(timeout=WAIT)
    finally:
        end(process)
    assert process.returncode == 0
    assert len(wait_for_mails(tmp_path, 1)) == 1


@pytest.mark.parametrize("args", [["--idle-exit=5"], ["--inetd", "--idle-exit=5"]])
def test_idle_exit_without_inherited_sockets_is_a_usage_error(args: List[str]) -> None:
    result = subprocess.run([program("msmtpd"), f"--port={free_port()}", *args], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 3
    assert result.stderr.startswith("msmtpd: --idle-exit needs listening sockets")
    assert len(result.stderr.splitlines()) == 1


def test_listen_fds_for_another_process_are_ignored(tmp_path: Path) -> None:
    """LISTEN_PID names someone else: msmtpd binds its own port."""
    port = free_port()
    env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID="1")
    process = subprocess.Popen([program("msmtpd"), f"--port={port}", "--interface=127.0.0.1",
                                f"--command={maildir_command(tmp_path)}"], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, process=process)
        send(port, "own port")
        assert len(wait_for_mails(tmp_path, 1)) == 1
    finally:
        process.terminate()
        process.communicate(timeout=WAIT)


# -- sd_notify ------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(WAIT)
    yield sock
    sock.close()


def messages_until(sock: socket.socket, wanted: str) -> List[str]:
    """Datagrams (one per message, fields joined by newlines) up to the
    first that holds ``wanted``."""
    got: List[str] = []
    while True:
        text = sock.recv(4096).decode()
        got.append(text)
        if wanted in text.split("\n"):
            return got


def test_readiness_status_reload_and_stop_reach_notify_socket(tmp_path: Path,
                                                               notify_socket: socket.socket) -> None:
    port = free_port()
    process = activate(port, [f"--command={maildir_command(tmp_path)}", "--max-sessions=4"], notify_socket)
    try:
        wait_for_port(port, process=process)
        ready = messages_until(notify_socket, "READY=1")
        assert "STATUS=0 of 4 sessions in use" in ready[-1].split("\n")
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as smtp:
            smtp.ehlo("client")
            busy = messages_until(notify_socket, "STATUS=1 of 4 sessions in use")
            assert busy
        messages_until(notify_socket, "STATUS=0 of 4 sessions in use")
        process.send_signal(signal.SIGHUP)
        reload = messages_until(notify_socket, "READY=1")
        fields = [field for message in reload for field in message.split("\n")]
        assert "RELOADING=1" in fields
        assert any(field.startswith("MONOTONIC_USEC=") for field in fields)
        assert fields.index("RELOADING=1") < len(fields) - 1
        process.send_signal(signal.SIGTERM)
        assert messages_until(notify_socket, "STOPPING=1")
        process.communicate(timeout=WAIT)
    finally:
        end(process)
    assert process.returncode == 0


def test_notify_socket_is_not_passed_to_the_delivery_command(tmp_path: Path,
                                                             notify_socket: socket.socket) -> None:
    seen = tmp_path / "env"
    port = free_port()
    process = activate(port, [f"--command=env > {seen}; cat > /dev/null; :"], notify_socket)
    try:
        wait_for_port(port, process=process)
        send(port, "environment")
        assert wait_until(seen.exists)
        time.sleep(0.2)
        environment = seen.read_text()
        assert "NOTIFY_SOCKET" not in environment and "LISTEN_FDS" not in environment
        assert messages_until(notify_socket, "READY=1")  # it was there for msmtpd itself
        assert "MSMTPD_SENDER=a@example.org" in environment
    finally:
        process.terminate()
        process.communicate(timeout=WAIT)


# -- xinetd's wait = yes --------------------------------------------------------


def test_xinetd_wait_yes_hands_the_listening_socket_to_the_pool(tmp_path: Path) -> None:
    """With ``wait = yes`` xinetd gives msmtpd the listening socket itself:
    msmtpd --inetd serves it with the pool, and after --idle-exit it leaves
    and xinetd listens again, starting msmtpd anew for the next client."""
    xinetd = tool("xinetd")
    port = free_port()
    maildir = tmp_path / "Maildir"
    deliver = tmp_path / "deliver"
    deliver.write_text(f"#!/bin/sh\nexec {program('msmtpd-maildir')} {maildir} -- \"$@\"\n")
    deliver.chmod(0o755)
    services = tmp_path / "xinetd.d"
    services.mkdir()
    log = tmp_path / "msmtpd.log"
    (services / "msmtpd").write_text(
        "service msmtpd\n{\n\ttype = UNLISTED\n\tsocket_type = stream\n\tprotocol = tcp\n\twait = yes\n"
        f"\tbind = 127.0.0.1\n\tport = {port}\n\tuser = root\n\tserver = {program('msmtpd')}\n"
        f"\tserver_args = --inetd --idle-exit=2 --max-sessions=2 --log={log} --command={deliver}\n"
        "\tdisable = no\n}\n")
    config = tmp_path / "xinetd.conf"
    config.write_text(f"defaults\n{{\n\tlog_type = FILE {tmp_path / 'xinetd.log'}\n}}\n"
                      f"includedir {services}\n")
    server = subprocess.Popen([xinetd, "-dontfork", "-f", str(config), "-pidfile", str(tmp_path / "x.pid")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=server)
        send(port, "first")
        send(port, "second, same pool")
        assert len(wait_for_mails(maildir, 2)) == 2
        text = log.read_text()
        assert text.count("listening on") == 1, text  # one msmtpd served both
        assert wait_until(lambda: "no session for 2 s" in log.read_text(), WAIT)
        time.sleep(0.5)
        send(port, "after the idle exit")
        assert len(wait_for_mails(maildir, 3)) == 3
        assert wait_until(lambda: log.read_text().count("listening on") == 2, WAIT)
    finally:
        stop_xinetd(server)


def test_shipped_socket_and_service_units_run_the_pool(tmp_path: Path, notify_socket: socket.socket) -> None:
    """The ExecStart= of etc/systemd/msmtpd.service, with the unit's own
    default settings, under systemd-socket-activate listening where
    etc/systemd/msmtpd.socket says (the port changed): it reports READY=1
    (Type=notify) and delivers."""

    service = (ETC / "systemd" / "msmtpd.service").read_text()
    socket_unit = (ETC / "systemd" / "msmtpd.socket").read_text()
    assert "Type=notify" in service and "Accept=no" in socket_unit
    assert "ListenStream=127.0.0.1:25\n" in socket_unit
    exec_start = next(line.split("=", 1)[1] for line in service.splitlines() if line.startswith("ExecStart="))
    settings = {"INTERFACE": "127.0.0.1", "PORT": "25", "LOG": "-", "EXTRA": "--idle-exit=60",
                "COMMAND": maildir_command(tmp_path)}
    argv = []  # systemd's rules: ${NAME} stays one word, $NAME is split at white space
    for word in exec_start.split()[1:]:
        if word.startswith("$") and not word.startswith("${"):
            argv.extend(settings[word[1:]].split())
            continue
        for name, value in settings.items():
            word = word.replace("${" + name + "}", value)
        argv.append(word)
    port = free_port()
    process = activate(port, argv, notify_socket)
    try:
        wait_for_port(port, process=process)
        assert messages_until(notify_socket, "READY=1")
        send(port, "through the shipped units")
        assert len(wait_for_mails(tmp_path, 1)) == 1
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=WAIT)
    assert b"listening on 127.0.0.1:" + str(port).encode() in out  # the unit's port 25 was ignored


def test_a_unix_socket_from_systemd_is_served(tmp_path: Path) -> None:
    """ListenStream=/run/msmtpd.sock: local programs may talk SMTP over a
    Unix socket; the peer is local, the log names the socket."""
    path = tmp_path / "smtp.sock"
    process = subprocess.Popen([tool("systemd-socket-activate"), "-l", str(path), program("msmtpd"),
                                f"--command={maildir_command(tmp_path / 'mail')}", "--log=-"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_until(path.exists)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(WAIT)
            client.connect(str(path))
            replies = client.makefile("rb")
            assert replies.readline().startswith(b"220 ")
            client.sendall(b"EHLO local\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
                           b"Subject: unix\r\n\r\nhi\r\n.\r\nQUIT\r\n")
            answers = replies.read()
        assert b"250 2.0.0 OK" in answers and answers.endswith(b"221 2.0.0 " + socket.gethostname().encode()
                                                               + b" closing connection\r\n")
        mails = wait_for_mails(tmp_path / "mail", 1)
        assert len(mails) == 1 and f"from local (uid {os.getuid()})".encode() in mails[0]
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=WAIT)
    assert f"listening on {path}".encode() in out
