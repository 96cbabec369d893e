"""Shared helpers for the real-process tests: find the installed msmtpd,
pick free ports, start servers and wait for them, read Maildir deliveries."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent  # the checkout
SCRIPTS = Path(sys.executable).parent
CI = os.environ.get("CI") == "true"
WAIT = 15.0  # upper bound for any single wait on a process or socket that is not itself under test
DEV_LOG = "/dev/log"

LOW_BCRYPT_COST = 4  # the cheapest bcrypt hash htpasswd writes
# what a --senders file holds in the tests of the file and of the daemons that read it
SENDERS = """# who may send as whom
alice: alice@example.org
bob: bob@example.org, @Bob.Example ,

"""
FIFTY_KB_BODY = b"".join(b"line %05d of a mail that is about fifty kilobytes long.....\r\n" % n
                         for n in range(800))


class Clock:
    """A monotonic clock the test moves by hand (``clock.now += 5``)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def program(name: str) -> str:
    """The installed console script (not a pyenv shim), e.g. msmtpd, msmtpd-maildir."""
    candidate = SCRIPTS / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    assert found, f"{name} is not installed; run scripts/test"
    return found


def tool(name: str) -> str:
    """A Debian tool the tests need; scripts/test installs them."""
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)
    if found is None:
        unavailable(f"{name} is not installed (scripts/test installs it)")
    assert found is not None
    return found


def unavailable(why: str) -> None:
    """Skip for ``why`` (no root, no tmpfs ...); under CI=true, fail instead:
    CI runs as root, and a test it cannot run there is a test that is lost."""
    import pytest

    if CI:
        pytest.fail(why)
    pytest.skip(why)


def need_root(why: str = "needs root") -> None:
    if os.geteuid() != 0:
        unavailable(why)


def free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0,
                  process: Optional[subprocess.Popen[bytes]] = None) -> None:
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect((host, port))
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port}")


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: Optional[str] = None) -> Any:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; its
    last value (false at the timeout). With ``what``, a timeout is an
    AssertionError that says what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if not value and what is not None:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
    return value


def maildir_command(directory: Path) -> str:
    return f"{program('msmtpd-maildir')} {directory} -f %F --"


def delivered(directory: Path) -> List[bytes]:
    """The mails stored by msmtpd-maildir, oldest first."""
    new = directory / "new"
    if not new.is_dir():
        return []
    files = sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    return [p.read_bytes() for p in files]


