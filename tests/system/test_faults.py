"""Faults injected into real processes: dying workers, misbehaving
delivery commands, full or unwritable disks, a killed master, floods.
Whatever happens, a 250 is only ever given for a mail that was handed
over, and the service goes on."""

from __future__ import annotations

import os
import pwd
import re
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
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
    run_inetd,
    wait_for_mails,
    wait_until,
)

MAIL = b"Subject: fault\r\n\r\nbody line\r\n"


def session_worker(master: int) -> int:
    """The worker currently serving a session."""
    found: List[int] = []
    assert wait_until(lambda: bool(found.extend(
        w for w in children(master) if cmdline(w).startswith("msmtpd: session")) or found))
    return found[0]


def conversation(body: bytes = b"hi\r\n") -> bytes:
    return (b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
            + body + b".\r\nQUIT\r\n")


def data_reply(stdout: bytes) -> bytes:
    """The reply to the final dot: the line after the 354."""
    lines = stdout.split(b"\r\n")
    index = next(i for i, line in enumerate(lines) if line.startswith(b"354"))
    return lines[index + 1]


@pytest.fixture
def tiny_tmpfs() -> Iterator[Path]:
    """A 256 KiB tmpfs, to run out of space on purpose."""
    path = Path(tempfile.mkdtemp(prefix="msmtpd-tmpfs-"))
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0777", "tmpfs", str(path)],
                            capture_output=True)
    assert result.returncode == 0, f"cannot mount a tmpfs: {result.stderr.decode()}"
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


def fill(directory: Path) -> None:
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- the pool ------------------------------------------------------------------

def test_worker_killed_mid_data_delivers_nothing(tmp_path: Path) -> None:
    with Server([f"--command={maildir_command(tmp_path)}", "--max-sessions=2"]) as server:
        smtp = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
        smtp.ehlo("x")
        smtp.mail("a@example.org")
        smtp.rcpt("b@example.org")
        assert smtp.docmd("DATA")[0] == 354
        smtp.send(b"Subject: half\r\n\r\nfirst half\r\n")
        os.kill(session_worker(server.pid), signal.SIGKILL)
        with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
            smtp.send(b"second half\r\n.\r\n")
            code, _ = smtp.getreply()
            assert code != 250
            raise AssertionError("the dead worker answered")
        smtp.close()
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as next_client:
            next_client.sendmail("a@example.org", ["b@example.org"], "Subject: next\r\n\r\nok\r\n")
        mails = wait_for_mails(tmp_path, 1)
    assert len(mails) == 1 and b"Subject: next" in mails[0]


def test_command_of_a_dead_worker_is_ended(tmp_path: Path) -> None:
    """Nobody will acknowledge the mail of a worker that died while its
    command ran, so that command must not go on to deliver it."""
    marker = tmp_path / "late"
    log = tmp_path / "msmtpd.log"
    command = f"sleep 2; cat > {marker}.$$; :"
    with Server([f"--command={command}", "--max-sessions=2", f"--log={log}"]) as server:
        smtp = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
        smtp.ehlo("x")
        smtp.mail("a@example.org")
        smtp.rcpt("b@example.org")
        smtp.docmd("DATA")
        smtp.send(b"Subject: doomed\r\n\r\nx\r\n.\r\n")
        worker = session_worker(server.pid)
        time.sleep(0.5)  # the command is running now
        os.kill(worker, signal.SIGKILL)
        smtp.close()
        time.sleep(2.5)
        assert list(tmp_path.glob("late.*")) == []
        assert "ended delivery command" in log.read_text()


def test_killing_the_master_frees_the_port(tmp_path: Path) -> None:
    server = Server([f"--command={maildir_command(tmp_path)}", "--max-sessions=3",
                     "--spare-workers=3"]).start()
    assert wait_until(lambda: len(children(server.pid)) == 3)  # the port listens before they fork
    workers = children(server.pid)
    busy = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    assert busy.recv(100).startswith(b"220")
    server.process.kill()  # type: ignore[union-attr]
    server.process.wait()  # type: ignore[union-attr]

    def gone() -> bool:
        return all(not Path(f"/proc/{w}").exists() or "Z" in Path(f"/proc/{w}/stat").read_text().split()[2]
                   for w in workers)

    assert wait_until(gone, 5), "workers outlived their master"
    assert busy.recv(200).startswith(b"421"), "the busy worker did not close politely"
    busy.close()
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", server.port))  # nobody holds the port any more


# -- the delivery command ----------------------------------------------------------

@pytest.mark.parametrize(("command", "code"), [
    ("kill -SEGV $$", b"451"),
    ("exit 64", b"554"), ("exit 65", b"554"), ("exit 66", b"554"), ("exit 67", b"554"),
    ("exit 68", b"451"), ("exit 69", b"451"), ("exit 70", b"554"), ("exit 71", b"451"),
    ("exit 72", b"554"), ("exit 73", b"554"), ("exit 74", b"554"), ("exit 75", b"451"),
    ("exit 76", b"554"), ("exit 77", b"554"), ("exit 78", b"554"),
    ("exec 0<&-; exit 0", b"250"), ("exec 0<&-; exit 75", b"451"),
])
def test_command_end_decides_the_reply(command: str, code: bytes) -> None:
    result = run_inetd([f"--command={command}; :"], conversation(b"x" * 200_000 + b"\r\n"))
    assert data_reply(result.stdout).startswith(code)
    assert result.returncode == 0


def test_command_that_hangs_is_killed() -> None:
    started = time.monotonic()
    result = run_inetd(["--command=sleep 60; :", "--command-timeout=1"], conversation())
    assert data_reply(result.stdout).startswith(b"451")
    assert b"timed out" in data_reply(result.stdout)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("command", ["/nonexistent/deliver", "/etc/hostname"])
