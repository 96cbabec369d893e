"""The bounds of contract 6 and their neighbours, on real processes.

Per-request deadlines (a command line, an AUTH response line and every
reply must each complete within --timeout), the DATA minimum rate, the
overload rule (a session idle 10 s between commands is closed while
clients wait), --log=- on a shared standard error, escaping in the log,
huge numeric option values, SIGTERM during a slow delivery, the recipient
limit and --shell-safe-addresses.  Real msmtpd processes on ephemeral
loopback ports, real clients (raw sockets, smtplib)."""

from __future__ import annotations

import base64
import datetime
import os
import random
import re
import select
import signal
import smtplib
import socket
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from tests.helpers import (
    Server,
    children,
    cmdline,
    delivered,
    free_port,
    maildir_command,
    program,
    run_inetd,
    run_inetd_process,
    wait_for_mails,
    wait_for_port,
    wait_until,
)
from tests.support.hostile import ADDRESSES, deliveries, shell_command
from tests.support.raw_smtp import Client, start_session

HOST = socket.gethostname()
WAIT = 15.0  # upper bound for any single wait that is not about the behaviour itself
DISCARD = "--command=cat >/dev/null; :"

IDLE_421 = f"421 4.4.2 {HOST} Idle too long, closing connection\r\n".encode()
SLOW_421 = f"421 4.4.2 {HOST} Data too slow, closing connection\r\n".encode()
BUSY_421 = f"421 4.3.2 {HOST} Too busy, closing idle connection; try again later\r\n".encode()
TOO_MANY_RECIPIENTS = b"452 4.5.3 Too many recipients\r\n"
# The overload rule closes a session that waited this long for its next command.
OVERLOAD_IDLE = 10.0

LOG_LINE = re.compile(
    r"(?P<stamp>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) msmtpd\[(?P<pid>\d+)\] "
    r"(?P<level>info|error): (?P<message>.*)")


# -- clients -------------------------------------------------------------------------


def trickle(send: Callable[[bytes], None], answered: Callable[[float], bool], data: bytes,
            interval: float) -> int:
    """Send ``data`` one byte every ``interval`` seconds until the peer
    says something (or closes); the number of bytes sent."""
    for index in range(len(data)):
        try:
            send(data[index:index + 1])
        except OSError:
            return index
        if answered(interval):
            return index + 1
    return len(data)


def reply_lines(output: bytes) -> List[Tuple[int, str]]:
    """The code and last line of each reply in ``output``; every line must be
    a well-formed, CRLF-terminated reply line."""
    assert output.endswith(b"\r\n"), output[-300:]
    found = []
    for line in output[:-2].split(b"\r\n"):
        assert re.fullmatch(rb"[2-5]\d\d[ -][^\r\n]*", line), line
        if line[3:4] == b" ":
            found.append((int(line[:3]), line.decode("utf-8", "replace")))
    return found


def lines(*commands: str) -> bytes:
    return b"".join(c.encode("utf-8") + b"\r\n" for c in commands)


def read_line(fd: int, timeout: float) -> bytes:
    """One CRLF-terminated line from a pipe, read byte by byte (so nothing
    after it is consumed)."""
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\r\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        assert ready, f"no complete line in {timeout} s: {line!r}"
        byte = os.read(fd, 1)
        assert byte, f"end of output inside a line: {line!r}"
        line += byte
    return line


def log_entries(text: str, pid: Optional[int] = None) -> List[re.Match[str]]:
    entries = []
    for line in text.splitlines():
        match = LOG_LINE.fullmatch(line)
        assert match, f"not a log line: {line!r}"
        if pid is not None:
            assert int(match["pid"]) == pid, line
        entries.append(match)
    return entries


# -- 1. the per-request deadline -------------------------------------------------------


@pytest.mark.parametrize(("before", "trickled"), [
    (b"", b"EHLO x\r\n"),
    (b"EHLO client.example\r\n", b"NOOP\r\n"),
], ids=["ehlo-after-greeting", "noop-after-ehlo"])
def test_trickled_command_line_gets_421_at_the_deadline(tmp_path: Path, before: bytes,
                                                        trickled: bytes) -> None:
    """One byte a second never lets the idle timer run out, but the whole
    line must be there within --timeout of the previous reply."""
    timeout = 3
    with Server([f"--timeout={timeout}", "--max-sessions=2", f"--command={maildir_command(tmp_path)}"]
                ) as server:
        client = Client(server.port)
        try:
            assert client.reply().startswith(b"220 ")
            if before:
                assert client.command(before).startswith(b"250")
            closed = trickle_until_421(client, trickled, timeout)
        finally:
            client.close()
    assert closed < timeout + 3, f"closed {closed:.1f} s after the last reply"


def trickle_until_421(client: Client, data: bytes, timeout: float) -> float:
    """Send ``data`` a byte a second right after a reply; expect the idle
    421 and the close; return how long after that reply it closed."""
    last_reply = time.monotonic()
    sent = trickle(client.send, client.readable, data, 1.0)
    answer = client.reply_or_eof(timeout + 4)
    assert answer == IDLE_421, (
        f"after {sent} of {len(data)} trickled bytes, {time.monotonic() - last_reply:.1f} s after "
        f"the last reply: {answer!r}")
    assert client.rest_until_eof(timeout + 3) == b""
    return time.monotonic() - last_reply