def wait_for_mails(directory: Path, count: int, timeout: float = 10.0) -> List[bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mails = delivered(directory)
        if len(mails) >= count:
            return mails
        time.sleep(0.05)
    return delivered(directory)


class Server:
    """A real msmtpd master on an ephemeral loopback port."""

    def __init__(self, args: Sequence[str], port: Optional[int] = None,
                 host: str = "127.0.0.1", env: Optional[Dict[str, str]] = None) -> None:
        self.host = host
        self.port = port or free_port()
        self.args = [program("msmtpd"), f"--port={self.port}", *args]
        if not any(a.startswith("--interface") for a in args):
            self.args.append(f"--interface={host}")
        self.env = env
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> Server:
        self.process = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=self.env)
        wait_for_port(self.port, self.host, process=self.process)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        assert self.process is not None
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def children(pid: int) -> List[int]:
    """Direct children of ``pid`` (the workers of a master)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def descendants(pid: int) -> List[int]:
    """Every process below ``pid``, children first; [] once it has ended."""
    found: List[int] = []
    try:
        direct = children(pid)
    except OSError:  # it has just ended
        return found
    for child in direct:
        found.append(child)
        found.extend(descendants(child))
    return found


def kill_quietly(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid``, which may have ended already."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def run_inetd_process(args: Sequence[str], conversation: bytes, prefix: Sequence[str] = (),
                      timeout: float = 20.0) -> Tuple[subprocess.Popen[bytes], bytes, bytes]:
    """Like run_inetd, but also hands back the process (for its pid);
    ``prefix`` runs msmtpd under another command (unshare, setpriv)."""
    process = subprocess.Popen([*prefix, program("msmtpd"), "--inetd", *args],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(conversation, timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process, out, err


def run_inetd(args: Sequence[str], conversation: bytes, timeout: float = 20.0
              ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([program("msmtpd"), "--inetd", *args], input=conversation,
                          capture_output=True, timeout=timeout)


def htpasswd(path: Path, user: str, password: bytes | str, *flags: str) -> None:
    """Set ``user``'s password in ``path`` with the real htpasswd (``-B``
    for bcrypt, ``-C COST``); ``password`` goes on its command line as is,
    bytes included."""
    secret = password if isinstance(password, bytes) else password.encode()
    create = [] if path.exists() else ["-c"]
    done = subprocess.run([tool("htpasswd"), *create, "-b", *flags, str(path), user, secret],
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr


def log_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def wait_for_log(path: Path, text: str, count: int = 1, timeout: float = 15.0) -> str:
    """The log at ``path`` once ``count`` of its lines hold ``text``."""
    def enough() -> bool:
        return sum(text in line for line in log_text(path).splitlines()) >= count

    assert wait_until(enough, timeout), f"no {count} log lines with {text!r}:\n{log_text(path)}"
    return log_text(path)


def b64(data: bytes | str) -> str:
    """``data`` (a str as UTF-8) in base64, as an AUTH exchange sends it."""
    return base64.b64encode(data if isinstance(data, bytes) else data.encode("utf-8")).decode("ascii")


def auth_plain(user: bytes | str, password: bytes | str, authzid: bytes | str = "") -> str:
    """The AUTH PLAIN response (RFC 4616): authzid, user and password joined by NUL, in base64."""
    def raw(part: bytes | str) -> bytes:
        return part if isinstance(part, bytes) else part.encode("utf-8")

    return b64(b"\0".join((raw(authzid), raw(user), raw(password))))


def received_headers(mail: bytes) -> List[bytes]:
    """The Received: header fields of ``mail``, top first, unfolded."""
    header = mail.split(b"\n\n", 1)[0]
    return [m.replace(b"\n\t", b" ")
            for m in re.findall(rb"^Received: .*?(?=\n(?!\t)|\Z)", header, re.M | re.S)]


def make_queue(tmp_path: Path) -> Any:
    """An empty queue store (a msmtpd.delivery.queue_store.Queue) in ``tmp_path``/queue."""
    from msmtpd.delivery.queue_store import Queue, prepare_directory

    directory = tmp_path / "queue"
    prepare_directory(str(directory))
    return Queue(str(directory))


# -- syslog ----------------------------------------------------------------


@contextlib.contextmanager
def dev_log(listening: bool) -> Iterator[Tuple[Optional[socket.socket], List[str]]]:
    """What msmtpd finds at /dev/log, and the command prefix to run it under.

    ``listening``: a datagram socket of ours receives what msmtpd logs;
    otherwise nothing listens there.  When /dev/log is free, our socket is
    bound right there (and removed afterwards); when a real syslog owns it,
    msmtpd runs in a private mount namespace with our socket (or a plain
    file nobody listens on) bind-mounted over /dev/log."""
    directory = tempfile.mkdtemp(prefix="msmtpd-syslog-", dir="/tmp")  # short: AF_UNIX paths are small
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if listening else None
    created: List[str] = []
    try:
        prefix: List[str] = []
        if os.path.lexists(DEV_LOG):
            path = os.path.join(directory, "log")
            if sock is not None:
                sock.bind(path)
            else:
                Path(path).touch()
            prefix = [tool("unshare"), "--mount", "--propagation=private", "/bin/sh", "-c",
                      'mount --bind "$0" /dev/log && exec "$@"', path]
        elif sock is not None:
            sock.bind(DEV_LOG)
            created.append(DEV_LOG)
        if sock is not None:
            sock.settimeout(WAIT)
        yield sock, prefix
    finally:
        if sock is not None:
            sock.close()
        for path in created:
            os.unlink(path)
        shutil.rmtree(directory, ignore_errors=True)


def syslog_entries(sock: socket.socket, until: Callable[[List[Tuple[int, int, str]]], bool]
                   ) -> List[Tuple[int, int, str]]:
    """(priority, pid, message) of each datagram until ``until`` is satisfied."""
    entries: List[Tuple[int, int, str]] = []
    deadline = time.monotonic() + WAIT
    while not until(entries):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            datagram = sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"syslog got only {entries}") from None
        match = re.fullmatch(rb"<(\d+)>msmtpd\[(\d+)\]: (.*?)\x00?", datagram, re.S)
        assert match, datagram
        entries.append((int(match[1]), int(match[2]), match[3].decode()))
    return entries
