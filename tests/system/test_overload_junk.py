"""Sessions that hold the pool with junk (issue 17, item 8).

When every worker is busy and clients wait, a session that made no progress
for 10 s gets 421 (Postfix's overload smtpd_timeout).  A NOOP every 5 s
used to reset that clock, so two such clients held a pool of two for good.
Now only commands that move a transaction forward count (EHLO or HELO as
the first greeting, STARTTLS, AUTH, MAIL, RCPT accepted, DATA and its
content); NOOP, RSET, HELP, VRFY, EXPN, a second EHLO and refused commands
do not, as in Postfix's smtpd_junk_command_limit."""

from __future__ import annotations

import select
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import pytest

from tests import helpers

OVERLOAD_SECONDS = 10.0
# The third client must be greeted within this long (10 s of junk, a tick
# of the worker's check, and slack for a busy 2-core machine).
GREETED_WITHIN = 15.0
WAIT = 15.0
BUSY_421 = b"421 4.3.2"


class Client:
    """A raw SMTP client: one reply at a time, with its arrival time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.reader = self.sock.makefile("rb")

    def reply(self, timeout: float = WAIT) -> bytes:
        """One whole reply (all its lines), b"" at EOF."""
        self.sock.settimeout(timeout)
        text = b""
        while True:
            line = self.reader.readline()
            text += line
            if not line or line[3:4] != b"-":
                return text

    def command(self, line: bytes, timeout: float = WAIT) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply(timeout)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def keep_alive(client: Client, junk: Sequence[bytes], every: float, stop: threading.Event,
               answers: List[Tuple[float, bytes, bytes]]) -> None:
    """Send the ``junk`` commands in turn, one every ``every`` seconds, until
    the session is closed (an unasked 421 is recorded too) or ``stop``."""
    turn = 0
    try:
        while not stop.is_set():
            if select.select([client.sock], [], [], every)[0]:
                answer = client.reply()  # unasked: the 421 of the overload rule, or EOF
                answers.append((time.monotonic(), b"", answer))
                return
            if stop.is_set():
                return
            command = junk[turn % len(junk)]
            turn += 1
            answer = client.command(command)
            answers.append((time.monotonic(), command, answer))
            if not answer or answer.startswith(b"421"):
                return
    except OSError as exc:
        answers.append((time.monotonic(), b"", repr(exc).encode()))


def hold_the_pool(directory: Path, junk: Sequence[bytes], every: float) -> Dict[str, Any]:
    """Two clients greet, then send only ``junk`` with --max-sessions=2; a
    third connects and waits for its greeting."""
    log = directory / "msmtpd.log"
    result: Dict[str, Any] = {"log": log}
    args = ["--max-sessions=2", "--timeout=300", f"--log={log}", "--command=cat >/dev/null; :"]
    with helpers.Server(args) as server:
        holders = [Client(server.port) for _ in range(2)]
        try:
            for client in holders:
                assert client.reply().startswith(b"220 ")
                assert client.command(b"EHLO holder.test").startswith(b"250")
            stop = threading.Event()
            answers: List[List[Tuple[float, bytes, bytes]]] = [[], []]
            threads = [threading.Thread(target=keep_alive, args=(c, junk, every, stop, a))
                       for c, a in zip(holders, answers)]
            for thread in threads:
                thread.start()
            time.sleep(0.5)
            third = Client(server.port)
            connected = time.monotonic()
            try:
                greeting = third.reply(timeout=GREETED_WITHIN + 10)
            except (TimeoutError, socket.timeout):
                greeting = b""
            result["waited"] = time.monotonic() - connected
            result["greeting"] = greeting
            if greeting:
                result["third"] = third.command(b"EHLO third.test")
                third.command(b"QUIT")
            third.close()
            stop.set()
            for thread in threads:
                thread.join(WAIT)
            result["answers"] = answers
        finally:
            for client in holders:
                client.close()
    return result


def progress_keeps_its_worker(directory: Path) -> Dict[str, Any]:
    """--max-sessions=1: a client that delivers a mail every 3 s for 15 s
    is progress all along; a second client waits its turn."""
    args = ["--max-sessions=1", "--spare-workers=1", "--timeout=300", "--command=cat >/dev/null; :"]
    with helpers.Server(args) as server:
        sender = Client(server.port)
        answers: List[bytes] = [sender.reply(), sender.command(b"EHLO sender.test")]
        waiting = Client(server.port)
        started = time.monotonic()
        try:
            while time.monotonic() - started < 15:
                time.sleep(3)
                for line in (b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.org>", b"DATA",
                             b"Subject: progress\r\n\r\nbody\r\n."):
                    answers.append(sender.command(line))
            answers.append(sender.command(b"QUIT"))
            greeting = waiting.reply(timeout=WAIT)
            waited = time.monotonic() - started
        finally:
            sender.close()
            waiting.close()
    return {"answers": answers, "greeting": greeting, "waited": waited}


MIXED_JUNK = (b"MAIL FROM:<broken", b"RCPT TO:<b@example.org>", b"RSET", b"HELP",
              b"VRFY postmaster", b"EHLO again.test", b"EXPN staff", b"NOOP")
SCENARIOS: Dict[str, Callable[[Path], Dict[str, Any]]] = {
    "test_noop_every_5_s_does_not_hold_the_pool": lambda d: hold_the_pool(d, [b"NOOP"], 5.0),
    "test_rset_help_vrfy_and_refused_commands_do_not_hold_the_pool":
        lambda d: hold_the_pool(d, MIXED_JUNK, 2.0),
    "test_a_session_that_delivers_keeps_its_worker": progress_keeps_its_worker,
}


@pytest.fixture(scope="module")
def scenarios(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Dict[str, Future[Dict[str, Any]]]]:
    """Runs the selected scenarios at once: each waits for tens of seconds."""
    selected = {item.name for item in request.session.items if item.module is request.module}
    wanted = {name: run for name, run in SCENARIOS.items() if name in selected}
    pool = ThreadPoolExecutor(max(1, len(wanted)))
    futures = {name: pool.submit(run, tmp_path_factory.mktemp(name[5:25])) for name, run in wanted.items()}
    yield futures
    pool.shutdown(wait=True)


def check_the_pool_was_freed(result: Dict[str, Any]) -> None:
    answers = result["answers"]
    assert result["greeting"].startswith(b"220 "), (
        f"the third client was not greeted within {result['waited']:.1f} s; the holders got {answers}")
    assert result["waited"] < GREETED_WITHIN, result["waited"]
    assert result["third"].startswith(b"250")
    cut = [replies for replies in answers if replies and replies[-1][2].startswith(BUSY_421)]
    assert cut, f"no holder got {BUSY_421!r}: {answers}"
    for replies in cut:
        for _, _, answer in replies[:-1]:
            assert not answer.startswith(b"421"), replies
    logged = [line for line in result["log"].read_text().splitlines() if "too busy" in line]
    assert len(logged) >= len(cut), result["log"].read_text()
    assert all("without progress for 1" in line for line in logged), logged


def test_noop_every_5_s_does_not_hold_the_pool(scenarios: Dict[str, Future[Dict[str, Any]]]) -> None:
    check_the_pool_was_freed(scenarios["test_noop_every_5_s_does_not_hold_the_pool"].result(90))


def test_rset_help_vrfy_and_refused_commands_do_not_hold_the_pool(
        scenarios: Dict[str, Future[Dict[str, Any]]]) -> None:
    result = scenarios["test_rset_help_vrfy_and_refused_commands_do_not_hold_the_pool"].result(90)
    check_the_pool_was_freed(result)
    codes = {answer[:3] for replies in result["answers"] for _, _, answer in replies}
    assert {b"250", b"214", b"501", b"503"} <= codes, codes  # refused ones among them


def test_a_session_that_delivers_keeps_its_worker(scenarios: Dict[str, Future[Dict[str, Any]]]) -> None:
    result = scenarios["test_a_session_that_delivers_keeps_its_worker"].result(90)
    answers = result["answers"]
    assert not any(a.startswith(b"421") for a in answers), answers
    assert [a[:3] for a in answers[2:-1]] == [b"250", b"250", b"354", b"250"] * 5, answers
    assert answers[-1].startswith(b"221")
    assert result["greeting"].startswith(b"220 ") and result["waited"] >= 14, result