def test_missing_or_not_executable_command_is_451(command: str) -> None:
    result = run_inetd([f"--command={command}"], conversation())
    assert data_reply(result.stdout).startswith(b"451")


def test_command_flooding_stdout_and_stderr(tmp_path: Path) -> None:
    log = tmp_path / "log"
    flood = "head -c 8000000 /dev/zero; head -c 8000000 /dev/zero >&2; cat >/dev/null; :"
    result = run_inetd([f"--command={flood}", f"--log={log}"], conversation())
    assert data_reply(result.stdout).startswith(b"250")
    assert b"\0" not in result.stdout
    assert len(log.read_bytes()) < 20_000  # only the head of stderr is kept


def test_client_faster_than_the_command(tmp_path: Path) -> None:
    """A slow reader still gets the whole message, in order."""
    body = b"".join(b"line %06d of a big message\r\n" % i for i in range(200_000))
    with Server([f"--command=sleep 1; cat > {tmp_path}/mail; :", "--max-sessions=1"]) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
            smtp.sendmail("a@example.org", ["b@example.org"], body)
    stored = (tmp_path / "mail").read_bytes()
    assert stored.split(b"\n", 3)[3] == body.replace(b"\r\n", b"\n")


# -- the machine ------------------------------------------------------------------

def test_full_spool_disk_is_451_never_250(tmp_path: Path, tiny_tmpfs: Path) -> None:
    command = maildir_command(tmp_path)
    big = b"".join(b"%08d padding padding padding padding\r\n" % i for i in range(40_000))  # ~1.8 MB
    result = run_inetd([f"--command={command}", f"--spool-dir={tiny_tmpfs}"], conversation(big))
    assert data_reply(result.stdout).startswith(b"451")
    assert delivered(tmp_path) == []
    small = run_inetd([f"--command={command}", f"--spool-dir={tiny_tmpfs}"], conversation())
    assert data_reply(small.stdout).startswith(b"250")  # small mails stay in memory


def test_unwritable_spool_dir_is_451(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    spool = Path(tempfile.mkdtemp(prefix="msmtpd-spool-"))
    spool.chmod(0o755)  # root's; the workers run as nobody
    out = Path(tempfile.mkdtemp(prefix="msmtpd-out-"))
    out.chmod(0o777)
    try:
        args = [f"--command=cat > {out}/mail.$$; :", "--user=nobody", "--max-sessions=1",
                f"--spool-dir={spool}"]
        with Server(args) as server, smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                smtp.sendmail("a@example.org", ["b@example.org"], b"x" * 2_000_000)
            assert refused.value.smtp_code == 451
            smtp.sendmail("a@example.org", ["b@example.org"], MAIL)
        assert len(list(out.glob("mail.*"))) == 1
        assert os.stat(next(out.glob("mail.*"))).st_uid == nobody.pw_uid
    finally:
        subprocess.run(["rm", "-rf", str(spool), str(out)], check=False)


def test_log_that_fails_after_start_is_reported_once(tmp_path: Path, tiny_tmpfs: Path) -> None:
    log = tiny_tmpfs / "msmtpd.log"
    with Server([f"--command={maildir_command(tmp_path)}", "--max-sessions=1", f"--log={log}"]) as server:
        fill(tiny_tmpfs)
        # Enough mails to need more than the log's last, partly used page.
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
            for i in range(40):
                smtp.sendmail("a@example.org", ["b@example.org"], f"Subject: {i}\r\n\r\nx\r\n")
        assert len(wait_for_mails(tmp_path, 40)) == 40
        server.stop()
        assert server.process is not None and server.process.stderr is not None
        stderr = server.process.stderr.read().decode()
    complaints = [line for line in stderr.splitlines() if "cannot write to" in line]
    assert 1 <= len(complaints) <= 2  # once per process that had to log (worker, master)
    assert all(re.match(r"msmtpd: cannot write to .*msmtpd\.log", line) for line in complaints)


# -- floods ---------------------------------------------------------------------

def test_flood_of_connections_with_idle_ones(tmp_path: Path) -> None:
    """500 connections at once, 200 of them idle: with 16 sessions and a
    short --timeout every well-behaved client is served."""
    args = [f"--command={maildir_command(tmp_path)}", "--timeout=0.5", "--max-sessions=16",
            "--spare-workers=16"]
    with Server(args) as server:
        idle = []
        for _ in range(200):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", server.port))
            idle.append(sock)
        failures: List[str] = []

        def client(number: int) -> None:
            try:
                with smtplib.SMTP("127.0.0.1", server.port, timeout=90) as smtp:
                    smtp.sendmail("a@example.org", ["b@example.org"], f"Subject: {number}\r\n\r\nx\r\n")
            except Exception as exc:  # collected and asserted below
                failures.append(f"{number}: {exc!r}")

        threads = [threading.Thread(target=client, args=(n,)) for n in range(300)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        for sock in idle:
            sock.close()
        assert failures == []
        assert len(wait_for_mails(tmp_path, 300, timeout=20)) == 300
        assert server.process is not None and server.process.poll() is None
        tree = [server.pid, *children(server.pid)]
        assert len(tree) == 17
        rss_kb = sum(int(line.split()[1]) for pid in tree
                     for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                     if line.startswith("VmRSS:"))
        assert rss_kb < 17 * 40_000, f"the tree uses {rss_kb} kB"


def test_port_is_free_after_a_normal_stop(tmp_path: Path) -> None:
    port = free_port()
    with Server([f"--command={maildir_command(tmp_path)}", "--max-sessions=2"], port=port):
        pass
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
