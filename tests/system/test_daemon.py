"""The daemon as a real process tree: the pre-forked pool, supervision,
signals, --daemon with --pidfile, --user, and listening on several
interfaces."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.helpers import (
    Server,
    children,
    cmdline,
    delivered,
    free_port,
    maildir_command,
    need_root,
    program,
    unavailable,
    wait_for_mails,
    wait_for_port,
    wait_until,
)


def greeting(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    try:
        return sock.recv(1024)
    except socket.timeout:
        return b""


def connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect((host, port))
    return sock


def send_mail(port: int, subject: str = "test", host: str = "127.0.0.1") -> None:
    with smtplib.SMTP(host, port, timeout=15) as smtp:
        smtp.sendmail("a@example.org", ["b@example.org"], f"Subject: {subject}\r\n\r\nbody\r\n")


def zombies(pid: int) -> List[int]:
    found = []
    for child in children(pid):
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        if state == "Z":
            found.append(child)
    return found


def test_seventeenth_client_waits_until_a_session_ends(tmp_path: Path) -> None:
    """The default pool starts with 2 spare workers, grows to 16 for 16
    clients at once, and no further."""
    with Server([f"--command={maildir_command(tmp_path)}"]) as server:
        # 2 spares, and perhaps one more: the test's probe of the port took one.
        assert wait_until(lambda: 2 <= len(children(server.pid)) <= 3)
        busy = [connect(server.port) for _ in range(16)]
        try:
            assert wait_until(lambda: len(children(server.pid)) == 16)
            for sock in busy:
                assert greeting(sock, 5).startswith(b"220 ")
            waiting = connect(server.port)
            assert greeting(waiting, 1.0) == b"", "a 17th session was served at once"
            busy[0].sendall(b"QUIT\r\n")
            assert greeting(waiting, 5).startswith(b"220 "), "the waiting client was never served"
            waiting.close()
        finally:
            for sock in busy:
                sock.close()


def test_max_sessions_bounds_the_pool(tmp_path: Path) -> None:
    with Server([f"--command={maildir_command(tmp_path)}", "--max-sessions=2"]) as server:
        assert wait_until(lambda: len(children(server.pid)) == 2)
        time.sleep(0.3)
        assert len(children(server.pid)) == 2
        first, second = connect(server.port), connect(server.port)
        assert greeting(first, 5).startswith(b"220")
        assert greeting(second, 5).startswith(b"220")
        third = connect(server.port)
        assert greeting(third, 1.0) == b""
        first.close()
        assert greeting(third, 5).startswith(b"220")
        second.close()
        third.close()


def test_killed_workers_are_replaced_without_zombies(tmp_path: Path) -> None:
    with Server([f"--command={maildir_command(tmp_path)}", "--max-sessions=4",
                 "--spare-workers=4"]) as server:
        assert wait_until(lambda: len(children(server.pid)) == 4)
        old = set(children(server.pid))
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: len(set(children(server.pid)) - old) == 4 and not zombies(server.pid))
        send_mail(server.port)
        assert len(wait_for_mails(tmp_path, 1)) == 1
        assert zombies(server.pid) == []


def test_sigterm_lets_the_running_transaction_finish(tmp_path: Path) -> None:
    server = Server([f"--command={maildir_command(tmp_path)}", "--max-sessions=2"]).start()
    try:
        smtp = smtplib.SMTP("127.0.0.1", server.port, timeout=15)
        smtp.ehlo("client")
        smtp.mail("a@example.org")
        smtp.rcpt("b@example.org")
        code, _ = smtp.docmd("DATA")
        assert code == 354
        smtp.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        time.sleep(0.5)
        smtp.send(b"second half\r\n.\r\n")
        code, _ = smtp.getreply()
        assert code == 250
        code, _ = smtp.docmd("NOOP")
        assert code == 421  # between transactions the stopping worker closes politely
        smtp.close()
        assert server.process.wait(15) == 0  # type: ignore[union-attr]
    finally:
        server.stop()
    mails = delivered(tmp_path)
    assert len(mails) == 1 and b"second half" in mails[0]


def test_sighup_reopens_the_log_file(tmp_path: Path) -> None:
    log = tmp_path / "msmtpd.log"
    mail = tmp_path / "mail"
    with Server([f"--command={maildir_command(mail)}", f"--log={log}", "--max-sessions=2"]) as server:
        send_mail(server.port, "before")
        assert wait_until(lambda: "delivered" in log.read_text())
        log.rename(tmp_path / "msmtpd.log.1")
        os.kill(server.pid, signal.SIGHUP)
        assert wait_until(log.exists)
        time.sleep(0.3)  # let the workers handle their HUP
        send_mail(server.port, "after")
        assert wait_until(lambda: "delivered" in log.read_text())
    assert "reopening the log" in (tmp_path / "msmtpd.log.1").read_text()


def test_idle_clients_cannot_starve_others(tmp_path: Path) -> None:
    args = [f"--command={maildir_command(tmp_path)}", "--max-sessions=2", "--timeout=1"]
    with Server(args) as server:
        idle = [connect(server.port) for _ in range(2)]
        started = time.monotonic()
        send_mail(server.port, "patient")
        assert time.monotonic() - started < 8
        for sock in idle:
            data = sock.recv(4096)
            data += sock.recv(4096)
            assert b"421" in data
            sock.close()
    assert len(wait_for_mails(tmp_path, 1)) == 1


def test_daemon_and_pidfile_lifecycle(tmp_path: Path) -> None:
    port = free_port()
    pidfile = tmp_path / "msmtpd.pid"
    args = [program("msmtpd"), "--daemon", f"--port={port}", f"--pidfile={pidfile}",
            f"--command={maildir_command(tmp_path / 'mail')}", "--max-sessions=2"]
    # A stale pid file (no live holder) is taken over.
    pidfile.write_text("999999\n")
    result = subprocess.run(args, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    master = int(pidfile.read_text())
    try:
        assert "msmtpd: master" in cmdline(master)
        send_mail(port)  # accepting as soon as --daemon returned
        second = subprocess.run([*args[:2], f"--port={free_port()}", *args[3:]],
                                capture_output=True, timeout=30)
        assert second.returncode == 3
        assert b"already running" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert int(pidfile.read_text()) == master
    finally:
        os.kill(master, signal.SIGTERM)
    assert wait_until(lambda: not pidfile.exists())
    assert len(delivered(tmp_path / "mail")) == 1


@pytest.mark.parametrize("daemon", [False, True])
def test_port_in_use_is_one_line_and_exit_3(daemon: bool) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = [program("msmtpd"), f"--port={port}", "--command=cat"]
        result = subprocess.run(args + (["--daemon"] if daemon else []), capture_output=True, timeout=30)
    assert result.returncode == 3
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "port" in lines[0] and "in use" in lines[0]


def test_address_not_available_is_exit_3() -> None:
    result = subprocess.run([program("msmtpd"), "--interface=192.0.2.1", f"--port={free_port()}"],
                            capture_output=True, timeout=30)
    assert result.returncode == 3
    assert result.stderr.decode().count("\n") == 1


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is 0700 under /tmp)."""
    path = Path(tempfile.mkdtemp(prefix="msmtpd-test-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_user_drops_privileges_in_the_workers(public_dir: Path) -> None:
    need_root("dropping privileges needs root")
    nobody = pwd.getpwnam("nobody")
    log = public_dir / "msmtpd.log"
    # nobody cannot run scripts under /root, so the command is plain sh and cat.
    command = f"cat > {public_dir}/mail.$$; :"
    args = [f"--command={command}", "--user=nobody", "--max-sessions=2", f"--log={log}"]
    def uids(pid: int) -> List[str]:
        status = Path(f"/proc/{pid}/status").read_text()
        return next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]

    with Server(args) as server:
        # The port listens before the workers are forked: wait until both dropped.
        assert wait_until(lambda: len(children(server.pid)) == 2
                          and all(uids(w) != ["0"] * 4 for w in children(server.pid)))
        for worker in children(server.pid):
            assert uids(worker) == [str(nobody.pw_uid)] * 4
        send_mail(server.port)
        mails = list(public_dir.glob("mail.*"))
        assert len(mails) == 1 and mails[0].stat().st_uid == nobody.pw_uid
        log.rename(public_dir / "msmtpd.log.1")
        os.kill(server.pid, signal.SIGHUP)  # the workers, now nobody, reopen the new file too
        assert wait_until(log.exists)
        time.sleep(0.3)
        send_mail(server.port, "after hup")
        assert wait_until(lambda: "delivered" in log.read_text())


def test_worker_that_cannot_start_halts_the_master(tmp_path: Path) -> None:
    need_root("needs root to lose CAP_SETUID")
    port = free_port()
    # Root without CAP_SETUID/CAP_SETGID: every worker fails to drop privileges.
    args = ["setpriv", "--bounding-set=-setuid,-setgid",
            program("msmtpd"), f"--port={port}", "--user=nobody", "--command=cat"]
    result = subprocess.run(args, capture_output=True, timeout=30)
    assert result.returncode == 3
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "cannot switch to user nobody" in lines[0]


def test_two_interfaces_ipv4_and_ipv6(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        unavailable("no IPv6 in this Python")
    port = free_port()
    args = ["--interface=127.0.0.1", "--interface=::1", f"--command={maildir_command(tmp_path)}",
            "--max-sessions=2"]
    with Server(args, port=port):
        wait_for_port(port, "::1")
        send_mail(port, "over v4", "127.0.0.1")
        send_mail(port, "over v6", "::1")
    mails = wait_for_mails(tmp_path, 2)
    assert len(mails) == 2
    assert any(b"[IPv6:::1]" in m for m in mails) and any(b"[127.0.0.1]" in m for m in mails)


def test_process_titles(tmp_path: Path) -> None:
    with Server([f"--command={maildir_command(tmp_path)}", "--max-sessions=2"]) as server:
        assert wait_until(lambda: len(children(server.pid)) == 2)
        assert cmdline(server.pid).startswith(f"msmtpd: master 127.0.0.1:{server.port}")
        assert wait_until(lambda: all(cmdline(w) == "msmtpd: worker idle" for w in children(server.pid)))
        sock = connect(server.port)
        assert greeting(sock, 5).startswith(b"220")
        assert wait_until(lambda: any(cmdline(w) == "msmtpd: session 127.0.0.1"
                                      for w in children(server.pid)))
        sock.close()


def _listening(port: int) -> bool:
    """The port is in LISTEN state (read from the kernel, without connecting)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
                return True
    return False


def test_a_client_connecting_the_moment_the_port_listens_is_served(tmp_path: Path) -> None:
    """Scripts start msmtpd in the background and connect at once: the
    first connect, made as soon as the port listens and never retried, is
    served even though the workers are still starting."""
    port = free_port()
    process = subprocess.Popen([program("msmtpd"), f"--port={port}", "--interface=127.0.0.1",
                                f"--command={maildir_command(tmp_path)}"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not _listening(port):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
            smtp.sendmail("a@example.org", ["b@example.org"], b"Subject: early\r\n\r\nbird\r\n")
        assert len(wait_for_mails(tmp_path, 1)) == 1
    finally:
        process.terminate()
        process.wait(20)
        assert process.stderr is not None
        process.stderr.close()


def test_the_pool_grows_for_a_burst_and_surplus_workers_leave(tmp_path: Path) -> None:
    """One spare worker; three clients at once get three sessions and a new
    spare; once they are gone, the surplus leaves (after a minute, here one
    second) and the spare stays."""
    env = dict(os.environ, MSMTPD_SURPLUS_IDLE_SECONDS="1")
    with Server([f"--command={maildir_command(tmp_path)}", "--max-sessions=4", "--spare-workers=1"],
                env=env) as server:
        assert wait_until(lambda: len(children(server.pid)) == 1)
        clients = [connect(server.port) for _ in range(3)]
        try:
            for sock in clients:
                assert greeting(sock, 5).startswith(b"220 ")
            assert wait_until(lambda: len(children(server.pid)) == 4)
        finally:
            for sock in clients:
                sock.close()
        assert wait_until(lambda: len(children(server.pid)) == 1, 15)
        assert wait_until(lambda: not zombies(server.pid))
        with smtplib.SMTP("127.0.0.1", server.port, timeout=15) as smtp:
            smtp.sendmail("a@example.org", ["b@example.org"], b"Subject: after\r\n\r\nhi\r\n")
        assert len(wait_for_mails(tmp_path, 1)) == 1