def test_trickled_auth_response_gets_421_at_the_deadline() -> None:
    timeout = 3
    with Server([f"--timeout={timeout}", "--max-sessions=2", "--auth=user,echo secret", DISCARD]) as server:
        client = Client(server.port)
        try:
            assert client.reply().startswith(b"220 ")
            assert b"AUTH" in client.command(b"EHLO client.example\r\n")
            assert client.command(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
            closed = trickle_until_421(client, base64.b64encode(b"user") + b"\r\n", timeout)
        finally:
            client.close()
    assert closed < timeout + 3, f"closed {closed:.1f} s after the 334"


def test_inetd_trickled_command_line_gets_421_at_the_deadline() -> None:
    timeout = 3
    process = subprocess.Popen([program("msmtpd"), "--inetd", f"--timeout={timeout}", DISCARD],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    out = process.stdout.fileno()
    try:
        assert read_line(out, WAIT).startswith(b"220 ")
        greeted = time.monotonic()

        def send(byte: bytes) -> None:
            assert process.stdin is not None
            process.stdin.write(byte)
            process.stdin.flush()

        sent = trickle(send, lambda t: bool(select.select([out], [], [], t)[0]), b"NOOP\r\n", 1.0)
        try:
            status = process.wait(timeout + 4)
        except subprocess.TimeoutExpired:
            status = None
        ended = time.monotonic() - greeted
        output = b""
        if status is not None:
            output = process.stdout.read()
        else:
            ready, _, _ = select.select([out], [], [], 0)
            output = os.read(out, 65536) if ready else b""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        try:
            process.stdin.close()
        except OSError:
            pass
        err = process.stderr.read()
        process.stdout.close()
        process.stderr.close()
    assert status is not None, f"still running {ended:.1f} s after the greeting; it said {output!r}"
    assert output == IDLE_421, f"after {sent} trickled bytes: {output!r}"
    assert status == 1
    assert ended < timeout + 3, f"ended {ended:.1f} s after the greeting"
    assert b"Traceback" not in err


# -- 2. the write deadline ---------------------------------------------------------------


class Deaf:
    """Sends a stream of pipelined HELP commands (each answered by a
    three-line reply) through ``write`` and never reads; ``write`` returns
    the bytes it sent, or None when it could not send for a moment, and
    raises OSError once the server closed its end (``dropped``)."""

    BURST = b"HELP\r\n" * 20_000

    def __init__(self, write: Callable[[memoryview], Optional[int]]) -> None:
        self.write = write
        self.sent = 0
        self.last_progress = time.monotonic()
        self.dropped = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @classmethod
    def on_socket(cls, sock: socket.socket) -> Deaf:
        sock.settimeout(0.2)

        def write(view: memoryview) -> Optional[int]:
            try:
                return sock.send(view)
            except socket.timeout:
                return None

        return cls(write)

    @classmethod
    def on_pipe(cls, fd: int) -> Deaf:
        os.set_blocking(fd, False)

        def write(view: memoryview) -> Optional[int]:
            if not select.select([], [fd], [], 0.2)[1]:
                return None
            try:
                return os.write(fd, view[:65536])
            except BlockingIOError:
                return None

        return cls(write)

    def _run(self) -> None:
        view = memoryview(self.BURST)
        while not self.stop.is_set():
            try:
                count = self.write(view)
            except OSError:
                self.dropped.set()
                return
            if count is None:
                continue
            self.sent += count
            self.last_progress = time.monotonic()
            view = view[count:] or memoryview(self.BURST)

    def stalled(self, seconds: float = 0.5) -> bool:
        """True when nothing could be sent for ``seconds``: the peer stopped reading."""
        return self.dropped.is_set() or time.monotonic() - self.last_progress > seconds

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def sessions_running(master: int) -> int:
    count = 0
    for pid in children(master):
        try:
            count += cmdline(pid).startswith("msmtpd: session")
        except OSError:
            pass
    return count


def test_clients_that_never_read_do_not_hold_the_workers() -> None:
    timeout = 2
    with Server([f"--timeout={timeout}", "--max-sessions=2", DISCARD]) as server:
        deaf: List[Deaf] = []
        sockets: List[socket.socket] = []
        assert wait_until(lambda: sessions_running(server.pid) == 0)  # the start-up probe is done
        try:
            for _ in range(2):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", server.port))
                sockets.append(sock)
                deaf.append(Deaf.on_socket(sock))
            assert wait_until(lambda: sessions_running(server.pid) == 2), "two sessions did not start"
            assert wait_until(lambda: all(d.stalled() for d in deaf)), "the server kept reading"
            stalled = time.monotonic()
            third = Client(server.port)
            try:
                greeting = third.reply_or_eof(timeout + 5)
            except TimeoutError:
                greeting = None
            waited = time.monotonic() - stalled
            try:
                assert greeting is not None, (
                    f"no greeting for a third client {waited:.1f} s after both deaf clients stalled; "
                    f"deaf clients dropped: {[d.dropped.is_set() for d in deaf]}")
                assert greeting.startswith(b"220 "), greeting
                assert third.command(b"NOOP\r\n").startswith(b"250")
                assert third.command(b"QUIT\r\n").startswith(b"221")
            finally:
                third.close()
            assert all(d.dropped.wait(timeout + 5) for d in deaf), "a deaf client is still connected"
        finally:
            for d in deaf:
                d.close()
            for sock in sockets:
                sock.close()
        assert server.process is not None and server.process.poll() is None


@pytest.mark.parametrize("channel", ["socketpair", "pipes"])
def test_inetd_client_that_never_reads_is_dropped(channel: str) -> None:
    timeout = 2
    argv = [program("msmtpd"), "--inetd", f"--timeout={timeout}", DISCARD]
    if channel == "socketpair":
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(argv, stdin=theirs.fileno(), stdout=theirs.fileno(),
                                       stderr=subprocess.PIPE)
        finally:
            theirs.close()
        deaf = Deaf.on_socket(ours)
    else:
        # stdout is a pipe nobody reads
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        assert process.stdin is not None
        deaf = Deaf.on_pipe(process.stdin.fileno())
    try:
        assert wait_until(deaf.stalled), "msmtpd kept reading"
        stalled = time.monotonic()
        try:
            status: Optional[int] = process.wait(timeout + 5)
        except subprocess.TimeoutExpired:
            status = None
        ended = time.monotonic() - stalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        deaf.close()
        if channel == "socketpair":
            ours.close()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        assert process.stderr is not None
        err = process.stderr.read()
        process.stderr.close()
    assert status is not None, f"msmtpd --inetd still runs {ended:.1f} s after its client stopped reading"
    assert status == 1
    assert b"Traceback" not in err, err


# -- 3. the DATA minimum rate -----------------------------------------------------------


def test_silence_during_data_gets_421(tmp_path: Path) -> None:
    timeout = 2
    with Server([f"--timeout={timeout}", "--max-sessions=2", f"--command={maildir_command(tmp_path)}"]
                ) as server:
        client = start_session(server.port, through_rcpt=True)
        try:
            assert client.command(b"DATA\r\n").startswith(b"354")
            client.send(b"Subject: half\r\n\r\nhalf a")
            silent = time.monotonic()
            answer = client.reply_or_eof(timeout + 4)
            assert answer == IDLE_421, answer
            assert client.rest_until_eof(timeout + 3) == b""
            closed = time.monotonic() - silent
        finally:
            client.close()
    assert closed < timeout + 3, f"closed {closed:.1f} s into the silence"
    assert delivered(tmp_path) == []


def test_data_below_500_octets_per_second_gets_421(tmp_path: Path) -> None:
    """100 octets every 0.5 s: never silent for --timeout, but 200 octets/s."""
    timeout = 2
    with Server([f"--timeout={timeout}", "--max-sessions=2", f"--command={maildir_command(tmp_path)}"]
                ) as server:
        client = start_session(server.port, through_rcpt=True)
        try:
            assert client.command(b"DATA\r\n").startswith(b"354")
            started = time.monotonic()
            chunks = [b"Subject: slow\r\n" + b"s" * 83 + b"\r\n"] + [b"x" * 98 + b"\r\n"] * 100
            sent = 0
            for chunk in chunks:
                if time.monotonic() - started > timeout + 4:
                    break
                try:
                    client.send(chunk)
                except OSError:
                    break
                sent += len(chunk)
                if client.readable(0.5):
                    break
            answer = client.reply_or_eof(timeout + 3)
            answered = time.monotonic() - started
            assert answer == SLOW_421, f"{answered:.1f} s into DATA, after {sent} octets: {answer!r}"
            assert answered < timeout + 3, f"answered {answered:.1f} s into DATA"
            assert client.rest_until_eof(3) == b""
        finally:
            client.close()
    assert delivered(tmp_path) == []


def test_data_at_a_normal_or_modest_rate_is_delivered(tmp_path: Path) -> None:
    timeout = 2
    with Server([f"--timeout={timeout}", "--max-sessions=2", f"--command={maildir_command(tmp_path)}"]
                ) as server:
        body = "Subject: fast\r\n\r\n" + "".join(f"line {i:06d} of a normal mail\r\n" for i in range(4000))
        with smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT) as smtp:
            smtp.sendmail("a@example.org", ["b@example.org"], body)
        # 2000 octets/s for twice --timeout: slow, but above the minimum rate.
        client = start_session(server.port, through_rcpt=True)
        try:
            assert client.command(b"DATA\r\n").startswith(b"354")
            client.send(b"Subject: modest\r\n\r\n")
            started = time.monotonic()
            while time.monotonic() - started < 2 * timeout:
                client.send(b"m" * 998 + b"\r\n")
                assert not client.readable(0.5), f"answered inside DATA: {client.reply_or_eof()!r}"
            assert client.command(b".\r\n").startswith(b"250 ")
            assert client.command(b"QUIT\r\n").startswith(b"221")
        finally:
            client.close()
    mails = wait_for_mails(tmp_path, 2)
    assert len(mails) == 2
    assert b"Subject: fast" in mails[0] and b"Subject: modest" in mails[1]


# -- 4. overload ----------------------------------------------------------------------
#
# Each scenario needs more than 10 s of real time; the three run side by
# side (each with its own server) in the background from the start of the
# module, and their tests collect the outcome.


class Watch:
    """Reads a socket in the background until it closes, noting when each
    piece arrived."""

    def __init__(self, client: Client, limit: float) -> None:
        self.client = client
        self.pieces: List[Tuple[float, bytes]] = []
        self.closed_at: Optional[float] = None
        self.thread = threading.Thread(target=self._run, args=(limit,), daemon=True)
        self.thread.start()

    def _run(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        sock = self.client.sock
        while time.monotonic() < deadline:
            ready, _, _ = select.select([sock], [], [], 0.2)
            if not ready:
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.closed_at = time.monotonic()
                return
            self.pieces.append((time.monotonic(), data))

    @property
    def data(self) -> bytes:
        return b"".join(piece for _, piece in self.pieces)


def wait_for_third(port: int, timeout: float, result: Dict[str, Any], noop: bool = False) -> None:
    """A client that arrives while the pool is full: how long until its
    greeting (in ``result``), then a NOOP if asked, and QUIT."""
    third = Client(port)
    connected = time.monotonic()
    try:
        try:
            greeting: Optional[bytes] = third.reply_or_eof(timeout)
        except TimeoutError:
            greeting = None
        result["waited"] = time.monotonic() - connected
        result["greeting"] = greeting
        if greeting:
            if noop:
                result["noop"] = third.command(b"NOOP\r\n")
            third.command(b"QUIT\r\n")
    finally:
        third.close()


def overload_cut(directory: Path) -> Dict[str, Any]:
    """Two idle sessions fill --max-sessions=2; a third client waits."""
    log = directory / "msmtpd.log"
    result: Dict[str, Any] = {"log": log}
    with Server(["--max-sessions=2", "--timeout=300", f"--log={log}", DISCARD]) as server:
        idle = [Client(server.port) for _ in range(2)]
        try:
            greeted = []
            for client in idle:
                assert client.reply().startswith(b"220 ")
                greeted.append(time.monotonic())
            watches = [Watch(client, 30) for client in idle]
            wait_for_third(server.port, 20, result, noop=True)
            wait_until(lambda: any(w.closed_at for w in watches), 3)
            result["idle"] = [(w.data, w.closed_at, [t - g for t, _ in w.pieces])
                              for w, g in zip(watches, greeted)]
        finally:
            for client in idle:
                client.close()
        wait_until(lambda: log.exists() and "too busy" in log.read_text().lower(), 3)
    return result


def overload_none_waiting(directory: Path) -> Dict[str, Any]:
    """Two idle sessions fill --max-sessions=2; nobody waits."""
    with Server(["--max-sessions=2", "--timeout=300", DISCARD]) as server:
        idle = [Client(server.port) for _ in range(2)]
        try:
            for client in idle:
                assert client.reply().startswith(b"220 ")
            time.sleep(12)
            answers = []
            for client in idle:
                if client.readable(0):
                    answers.append(b"unasked: " + client.reply_or_eof(1))
                    continue
                try:
                    answers.append(client.command(b"NOOP\r\n", 5))
                except (AssertionError, OSError) as exc:
                    answers.append(repr(exc).encode())
        finally:
            for client in idle:
                client.close()
    return {"noops": answers}


def overload_in_data(directory: Path) -> Dict[str, Any]:
    """Two sessions in a slow (2000 octets/s) DATA for 12 s fill
    --max-sessions=2 while a third client waits."""
    maildir = directory / "Maildir"
    result: Dict[str, Any] = {"maildir": maildir}
    with Server(["--max-sessions=2", "--timeout=300", f"--command={maildir_command(maildir)}"]) as server:
        senders = [start_session(server.port, through_rcpt=True) for _ in range(2)]
        answers: List[List[bytes]] = [[], []]

        def send_slowly(number: int) -> None:
            client = senders[number]
            try:
                answers[number].append(client.command(b"DATA\r\n"))
                client.send(f"Subject: slow {number}\r\n\r\n".encode())
                started = time.monotonic()
                while time.monotonic() - started < 12:
                    client.send(b"d" * 98 + b"\r\n" + b"e" * 98 + b"\r\n")
                    if client.readable(0.1):
                        answers[number].append(b"in DATA: " + client.reply_or_eof(1))
                        return
                answers[number].append(client.command(b".\r\n", WAIT))
                answers[number].append(client.command(b"QUIT\r\n"))
            except (AssertionError, OSError) as exc:
                answers[number].append(repr(exc).encode())

        threads = [threading.Thread(target=send_slowly, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        wait_for_third(server.port, 30, result)
        for thread in threads:
            thread.join(30)
        for client in senders:
            client.close()
        result["answers"] = answers
    return result


OVERLOAD_SCENARIOS: Dict[str, Callable[[Path], Dict[str, Any]]] = {
    "test_overload_closes_an_idle_session_for_a_waiting_client": overload_cut,
    "test_overload_leaves_idle_sessions_alone_when_nobody_waits": overload_none_waiting,
    "test_overload_never_cuts_a_session_in_data": overload_in_data,
}


@pytest.fixture(scope="module", autouse=True)
def overload(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Dict[str, Future[Dict[str, Any]]]]:
    """Starts the overload scenarios of the selected tests when the module
    starts, so their long waits overlap with the other tests."""
    selected = {item.name for item in request.session.items if item.module is request.module}
    wanted = {name: run for name, run in OVERLOAD_SCENARIOS.items() if name in selected}
    if not wanted:
        yield {}
        return
    pool = ThreadPoolExecutor(len(wanted))
    futures = {name: pool.submit(run, tmp_path_factory.mktemp(name[:30])) for name, run in wanted.items()}
    yield futures
    pool.shutdown(wait=True)


def test_overload_closes_an_idle_session_for_a_waiting_client(
        overload: Dict[str, Future[Dict[str, Any]]]) -> None:
    result = overload["test_overload_closes_an_idle_session_for_a_waiting_client"].result(timeout=60)
    idle = result["idle"]
    assert result["greeting"] is not None, (
        f"the third client got no greeting in {result['waited']:.1f} s; the idle ones got {idle}")
    assert result["greeting"].startswith(b"220 "), result["greeting"]
    assert result["waited"] < 20, result["waited"]
    assert result["noop"].startswith(b"250")
    cut = [(data, closed, times) for data, closed, times in idle if data == BUSY_421]
    assert cut, f"no idle session got {BUSY_421!r}: {idle}"
    for data, closed, times in idle:
        assert data in (b"", BUSY_421), data
        if data:
            assert closed is not None, "the 421 did not close the connection"
            assert times[0] > OVERLOAD_IDLE - 2, f"cut {times[0]:.1f} s after its greeting"
    logged = [line for line in result["log"].read_text().splitlines() if "too busy" in line.lower()]
    assert len(logged) >= len(cut), result["log"].read_text()


def test_overload_leaves_idle_sessions_alone_when_nobody_waits(
        overload: Dict[str, Future[Dict[str, Any]]]) -> None:
    noops = overload["test_overload_leaves_idle_sessions_alone_when_nobody_waits"].result(timeout=60)["noops"]
    assert all(n.startswith(b"250 ") for n in noops), noops


def test_overload_never_cuts_a_session_in_data(overload: Dict[str, Future[Dict[str, Any]]]) -> None:
    result = overload["test_overload_never_cuts_a_session_in_data"].result(timeout=60)
    for answers in result["answers"]:
        assert len(answers) == 3, answers
        data, dot, quit_ = answers
        assert data.startswith(b"354"), answers
        assert dot.startswith(b"250 "), answers
        assert quit_.startswith(b"221"), answers
    mails = wait_for_mails(result["maildir"], 2)
    assert len(mails) == 2
    assert result["greeting"] is not None and result["greeting"].startswith(b"220 "), result


# -- 5. --log=- when standard error is shared ---------------------------------------------


def test_log_to_stderr_shared_with_stdout_daemon() -> None:
    port = free_port()
    process = subprocess.Popen([program("msmtpd"), f"--port={port}", "--interface=127.0.0.1", "--log=-",
                                DISCARD], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process=process)
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as smtp:
            smtp.sendmail("a@example.org", ["b@example.org"], "Subject: logged\r\n\r\nx\r\n")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    text = output.decode("utf-8", "replace")
    assert "Traceback" not in text, text
    logged = [line for line in text.splitlines() if "msmtpd[" in line and "info:" in line]
    assert logged, f"nothing logged on the shared stdout/stderr: {text!r}"
    assert any(LOG_LINE.fullmatch(line) and "delivered" in line for line in logged), logged


def test_log_to_stderr_shared_with_stdout_inetd_on_a_pipe() -> None:
    conversation = lines("EHLO client.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>",
                         "DATA", "Subject: logged", "", "x", ".", "QUIT")
    process = subprocess.Popen([program("msmtpd"), "--inetd", "--log=-", DISCARD],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = process.communicate(conversation, timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    text = output.decode("utf-8", "replace")
    assert f"220 {HOST} ESMTP msmtpd" in text and "\r\n221 " in text, text
    logged = [line for line in text.splitlines() if "msmtpd[" in line and "info:" in line]
    assert logged, f"nothing logged: {text!r}"


def test_log_to_stderr_is_silent_when_stderr_is_the_client_socket() -> None:
    """xinetd style: the connection is stdin, stdout and stderr."""
    ours, theirs = socket.socketpair()
    try:
        process = subprocess.Popen([program("msmtpd"), "--inetd", "--log=-", DISCARD],
                                   stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=theirs.fileno())
    finally:
        theirs.close()
    received = b""
    client = Client(sock=ours)
    try:
        steps = [b"EHLO client.example\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.org>\r\n",
                 b"DATA\r\n", b"Subject: x\r\n\r\nx\r\n.\r\n", b"QUIT\r\n"]
        received += client.reply()
        for step in steps:
            received += client.command(step)
        received += client.rest_until_eof(WAIT)
        status = process.wait(WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        client.close()
    assert status == 0
    assert b"msmtpd[" not in received and b"info:" not in received, received
    assert b"Traceback" not in received
    assert [c for c, _ in reply_lines(received)] == [220, 250, 250, 250, 354, 250, 221]


# -- 6. escaping in the log ------------------------------------------------------------------

FORGED = "2026-12-01 20:00:00 msmtpd[1] info: forged"
EVIL_USER = f"mallory\n{FORGED}\x1b[31m red\r{FORGED}\u2028{FORGED}\u0085{FORGED}"
ODD = "a\u2028b\u0085c"


@pytest.mark.parametrize("target", ["file", "stderr"])
def test_client_strings_are_escaped_in_the_log(tmp_path: Path, target: str) -> None:
    log = tmp_path / "msmtpd.log"
    evil = base64.b64encode(b"\0" + EVIL_USER.encode() + b"\0secret").decode()
    good = base64.b64encode(b"\0user\0secret").decode()
    conversation = lines(f"EHLO {ODD}.example", "EHLO client.example", f"AUTH PLAIN {evil}",
                         f"AUTH PLAIN {good}", f"MAIL FROM:<{ODD}@example.org> SMTPUTF8",
                         "MAIL FROM:<plain@example.org>", "RCPT TO:<b@example.org>", "DATA",
                         "Subject: odd", "", "x", ".", "QUIT")
    before = datetime.datetime.now().replace(microsecond=0)
    process, out, err = run_inetd_process(
        ["--auth=user,echo secret", DISCARD, f"--log={log}" if target == "file" else "--log=-"],
        conversation)
    after = datetime.datetime.now()
    codes = [c for c, _ in reply_lines(out)]
    assert codes[2:5] == [250, 535, 235], codes
    assert codes[-4:] == [250, 354, 250, 221], codes
    raw = log.read_bytes() if target == "file" else err
    assert b"\x1b" not in raw, raw
    text = raw.decode("utf-8")
    for line in text.splitlines():  # also splits at CR, U+0085, U+2028 ...
        match = LOG_LINE.fullmatch(line)
        assert match, f"a log line that is not msmtpd's: {line!r}"
        assert int(match["pid"]) == process.pid, line
        assert before <= datetime.datetime.strptime(match["stamp"], "%Y-%m-%d %H:%M:%S") <= after, line
    assert "forged" in text, "the refused user name is not logged at all"
    lowered = text.lower()
    assert "\\x0a" in lowered and "\\x1b" in lowered, text


def test_a_thousand_recipients_log_one_bounded_line(tmp_path: Path) -> None:
    log = tmp_path / "msmtpd.log"
    recipients = [f"r{i}@example.org" for i in range(1000)]
    conversation = lines("EHLO client.example", "MAIL FROM:<a@example.org>",
                         *(f"RCPT TO:<{r}>" for r in recipients), "DATA", "Subject: many", "", "x", ".",
                         "QUIT")
    process, out, err = run_inetd_process([DISCARD, f"--log={log}"], conversation)
    assert process.returncode == 0, err
    assert [c for c, _ in reply_lines(out)] == [220, 250, 250, *[250] * 1000, 354, 250, 221]
    text = log.read_text(encoding="utf-8")
    log_entries(text, process.pid)
    summary = [line for line in text.splitlines() if "and 998 more" in line]
    assert len(summary) == 1, summary
    assert "to <r0@example.org>, <r1@example.org> and 998 more" in summary[0], summary[0]
    longest = max(len(line.encode()) for line in text.splitlines())
    assert longest <= 4500, f"a log line of {longest} octets"


# -- 7. huge numeric option values ------------------------------------------------------------

HUGE = [
    ("timeout-1e10", "--timeout=1e10"),
    ("command-timeout-1e10", "--command-timeout=1e10"),
    ("max-sessions-1e8", "--max-sessions=100000000"),
    ("max-size-1e400", "--max-size=1e400"),
    ("max-size-400-digits", "--max-size=" + "9" * 400),
    ("max-size-5000-digits", "--max-size=" + "9" * 5000),
    ("port-20-digits", "--port=99999999999999999999"),
    ("port-5000-digits", "--port=" + "9" * 5000),
]
# More workers than this for one idle server is a fork bomb: stop it.
FORK_LIMIT = 1100


def assert_refused(status: Optional[int], out: bytes, err: bytes) -> None:
    text = err.decode("utf-8", "replace")
    assert "Traceback" not in text and b"Traceback" not in out, text
    assert status == 3, (status, text)
    assert text.startswith("msmtpd: ") and text.endswith("\n") and text.count("\n") == 1, text


class ForkGuard:
    """Kills the process group of ``process`` if its master forks more than FORK_LIMIT children."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.most = 0
        self.tripped = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set() and self.process.poll() is None:
            count = len(children(self.process.pid))
            self.most = max(self.most, count)
            if count > FORK_LIMIT:
                self.tripped = True
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except OSError:
                    pass
                return
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.mark.parametrize("option", [o for _, o in HUGE], ids=[i for i, _ in HUGE])
def test_huge_option_value_as_daemon(option: str) -> None:
    port = free_port()
    process = subprocess.Popen([program("msmtpd"), f"--port={port}", "--interface=127.0.0.1", DISCARD,
                                option], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    guard = ForkGuard(process)
    wire = b""
    failure: Optional[str] = None
    try:
        deadline = time.monotonic() + WAIT
        listening = False
        while process.poll() is None and time.monotonic() < deadline and not guard.tripped:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    listening = True
                    break
            except OSError:
                time.sleep(0.02)
        if listening and not guard.tripped:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as smtp:
                    wire += smtp.ehlo("client.example")[1]
                    refused = smtp.sendmail("a@example.org", ["b@example.org"], "Subject: x\r\n\r\nx\r\n")
                    failure = repr(refused) if refused else None
            except (smtplib.SMTPException, OSError) as exc:
                failure = repr(exc)
            process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            out, err = b"", b"(still running)"
    finally:
        guard.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert not guard.tripped, f"{option}: the master forked more than {FORK_LIMIT} workers (stopped it)"
    assert b"Traceback" not in wire
    if not listening:
        assert_refused(process.returncode, out, err)
    else:
        assert failure is None, f"{option}: it listens, but a mail failed: {failure}; stderr: {err!r}"
        assert b"Traceback" not in err and b"Traceback" not in out, err
        assert process.returncode == 0, (process.returncode, err)


@pytest.mark.parametrize("option", [o for _, o in HUGE], ids=[i for i, _ in HUGE])
def test_huge_option_value_with_inetd(option: str) -> None:
    conversation = lines("EHLO client.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>",
                         "DATA", "Subject: huge", "", "x", ".", "QUIT")
    process, out, err = run_inetd_process([DISCARD, option], conversation)
    if process.returncode == 3:
        assert out == b"", out
        assert_refused(process.returncode, out, err)
        return
    assert b"Traceback" not in out, out
    assert b"Traceback" not in err, err.decode("utf-8", "replace")
    assert process.returncode == 0, (process.returncode, out, err)
    assert [c for c, _ in reply_lines(out)] == [220, 250, 250, 250, 354, 250, 221]


# -- 8. SIGTERM during a slow delivery --------------------------------------------------------


def processes_with(marker: str) -> List[int]:
    """Live processes of the delivery command: their command line holds
    ``marker`` (msmtpd's own, holding it in --command=, are left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in command and b"--command=" not in command and state != "Z":
            found.append(int(entry.name))
    return found


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


def test_sigterm_during_a_slow_delivery_delivers_nothing_unacknowledged(tmp_path: Path) -> None:
    marker = f"5.{random.randrange(10**8, 10**9)}"  # sleep 5.xxx: unique on this machine
    late = tmp_path / "late.eml"
    log = tmp_path / "msmtpd.log"
    args = ["--timeout=2", "--max-sessions=2", f"--log={log}", f"--command=sleep {marker}; cat > {late}; :"]
    try:
        with Server(args) as server:
            assert server.process is not None
            client = start_session(server.port, through_rcpt=True)
            try:
                assert client.command(b"DATA\r\n").startswith(b"354")
                client.send(b"Subject: late\r\n\r\nbody\r\n.\r\n")
                dot = time.monotonic()
                assert wait_until(lambda: processes_with(marker), 5), "the delivery command did not start"
                running = processes_with(marker)
                leaders = [pid for pid in running if _pgid(pid) == pid]
                time.sleep(max(0.0, dot + 0.5 - time.monotonic()))
                server.process.send_signal(signal.SIGTERM)
                termed = time.monotonic()
                try:
                    status: Optional[int] = server.process.wait(15)
                except subprocess.TimeoutExpired:
                    status = None
                stopped = time.monotonic() - termed
                try:
                    answer = client.reply_or_eof(2)
                except TimeoutError:
                    answer = b"(no answer)"
                got_250 = answer.startswith(b"250")
                # Had the command lived on, it would have written late.eml 5 s after the dot.
                time.sleep(max(1.0, dot + 6.5 - time.monotonic()))
                left = processes_with(marker)
            finally:
                client.close()
    finally:
        for pid in processes_with(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    assert status == 0, f"the master has not exited 0 {stopped:.1f} s after SIGTERM: {status}"
    assert stopped < 10
    assert late.exists() == got_250, (
        f"the client got {answer!r}, and late.eml {'exists' if late.exists() else 'does not exist'}")
    assert left == [], f"processes of the command still run: {left}"
    text = log.read_text()
    named = [line for line in text.splitlines() if "command" in line.lower()
             and (marker in line or any(str(pid) in line for pid in leaders))]
    assert named, f"the log does not name the killed command (pids {running}): {text}"


# -- 9. the recipient limit --------------------------------------------------------------------


def test_recipients_past_1000_get_452_and_the_mail_goes_to_1000(tmp_path: Path) -> None:
    count = tmp_path / "count"
    with Server(["--max-sessions=2", f'--command=echo "$#" > {count}; cat >/dev/null; :']) as server:
        client = start_session(server.port)
        try:
            assert client.command(b"MAIL FROM:<a@example.org>\r\n").startswith(b"250")
            client.send(b"".join(b"RCPT TO:<r%d@example.org>\r\n" % i for i in range(1100)))
            answers = []
            for _ in range(1100):
                answer = client.reply_or_eof()
                if not answer:
                    break
                answers.append(answer)
            first, rest = answers[:1000], answers[1000:]
            assert all(a.startswith(b"250 ") for a in first), sorted(set(first))
            assert rest == [TOO_MANY_RECIPIENTS] * 100, (len(answers), sorted(set(rest)))
            assert client.command(b"DATA\r\n").startswith(b"354")
            assert client.command(b"Subject: many\r\n\r\nhi\r\n.\r\n").startswith(b"250 ")
            assert client.command(b"QUIT\r\n").startswith(b"221")
        finally:
            client.close()
    assert count.read_text().strip() == "1000"


# -- 10. --shell-safe-addresses ------------------------------------------------------------------

SHELL_SPECIAL = set("$`;&|<>()*?[]#~{}!^\\\"' \t")
ALWAYS_SAFE = set(".@_+/=-")

UNSAFE = [
    "a$b@example.org", "a`b`@example.org", "a&b@example.org", "a|b@example.org", "a*b@example.org",
    "a?b@example.org", "a#b@example.org", "~a@example.org", "{a}@example.org", "a!b@example.org",
    "a^b@example.org", "o'brien@example.org", '"a;b"@example.org', '"a<b>c"@example.org',
    '"a(b)"@example.org', "user@[127.0.0.1]", '"a\\\\b"@example.org', '"a b"@example.org',
    '"quoted"@example.org', '"$(touch${IFS}/tmp/x)"@x',
]
SAFE = [
    "plain@example.org", "first.last@example.org", "bounce+user=example.org@lists.example.net",
    "a_b-c/d=e@example.org", "0123456789@example.org", "jörg@example.org", "иван@пример.рф",
    "用户@例子.广告", "postmaster",
]


def _safe_chars(address: str) -> bool:
    return all(c.isalnum() or c in ALWAYS_SAFE for c in address)


def test_shell_safe_addresses_refuses_shell_characters_and_passes_the_rest(tmp_path: Path) -> None:
    assert all(not _safe_chars(a) for a in UNSAFE) and all(_safe_chars(a) for a in SAFE)
    (tmp_path / "out").mkdir()
    script = ["EHLO client.example"]
    for address in UNSAFE:
        script += [f"MAIL FROM:<{address}> SMTPUTF8", "MAIL FROM:<ok@example.org>", f"RCPT TO:<{address}>",
                   "RSET"]
    for address in SAFE:
        script += [f"MAIL FROM:<{address}> SMTPUTF8", f"RCPT TO:<{address}>", "RSET"]
    script += ["MAIL FROM:<bounce+user=example.org@lists.example.net> SMTPUTF8",
               *(f"RCPT TO:<{a}>" for a in SAFE), "DATA", "Subject: safe", "", "x", ".", "QUIT"]
    result = run_inetd(["--shell-safe-addresses", f"--command={shell_command(tmp_path / 'out', '%F')}"],
                       lines(*script))
    assert result.returncode == 0, result.stderr
    replies = reply_lines(result.stdout)
    assert [c for c, _ in replies[:2]] == [220, 250], replies[:2]
    replies = replies[2:]
    problems = []
    for address in UNSAFE:
        (sender, sender_text), (fallback, _), (rcpt, rcpt_text), (rset, _) = replies[:4]
        del replies[:4]
        for role, text in (("sender", sender_text), ("recipient", rcpt_text)):
            if not text.startswith("553 5.1.3 Address refused:"):
                problems.append(f"{address} as {role}: {text}")
        if (fallback, rset) != (250, 250):
            problems.append(f"{address}: the session did not go on ({fallback}, {rset})")
    for address in SAFE:
        (sender, sender_text), (rcpt, rcpt_text), _ = replies[:3]
        del replies[:3]
        if sender != 250 or rcpt != 250:
            problems.append(f"{address}: {sender_text} / {rcpt_text}")
    codes = [c for c, _ in replies]
    assert codes == [250, *[250] * len(SAFE), 354, 250, 221], replies
    assert not problems, "\n".join(problems)
    [delivery] = deliveries("shell-unquoted", tmp_path)
    assert (delivery.sender, delivery.recipients) == ("bounce+user=example.org@lists.example.net", SAFE)


def test_without_shell_safe_addresses_a_shell_payload_is_passed_literally(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    payload = '"$(touch${IFS}/tmp/x)"@x'
    existed = os.path.exists("/tmp/x")
    result = run_inetd([f"--command={shell_command(tmp_path / 'out', '%F')}"], lines(
        "EHLO client.example", "MAIL FROM:<a@example.org>", f"RCPT TO:<{payload}>", "DATA", "Subject: x", "",
        "x", ".", "QUIT"))
    assert result.returncode == 0, result.stderr
    assert [c for c, _ in reply_lines(result.stdout)] == [220, 250, 250, 250, 354, 250, 221]
    [delivery] = deliveries("shell-unquoted", tmp_path)
    assert delivery.recipients == [payload]
    if not existed:
        assert not os.path.exists("/tmp/x"), "a shell ran the payload"


def test_hostile_corpus_with_shell_safe_addresses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every address of tests/support/hostile.py that carries a shell-special
    character is refused; valid ones with 553 5.1.3."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    corpus = [e for e in ADDRESSES if b"\r" not in e.path and b"\n" not in e.path]
    script = b""
    for case, entry in enumerate(corpus):
        script += (b"RSET\r\n" + f"EHLO case{case}.example\r\n".encode()
                   + b"MAIL FROM:" + entry.path + b" SMTPUTF8\r\n"
                   + f"MAIL FROM:<fallback{case}@example.org> SMTPUTF8\r\n".encode()
                   + b"RCPT TO:" + entry.path + b"\r\n"
                   + f"RCPT TO:<rcpt{case}@example.org>\r\nDATA\r\n".encode()
                   + f"Subject: case {case}\r\n\r\nx\r\n.\r\n".encode())
    result = run_inetd(["--shell-safe-addresses", f"--command={shell_command(tmp_path / 'out', '%F')}"],
                       script + b"QUIT\r\n", timeout=60)
    assert result.returncode == 0, result.stderr
    replies = reply_lines(result.stdout)
    assert replies.pop(0)[0] == 220
    problems = []
    checked = 0
    for entry in corpus:
        group = replies[:8]
        del replies[:8]
        (rset, _), (ehlo, _), (sender, sender_text), (fallback, _), (rcpt, rcpt_text), \
            (rcpt2, _), (data, _), (dot, _) = group
        if (rset, ehlo, rcpt2, data, dot) != (250, 250, 250, 354, 250):
            problems.append(f"{entry.label}: the transaction did not go through: {group}")
            continue
        if (sender == 250) == (fallback == 250):
            problems.append(f"{entry.label}: sender {sender}, fallback {fallback}")
        text = entry.path.decode("utf-8", "replace").strip()
        inner = text[1:-1] if text.startswith("<") and text.endswith(">") else text
        special = any(c in SHELL_SPECIAL for c in inner)
        for role, reply, reply_text in (("sender", sender, sender_text), ("recipient", rcpt, rcpt_text)):
            if entry.verdict == "refuse":
                ok = 500 <= reply < 600
            elif special and entry.literal is None:
                ok = reply_text.startswith("553 5.1.3 Address refused:")
                checked += 1
            elif special or not _safe_chars(inner):
                ok = reply in (250, 553) or (entry.verdict == "either" and 500 <= reply < 600)
            elif entry.verdict == "accept":
                ok = reply == 250
            else:
                ok = reply == 250 or 500 <= reply < 600
            if not ok:
                problems.append(f"{entry.label} as {role}: {reply_text}")
    assert [c for c, _ in replies] == [221], replies
    assert checked >= 40, checked  # the corpus holds many valid addresses with shell characters
    for found in deliveries("shell-unquoted", tmp_path):
        for address in (found.sender, *found.recipients):
            if any(c in SHELL_SPECIAL for c in address):
                problems.append(f"delivered to the command: {address!r}")
    assert not (tmp_path / "pwned").exists()
    assert not problems, "\n".join(problems)
