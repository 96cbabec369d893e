"""--interface=/PATH: a Unix socket for local programs (issue 19).

Real daemons, with clients running as other users (``setpriv``, the
standard library's smtplib under the system's python3): the caller's uid,
user name and pid in the log, its uid in the Received header; --unix-login
with --auth-file and --senders; a stale socket file replaced, a live one,
a regular file and a symlink refused; --socket-mode with --user enforced by
the kernel; the file removed at the stop, and only while it is ours; with
--daemon and --pidfile; --inetd with a Unix socket on standard input.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

import pytest

from msmtpd.net.peer import peer_of
from tests import helpers
from tests.support.logged_daemon import LoggedDaemon
from tests.support.users_file import PASSWORDS, users_file

WAIT = 20.0
CLIENT = Path(__file__).resolve().parents[1] / "support" / "unix_client.py"
NOBODY = 65534


@pytest.fixture(autouse=True)
def root() -> None:
    helpers.need_root("clients of other users need root to start them")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users may reach (pytest's own is root's, 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="msmtpd-unix-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def as_user(path: Path, user: str, group: str, sender: str, recipient: str = "rcpt@example.org",
            *login: str) -> Dict[str, Any]:
    """Send one mail over the socket at ``path`` as ``user``:``group``."""
    done = subprocess.run([helpers.tool("setpriv"), f"--reuid={user}", f"--regid={group}",
                           "--clear-groups", "/usr/bin/python3", str(CLIENT), str(path), sender,
                           recipient, *login],
                          capture_output=True, timeout=WAIT, cwd="/")
    assert done.returncode == 0, done.stderr
    outcome: Dict[str, Any] = json.loads(done.stdout)
    return outcome


class Daemon(LoggedDaemon):
    """msmtpd on a Unix socket and on 127.0.0.1."""

    def __init__(self, directory: Path, args: Sequence[str], maildir: bool = True) -> None:
        self.socket = directory / "smtp.sock"
        super().__init__(directory, [f"--interface={self.socket}", "--interface=127.0.0.1", *args],
                         user=not maildir)


def msmtpd_fails(args: List[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([helpers.program("msmtpd"), "--command=cat >/dev/null", *args],
                          capture_output=True, timeout=WAIT, stdin=subprocess.DEVNULL)


# -- the peer: the caller's credentials ----------------------------------------------


def test_the_log_names_the_callers_uid_user_and_pid_and_received_its_uid(shared_dir: Path) -> None:
    with Daemon(shared_dir, []) as daemon:
        assert daemon.socket.stat().st_mode & 0o777 == 0o666  # the reach of 127.0.0.1
        assert as_user(daemon.socket, "nobody", "nogroup", "n@example.org") == {"sent": True}
        mails = helpers.wait_for_mails(daemon.maildir, 1)
        helpers.wait_for_log(daemon.log, "delivered")
        log = daemon.log_text()
    assert f"session from local user nobody (uid {NOBODY}, pid " in log, log
    assert "logged in" not in log
    (received,) = helpers.received_headers(mails[0])
    assert received.startswith(b"Received: from client.test (uid 65534) by ")
    assert b"with ESMTP;" in received and b"[" not in received  # never a host address


def test_the_kernel_names_the_caller_of_a_socket_pair() -> None:
    import pwd

    server, client = socket.socketpair(socket.AF_UNIX)
    with server, client:
        peer = peer_of(server)
    assert (peer.uid, peer.gid, peer.pid) == (os.getuid(), os.getgid(), os.getpid())
    assert peer.user == pwd.getpwuid(os.getuid()).pw_name


def test_a_uid_with_no_name_is_logged_by_its_number(shared_dir: Path) -> None:
    with Daemon(shared_dir, []) as daemon:
        assert as_user(daemon.socket, "4242", "4242", "x@example.org") == {"sent": True}
        helpers.wait_for_log(daemon.log, "delivered")
        assert "session from local user with no name (uid 4242, pid " in daemon.log_text()


# -- --unix-login, --auth-file, --senders -------------------------------------------


def senders_file(directory: Path) -> Path:
    path = directory / "senders"
    path.write_text("nobody: nobody@example.org\nalice: alice@example.org\n")
    return path


def test_without_unix_login_a_socket_caller_must_authenticate_like_loopback(shared_dir: Path) -> None:
    users = users_file(shared_dir)
    args = [f"--auth-file={users}", f"--senders={senders_file(shared_dir)}"]
    with Daemon(shared_dir, args) as daemon:
        refused = as_user(daemon.socket, "nobody", "nogroup", "nobody@example.org")
        assert refused["code"] == 530
        # AUTH over the socket without TLS, as on 127.0.0.1; --senders binds the AUTH user.
        logged = as_user(daemon.socket, "nobody", "nogroup", "alice@example.org", "rcpt@example.org",
                         "alice", PASSWORDS["alice"])
        assert logged == {"sent": True}
        mails = helpers.wait_for_mails(daemon.maildir, 1)
    (received,) = helpers.received_headers(mails[0])
    assert b"(uid 65534, user alice)" in received and b"with ESMTPA;" in received


def test_unix_login_logs_the_caller_in_as_its_user_and_senders_bind_it(shared_dir: Path) -> None:
    users = users_file(shared_dir)
    args = [f"--auth-file={users}", f"--senders={senders_file(shared_dir)}", "--unix-login"]
    with Daemon(shared_dir, args) as daemon:
        assert as_user(daemon.socket, "nobody", "nogroup", "nobody@example.org") == {"sent": True}
        other = as_user(daemon.socket, "nobody", "nogroup", "alice@example.org")
        assert other["code"] == 553 and other["message"].startswith("5.7.1 ")
        # A user the senders file does not name may send as nobody: it fails closed.
        unlisted = as_user(daemon.socket, "daemon", "daemon", "daemon@example.org")
        assert unlisted["code"] == 553
        # TCP clients still must authenticate.
        with pytest.raises(Exception) as raised:
            import smtplib

            with smtplib.SMTP("127.0.0.1", daemon.server.port, timeout=WAIT) as smtp:
                smtp.sendmail("nobody@example.org", ["rcpt@example.org"], "Subject: tcp\r\n\r\nx\r\n")
        assert getattr(raised.value, "smtp_code", None) == 530
        mails = helpers.wait_for_mails(daemon.maildir, 1)
        log = daemon.log_text()
    assert len(mails) == 1
    (received,) = helpers.received_headers(mails[0])
    assert b"(uid 65534, user nobody)" in received and b"with ESMTPA;" in received
    assert "): logged in as nobody by its uid (--unix-login)" in log
    assert "user nobody may not send as <alice@example.org> (--senders)" in log
    assert "user daemon may not send as <daemon@example.org> (--senders)" in log


def test_unix_login_alone_needs_no_auth_option(shared_dir: Path) -> None:
    args = ["--unix-login", f"--senders={senders_file(shared_dir)}"]
    with Daemon(shared_dir, args) as daemon:
        assert as_user(daemon.socket, "nobody", "nogroup", "nobody@example.org") == {"sent": True}
        assert as_user(daemon.socket, "nobody", "nogroup", "else@example.org")["code"] == 553


# -- what is at the path when msmtpd starts ----------------------------------------------


def test_a_stale_socket_file_is_replaced(shared_dir: Path) -> None:
    path = shared_dir / "smtp.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # closed without unlinking: what a killed msmtpd leaves
    with Daemon(shared_dir, []) as daemon:
        assert as_user(daemon.socket, "nobody", "nogroup", "n@example.org") == {"sent": True}


def test_a_live_socket_is_a_start_up_error_and_stays(shared_dir: Path) -> None:
    path = shared_dir / "smtp.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen(1)
        inode = path.stat().st_ino
        done = msmtpd_fails([f"--interface={path}", f"--port={helpers.free_port()}"])
        assert done.returncode == 3
        assert done.stderr == (f"msmtpd: cannot listen on {path}: something is accepting"
                               " connections on it\n").encode()
        assert path.stat().st_ino == inode


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
def test_a_path_that_is_not_a_socket_is_refused_and_never_removed(shared_dir: Path, kind: str) -> None:
    path = shared_dir / "smtp.sock"
    target = shared_dir / "precious"
    target.write_text("keep me")
    if kind == "file":
        path.write_text("keep me")
    elif kind == "symlink":
        path.symlink_to(target)
    else:
        path.mkdir()
    first = shared_dir / "first.sock"
    done = msmtpd_fails([f"--interface={first}", f"--interface={path}"])
    assert done.returncode == 3
    assert done.stderr == f"msmtpd: cannot listen on {path}: it exists and is not a socket\n".encode()
    assert os.path.lexists(path) and target.read_text() == "keep me"
    assert not first.exists()  # the socket made before the failure is gone too


# -- --socket-mode and --user -----------------------------------------------------------


def test_socket_mode_with_user_admits_that_group_alone(shared_dir: Path) -> None:
    with Daemon(shared_dir, ["--user=nobody", "--socket-mode=0660"], maildir=False) as daemon:
        info = daemon.socket.stat()
        assert (info.st_mode & 0o7777, info.st_uid, info.st_gid) == (0o660, NOBODY, NOBODY)
        assert as_user(daemon.socket, "daemon", "daemon", "d@example.org") == {"error": "PermissionError"}
        assert as_user(daemon.socket, "daemon", "nogroup", "d@example.org") == {"sent": True}
        assert as_user(daemon.socket, "nobody", "daemon", "n@example.org") == {"sent": True}  # the owner
        helpers.wait_for_log(daemon.log, "delivered", count=2)


def test_an_invalid_socket_mode_is_a_usage_error() -> None:
    done = msmtpd_fails(["--socket-mode=0999"])
    assert done.returncode == 3
    assert done.stderr == (b"msmtpd: invalid --socket-mode '0999': expected octal permission bits"
                           b" from 0000 to 0777 (0660)\n")


# -- the stop ---------------------------------------------------------------------------


def test_the_socket_is_removed_at_the_stop(shared_dir: Path) -> None:
    with Daemon(shared_dir, []) as daemon:
        assert daemon.socket.exists()
        assert daemon.server.stop() == 0
    assert not os.path.lexists(daemon.socket)


def test_a_file_put_in_the_sockets_place_is_not_removed(shared_dir: Path) -> None:
    """What --user could do in a directory it may write: replace the socket
    with a name of its own (here a symlink to a file of root's)."""
    precious = shared_dir / "precious"
    precious.write_text("root's")
    with Daemon(shared_dir, ["--user=nobody"], maildir=False) as daemon:
        daemon.socket.unlink()
        daemon.socket.symlink_to(precious)
        assert daemon.server.stop() == 0
    assert daemon.socket.is_symlink() and precious.read_text() == "root's"


def test_daemon_and_pidfile_serve_the_socket_and_remove_it(shared_dir: Path) -> None:
    path, pidfile, log = shared_dir / "smtp.sock", shared_dir / "msmtpd.pid", shared_dir / "msmtpd.log"
    started = subprocess.run([helpers.program("msmtpd"), f"--interface={path}", "--daemon",
                              f"--pidfile={pidfile}", f"--log={log}", "--command=cat >/dev/null; :"],
                             capture_output=True, timeout=WAIT, stdin=subprocess.DEVNULL)
    assert started.returncode == 0, started.stderr
    pid = int(pidfile.read_text())
    try:
        assert as_user(path, "nobody", "nogroup", "n@example.org") == {"sent": True}
        helpers.wait_for_log(log, "delivered")
    finally:
        os.kill(pid, signal.SIGTERM)
    helpers.wait_until(lambda: not pidfile.exists(), WAIT, "the pid file's removal")
    assert not os.path.lexists(path)


def test_check_speaks_to_the_socket(shared_dir: Path) -> None:
    with Daemon(shared_dir, []) as daemon:
        done = subprocess.run([helpers.program("msmtpd"), "--check", f"--interface={daemon.socket}"],
                              capture_output=True, timeout=WAIT)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"msmtpd: {daemon.socket} is healthy: greeting 220 ".encode())
    done = subprocess.run([helpers.program("msmtpd"), "--check", f"--interface={daemon.socket}"],
                          capture_output=True, timeout=WAIT)
    assert done.returncode == 1
    assert done.stderr == (f"msmtpd: {daemon.socket} is not healthy: No such file or directory"
                           " while connecting\n").encode()


# -- --inetd with a Unix socket on standard input ------------------------------------------


def test_inetd_on_a_unix_socket_knows_its_caller(shared_dir: Path) -> None:
    path, log = shared_dir / "inetd.sock", shared_dir / "inetd.log"
    maildir = shared_dir / "Maildir"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        path.chmod(0o666)
        listener.listen(1)
        client = subprocess.Popen([helpers.tool("setpriv"), "--reuid=nobody", "--regid=nogroup",
                                   "--clear-groups", "/usr/bin/python3", str(CLIENT), str(path),
                                   "n@example.org", "rcpt@example.org"],
                                  stdout=subprocess.PIPE, cwd="/")
        listener.settimeout(WAIT)
        connection, _ = listener.accept()
        with connection:
            server = subprocess.run([helpers.program("msmtpd"), "--inetd", f"--log={log}",
                                     f"--command={helpers.maildir_command(maildir)}"],
                                    stdin=connection.fileno(), stdout=connection.fileno(),
                                    timeout=WAIT)
        out, _ = client.communicate(timeout=WAIT)
    assert server.returncode == 0 and json.loads(out) == {"sent": True}
    assert f"session from local user nobody (uid {NOBODY}, pid {client.pid})" in helpers.log_text(log)
    (received,) = helpers.received_headers(helpers.delivered(maildir)[0])
    assert b"(uid 65534)" in received
