#!/usr/bin/env python3
"""Load msmtpd and check that every acknowledged mail arrived exactly once.

The tool sends N mails over C concurrent SMTP sessions (M mails per session),
each mail with a Message-ID of its own, and measures throughput and latency.
Then it reads the store the delivery command wrote to and classifies every
stored file against what the clients saw:

* an attempt answered 250 must have arrived exactly once (else *lost* or
  *duplicated*);
* an attempt whose reply never came (the connection dropped after the final
  dot) may have arrived: that is the RFC 1047 window, counted on its own;
* an attempt refused with 4xx/5xx, or cut before its final dot was sent, must
  not have arrived;
* nothing else may arrive, and what arrives must be what was sent.

With ``--start`` the tool runs its own msmtpd (the console script next to this
Python, never a shim or the C msmtpd), delivering into a temporary Maildir,
and ``--kill-workers RATE`` SIGKILLs random workers of it while the load runs.
Clients treat a dropped connection or a non-250 reply as "not acknowledged"
and, with ``--retries``, send the mail again with the same Message-ID (an
``X-Load-Attempt`` header tells the attempts apart in the store).

Exit status: 0 when nothing was lost, duplicated, unexpected, damaged or
delivered against a refusal; 1 otherwise; 2 for a usage or start-up error.

With ``--queue`` the started msmtpd runs with ``--queue`` and a delivery
command that defers (exit 75) ``--fail-rate`` of its attempts (default
half): every mail answered 250 must still arrive exactly once, after the
runner's retries (shortened by MSMTPD_QUEUE_RETRY_SECONDS); the tool waits
until the queue is empty before it counts.

``load.py --store DIR [--fail-rate R] [-f SENDER] [--] RECIPIENT...`` is the tool's own tiny
delivery command (Maildir layout, like msmtpd-maildir but with a much
cheaper start: it imports nothing but os and sys).

Examples::

    scripts/load.py --start --mails 2000 --concurrency 32 --max-sessions 16
    scripts/load.py --start --mails 300 --kill-workers 2 --retries 2 --json
    scripts/load.py --start --queue --mails 2000 --concurrency 32 --fail-rate 0.5
    scripts/load.py --host 127.0.0.1 --port 2525 --maildir ~/msmtpd-mail --mails 100
"""

from __future__ import annotations

import os
import sys

EX_TEMPFAIL = 75
EX_USAGE = 64


def store_main(args: list[str]) -> int:
    """The ``--store`` delivery command: the mail on stdin becomes one file in
    DIR/new (written to DIR/tmp, flushed to disk, then renamed)."""
    if not args:
        sys.stderr.write("usage: load.py --store DIRECTORY [-f SENDER] [--] RECIPIENT...\n")
        return EX_USAGE
    directory, rest = args[0], args[1:]
    if rest[:1] == ["--fail-rate"] and len(rest) >= 2:
        # --queue mode: defer this share of the attempts (75) before storing.
        rate, rest = float(rest[1]), rest[2:]
        if int.from_bytes(os.urandom(2), "big") / 65536 < rate:
            sys.stderr.write("load.py --store: deferred on purpose (--fail-rate)\n")
            return EX_TEMPFAIL
    sender = None
    if rest[:1] == ["-f"] and len(rest) >= 2:
        sender, rest = rest[1], rest[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    head = b""
    if sender is not None:
        head += b"Return-Path: <" + (b"" if sender == "MAILER-DAEMON" else os.fsencode(sender)) + b">\n"
    for recipient in rest:
        head += b"Delivered-To: " + os.fsencode(recipient) + b"\n"
    name = f"{time_ns()}.P{os.getpid()}.R{os.urandom(6).hex()}"
    try:
        mail = sys.stdin.buffer.read()
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(directory, sub), exist_ok=True)
        temporary = os.path.join(directory, "tmp", name)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            data = head + mail
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, os.path.join(directory, "new", name))
    except OSError as exc:
        sys.stderr.write(f"load.py --store: cannot store the mail: {exc.strerror}\n")
        return EX_TEMPFAIL
    return 0


def time_ns() -> int:
    import time

    return time.time_ns()


# The delivery command path above must start fast: everything below is
# imported only when the tool itself runs.
if __name__ == "__main__" and sys.argv[1:2] == ["--store"]:
    sys.exit(store_main(sys.argv[2:]))

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from email.utils import formatdate  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple  # noqa: E402

BIN = Path(sys.executable).parent
SCRIPT = Path(__file__).resolve()
SENDER = "load@example.test"
EHLO_NAME = "load.example.test"
# Outcomes of one attempt at sending a mail.
ACKED = "acked"  # the final reply was 250
REFUSED = "refused"  # a 4xx/5xx reply to MAIL, RCPT, DATA or the final dot
UNKNOWN = "unknown"  # the final dot was sent, no reply came: RFC 1047
UNSENT = "unsent"  # the connection broke before the final dot was sent
# A path that goes into the delivery command line verbatim: no blanks and
# nothing a shell would read.
SAFE_PATH = re.compile(r"^[\w./+@:,-]+$")
# Consecutive failed session starts (connect, greeting, EHLO) before the run
# gives up on the server.
MAX_SESSION_FAILURES = 500


class Dropped(Exception):
    """The connection is gone (closed, reset, timed out, or talking nonsense)."""


# -- the mails ---------------------------------------------------------------


@dataclass
class Attempt:
    number: int
    outcome: str = UNSENT
    code: int = 0
    seconds: float = 0.0


@dataclass
class Mail:
    index: int
    message_id: str
    recipient: str
    body: bytes  # as stored: LF line endings, dot-unstuffed
    attempts: List[Attempt] = field(default_factory=list)

    def headers(self, attempt: int, date: str) -> bytes:
        return (f"From: Load <{SENDER}>\nTo: <{self.recipient}>\nDate: {date}\n"
                f"Subject: load mail {self.index}\nMessage-ID: {self.message_id}\n"
                f"X-Load-Attempt: {attempt}\n").encode()

    @property
    def acked(self) -> bool:
        return any(a.outcome == ACKED for a in self.attempts)


def make_body(index: int, run: str, size: int) -> bytes:
    """A body of about ``size`` bytes that says which mail it belongs to; one
    line starts with a dot, to check dot-stuffing both ways."""
    lines = [f"Mail {index} of load run {run}.", ".a line that starts with a dot", ""]
    length = sum(len(line) + 1 for line in lines)
    number = 0
    while length < size:
        line = f"{index:08d}-{number:06d} " + "abcdefghijklmnopqrstuvwxyz0123456789" * 2
        lines.append(line)
        length += len(line) + 1
        number += 1
    return ("\n".join(lines) + "\n").encode()


def wire(headers: bytes, body: bytes) -> bytes:
    """The DATA payload: CRLF line endings, dot-stuffed, with the final dot."""
    out = []
    for line in (headers + b"\n" + body).split(b"\n")[:-1]:
        out.append((b"." + line if line.startswith(b".") else line) + b"\r\n")
    out.append(b".\r\n")
    return b"".join(out)


# -- a small SMTP client -----------------------------------------------------


class Client:
    """One SMTP session in lock step.  Every socket operation has a timeout;
    any failure of the connection is raised as ``Dropped``.  (A hand-written
    client rather than smtplib, so the tool knows exactly whether the final
    dot left before the connection broke.)"""

    def __init__(self, host: str, port: int, timeout: float, registry: SocketRegistry) -> None:
        self.registry = registry
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise Dropped(f"connect: {exc}") from None
        registry.add(self.sock)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.registry.discard(self.sock)
        try:
            self.reader.close()
            self.sock.close()
        except OSError:
            pass

    def reply(self) -> int:
        code = b""
        while True:
            try:
                line = self.reader.readline(4096)
            except (OSError, ValueError) as exc:
                raise Dropped(f"read: {exc}") from None
            if not line:
                raise Dropped("connection closed")
            if len(line) < 4 or not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                raise Dropped(f"not an SMTP reply: {line[:60]!r}")
            if code and line[:3] != code:
                raise Dropped("reply lines with different codes")
            code = line[:3]
            if line[3:4] != b"-":
                return int(code)

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise Dropped(f"write: {exc}") from None

    def command(self, line: str) -> int:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def transaction(self, mail: Mail, attempt: Attempt, payload: bytes) -> None:
        """Send one mail; fills in ``attempt``.  Raises ``Dropped`` after
        recording the outcome when the connection is no longer usable."""
        started = time.monotonic()
        try:
            for line in (f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{mail.recipient}>", "DATA"):
                code = self.command(line)
                if code != (354 if line == "DATA" else 250):
                    attempt.outcome, attempt.code = REFUSED, code
                    return
            self.send(payload)
            attempt.outcome = UNKNOWN  # the final dot is out
            attempt.code = self.reply()
            attempt.outcome = ACKED if attempt.code == 250 else REFUSED
        finally:
            attempt.seconds = time.monotonic() - started


class SocketRegistry:
    """The open client sockets, so the deadline can cut them all at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.closed = False

    def add(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.add(sock)
            closed = self.closed
        if closed:
            self._cut(sock)

    def discard(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.discard(sock)

    def cut_all(self) -> None:
        with self.lock:
            self.closed = True
            sockets = list(self.sockets)
        for sock in sockets:
            self._cut(sock)

    @staticmethod
    def _cut(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# -- the load ----------------------------------------------------------------


class Load:
    """C client threads take batches of M mails from a shared queue; a mail
    that was not acknowledged goes back to the queue while it has attempts
    left; mails a broken session did not get to go back untouched."""

    def __init__(self, options: argparse.Namespace, mails: List[Mail], stop: threading.Event) -> None:
        self.options = options
        self.mails = mails
        self.stop = stop
        self.queue: Deque[Mail] = collections.deque(mails)
        self.outstanding = len(mails)
        self.condition = threading.Condition()
        self.registry = SocketRegistry()
        self.date = formatdate(usegmt=True)
        self.session_seconds: List[float] = []
        self.session_failures = 0
        self.consecutive_failures = 0
        self.gave_up = ""
        self.sessions = 0

    def run(self) -> List[threading.Thread]:
        threads = [threading.Thread(target=self._client, name=f"client-{n}", daemon=True)
                   for n in range(self.options.concurrency)]
        for thread in threads:
            thread.start()
        return threads

    def _take(self) -> List[Mail]:
        with self.condition:
            while not self.queue:
                if self.outstanding == 0 or self.stop.is_set():
                    return []
                self.condition.wait(0.1)
            if self.stop.is_set():
                return []
            count = min(self.options.per_session, len(self.queue))
            return [self.queue.popleft() for _ in range(count)]

    def _finish(self, mail: Mail) -> None:
        with self.condition:
            self.outstanding -= 1
            self.condition.notify_all()

    def _put_back(self, mails: Sequence[Mail]) -> None:
        with self.condition:
            self.queue.extendleft(reversed(mails))
            self.condition.notify_all()

    def _after_failure(self, mail: Mail) -> None:
        if len(mail.attempts) <= self.options.retries and not self.stop.is_set():
            with self.condition:
                self.queue.append(mail)
                self.condition.notify_all()
        else:
            self._finish(mail)

    def _session_failed(self, mails: Sequence[Mail]) -> None:
        self._put_back(mails)
        with self.condition:
            self.session_failures += 1
            self.consecutive_failures += 1
            if self.consecutive_failures >= MAX_SESSION_FAILURES and not self.gave_up:
                self.gave_up = f"{MAX_SESSION_FAILURES} sessions in a row failed to start"
                self.stop.set()
        time.sleep(0.02)

    def _client(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            self._session(batch)

    def _session(self, batch: List[Mail]) -> None:
        options = self.options
        started = time.monotonic()
        try:
            client = Client(options.host, options.port, options.timeout, self.registry)
        except Dropped:
            self._session_failed(batch)
            return
        pending = collections.deque(batch)
        try:
            if client.reply() != 220 or client.command(f"EHLO {EHLO_NAME}") != 250:
                raise Dropped("no greeting")
            with self.condition:
                self.consecutive_failures = 0
                self.sessions += 1
            while pending and not self.stop.is_set():
                mail = pending[0]
                attempt = Attempt(len(mail.attempts) + 1)
                mail.attempts.append(attempt)
                pending.popleft()
                payload = wire(mail.headers(attempt.number, self.date), mail.body)
                try:
                    client.transaction(mail, attempt, payload)
                finally:
                    if attempt.outcome == ACKED:
                        self._finish(mail)
                    else:
                        self._after_failure(mail)
                if attempt.outcome == REFUSED and client.command("RSET") != 250:
                    raise Dropped("RSET refused")
            if not pending:
                client.command("QUIT")
                with self.condition:
                    self.session_seconds.append(time.monotonic() - started)
            elif pending:
                self._put_back(list(pending))  # stopped early: the mails were never sent
        except Dropped:
            if len(pending) == len(batch):
                self._session_failed(batch)
            else:
                self._put_back(list(pending))
        finally:
            client.close()


# -- the server --------------------------------------------------------------


def children_of(pid: int) -> List[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def workers_of(master: int) -> List[int]:
    """The master's workers.  Not every child is one: the master adopts the
    delivery commands of dead workers (as their subreaper), and those lead a
    process group of their own, while workers stay in the master's."""
    try:
        group = os.getpgid(master)
    except OSError:
        return []
    workers = []
    for pid in children_of(master):
        try:
            if os.getpgid(pid) == group:
                workers.append(pid)
        except OSError:
            continue
    return workers


def is_delivering(worker: int) -> bool:
    """A worker with a child process is running the delivery command."""
    return bool(children_of(worker))


def is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@dataclass
class KillStats:
    kills: int = 0
    while_delivering: int = 0
    missed: int = 0


def killer(master: int, rate: float, target: str, rng: random.Random, stop: threading.Event,
           stats: KillStats) -> None:
    """SIGKILL a random worker of ``master`` ``rate`` times per second.
    ``target`` narrows the choice: any worker, or only one that is running
    its delivery command at that moment."""
    interval = 1.0 / rate
    due = time.monotonic() + interval
    while not stop.wait(max(0.0, due - time.monotonic())):
        due += interval
        victim = None
        delivering = False
        while victim is None and not stop.is_set():
            workers = [pid for pid in workers_of(master) if is_alive(pid)]
            if target == "delivering":
                workers = [pid for pid in workers if is_delivering(pid)]
            if workers:
                victim = rng.choice(workers)
                delivering = is_delivering(victim)
            elif time.monotonic() < due - interval / 2:
                time.sleep(0.005)
            else:
                break
        if victim is None:
            stats.missed += 1
            continue
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            stats.missed += 1
            continue
        stats.kills += 1
        stats.while_delivering += delivering


class StartedServer:
    """An msmtpd master of our own on a free loopback port."""

    def __init__(self, options: argparse.Namespace, workdir: Path, command: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.log = workdir / "msmtpd.log"
        self.stderr_path = workdir / "msmtpd.stderr"
        self.argv = [options.msmtpd, "--interface=127.0.0.1", f"--port={self.port}",
                     f"--max-sessions={options.max_sessions}", f"--command={command}",
                     f"--log={self.log}", f"--timeout={max(1, int(options.timeout))}",
                     f"--command-timeout={max(1, int(options.timeout))}"]
        env = None
        self.queue: Optional[Path] = None
        if options.queue:
            self.queue = workdir / "queue"
            self.argv += [f"--queue={self.queue}", f"--queue-workers={options.queue_workers}"]
            env = dict(os.environ, MSMTPD_QUEUE_RETRY_SECONDS=str(options.queue_retry))
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=stderr, env=env)

    def queued(self) -> Tuple[int, int]:
        """Mails in the queue and in its failed/."""
        if self.queue is None:
            return 0, 0
        def count(where: Path) -> int:
            return sum(1 for p in where.glob("*.env")) if where.is_dir() else 0
        return count(self.queue), count(self.queue / "failed")

    def wait_ready(self, timeout: float) -> None:
        """Until a worker greets (and the master has its whole pool)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"msmtpd exited with status {self.process.returncode}: "
                                   + self.stderr_path.read_text(errors="replace").strip())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    if sock.recv(512).startswith(b"220"):
                        sock.sendall(b"QUIT\r\n")
                        break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError(f"msmtpd did not greet on port {self.port} within {timeout:g} s")
        while len(workers_of(self.process.pid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None


# -- the store ---------------------------------------------------------------


def store_files(maildir: Path) -> Dict[str, Path]:
    found: Dict[str, Path] = {}
    for sub in ("new", "cur"):
        try:
            with os.scandir(maildir / sub) as entries:
                for entry in entries:
                    if entry.is_file():
                        found[f"{sub}/{entry.name}"] = Path(entry.path)
        except FileNotFoundError:
            pass
    return found


def store_busy(maildir: Path) -> bool:
    """Does a delivery command still write to ``maildir``?  (A command whose
    worker was killed runs on unsupervised; wait for it before counting.)"""
    needle = os.fsencode(str(maildir))
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in command and b"--command" not in command:  # not msmtpd itself
            return True
    return False


def settle(maildir: Path, until: float) -> Tuple[bool, int]:
    """Wait until no delivery command writes to the store; returns whether it
    settled and how many times a straggler was seen still running."""
    seen = 0
    quiet_since = None
    while time.monotonic() < until:
        if store_busy(maildir):
            seen += 1
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 0.5:
            return True, seen
        time.sleep(0.05)
    return False, seen


HEADER = re.compile(rb"^([A-Za-z-]+):[ \t]*(.*?)\r?$", re.MULTILINE)


@dataclass
class Verdict:
    files: int = 0
    lost: List[str] = field(default_factory=list)  # attempt acked, nothing arrived
    duplicated: List[str] = field(default_factory=list)  # one attempt arrived twice or more
    window: List[str] = field(default_factory=list)  # no reply came, yet arrived (RFC 1047)
    window_repeats: List[str] = field(default_factory=list)  # Message-IDs stored twice thereby
    refused_delivered: List[str] = field(default_factory=list)  # answered 4xx/5xx, yet arrived
    premature: List[str] = field(default_factory=list)  # final dot never sent, yet arrived
    unexpected: List[str] = field(default_factory=list)  # arrived, never sent
    corrupt: List[str] = field(default_factory=list)  # arrived, but not as sent
    delivered_once: int = 0  # acked attempts stored exactly once

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.refused_delivered or self.premature
                    or self.unexpected or self.corrupt)


def cut_before_headers(data: bytes) -> bool:
    """Is this what a store writes when the mail ended before the sender's
    headers: the envelope lines and, at most, the start of msmtpd's own
    ``Received:`` header?"""
    lines = data.split(b"\n")
    while lines and lines[0].startswith((b"Return-Path:", b"Delivered-To:")):
        lines.pop(0)
    rest = b"\n".join(lines)
    return not rest or rest.startswith(b"Received:") or b"Received:".startswith(rest)


def verify(mails: List[Mail], files: Dict[str, Path], date: str) -> Verdict:
    verdict = Verdict(files=len(files))
    by_id = {mail.message_id: mail for mail in mails}
    by_recipient = {mail.recipient.encode(): mail for mail in mails}
    copies: Dict[Tuple[int, int], int] = collections.Counter()
    for name, path in sorted(files.items()):
        try:
            data = path.read_bytes()
        except OSError:
            verdict.unexpected.append(f"{name} (unreadable)")
            continue
        head, blank, body = data.partition(b"\n\n")
        fields: Dict[bytes, List[bytes]] = collections.defaultdict(list)
        for match in HEADER.finditer(head):
            fields[match.group(1).lower()].append(match.group(2))
        ids = fields.get(b"message-id", [])
        numbers = fields.get(b"x-load-attempt", [])
        recipients = fields.get(b"delivered-to")
        mail = by_id.get(ids[0].decode("ascii", "replace")) if len(ids) == 1 else None
        number = int(numbers[0]) if len(numbers) == 1 and numbers[0].isdigit() else 0
        if mail is None and not ids and recipients is not None and len(recipients) == 1 \
                and cut_before_headers(data):
            # Cut before its own headers: the envelope still tells whose it is.
            mail = by_recipient.get(recipients[0])
        if mail is None:
            verdict.unexpected.append(f"{name} ({b', '.join(ids).decode('ascii', 'replace') or 'no id'})")
            continue
        if not 1 <= number <= len(mail.attempts):
            verdict.corrupt.append(f"{mail.message_id} attempt unknown ({name}, {len(data)} bytes, "
                                   f"{len(body)} of {len(mail.body)} body bytes)")
            continue
        copies[mail.index, number] += 1
        intact = (blank and body == mail.body and (head + b"\n").endswith(mail.headers(number, date))
                  and (recipients is None or recipients == [mail.recipient.encode()]))
        if not intact:
            verdict.corrupt.append(f"{mail.message_id} attempt {number} ({name}, {len(data)} bytes, "
                                   f"{len(body)} of {len(mail.body)} body bytes)")
    for mail in mails:
        stored = 0
        for attempt in mail.attempts:
            count = copies.get((mail.index, attempt.number), 0)
            stored += count
            label = f"{mail.message_id} attempt {attempt.number}"
            if count > 1:
                verdict.duplicated.append(f"{label} ({count} copies)")
            if attempt.outcome == ACKED:
                if count == 0:
                    verdict.lost.append(label)
                elif count == 1:
                    verdict.delivered_once += 1
            elif count and attempt.outcome == UNKNOWN:
                verdict.window.append(label)
            elif count and attempt.outcome == REFUSED:
                verdict.refused_delivered.append(f"{label} (answered {attempt.code})")
            elif count:
                verdict.premature.append(label)
        if stored > 1 and mail.acked and not any(
                copies.get((mail.index, a.number), 0) > 1 for a in mail.attempts):
            verdict.window_repeats.append(mail.message_id)
    return verdict


# -- reporting ---------------------------------------------------------------


def percentiles(values: Sequence[float]) -> Dict[str, float]:
    """Nearest-rank percentiles, in milliseconds."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        index = max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 100)) - 1))
        return round(ordered[index] * 1000, 2)

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": round(ordered[-1] * 1000, 2)}


def describe_latency(name: str, values: Dict[str, float]) -> str:
    if not values:
        return f"  latency per {name}: no data"
    return (f"  latency per {name}: p50 {values['p50']:.1f} ms, p90 {values['p90']:.1f} ms, "
            f"p99 {values['p99']:.1f} ms, max {values['max']:.1f} ms")


def summary(report: Dict[str, Any]) -> str:
    counts = report["mails"]
    verdict = report["verdict"]
    lines = [f"msmtpd load: {counts['total']} mails over {report['concurrency']} concurrent sessions, "
             f"{report['per_session']} per session, {report['retries']} retries"]
    if report["server"]["started"]:
        lines.append(f"  server: msmtpd --max-sessions={report['server']['max_sessions']}, "
                     f"store: {report['store']}" + (", --queue" if "queue" in report else ""))
    lines.append(f"  {counts['acknowledged']} answered 250, {counts['not_acknowledged']} not "
                 f"acknowledged, {counts['never_sent']} never sent; {counts['attempts']} attempts "
                 f"in {report['sessions']} sessions ({report['session_failures']} failed to start)")
    lines.append(f"  throughput: {report['throughput']:.1f} mails/s "
                 f"({counts['acknowledged']} in {report['seconds']:.2f} s)")
    lines.append(describe_latency("mail (MAIL FROM to the reply after the dot)",
                                  report["latency_ms"]["mail"]))
    lines.append(describe_latency("session (connect to QUIT)", report["latency_ms"]["session"]))
    kills = report["kills"]
    if kills["rate"]:
        lines.append(f"  workers killed: {kills['done']} ({kills['while_delivering']} while delivering, "
                     f"{kills['missed']} missed)")
    queue = report.get("queue")
    if queue:
        lines.append(f"  queue: emptied in {queue['drain_seconds']:.2f} s after the load, "
                     f"{queue['attempts']} delivery attempts, {queue['left']} left, "
                     f"{queue['failed']} failed")
    lines.append(f"  store: {verdict['files']} files; {verdict['delivered_once']} acknowledged mails "
                 f"stored exactly once")
    for key, text in (("lost", "lost (answered 250, not stored)"),
                      ("duplicated", "duplicated (one transaction stored twice)"),
                      ("refused_delivered", "stored although answered 4xx/5xx"),
                      ("premature", "stored although the final dot was never sent"),
                      ("unexpected", "stored but never sent"),
                      ("corrupt", "stored differently from what was sent")):
        lines.append(f"  {text}: {verdict[key]}")
    lines.append(f"  RFC 1047 window: {verdict['window']} attempts stored without a 250 reaching the "
                 f"client ({verdict['window_repeats']} mails thereby stored twice after a retry)")
    if report["stragglers"]:
        lines.append(f"  delivery commands still running after the load: seen {report['stragglers']} times")
    for problem in report["problems"]:
        lines.append(f"    {problem}")
    if report["stopped"]:
        lines.append(f"  stopped early: {report['stopped']}")
    if report.get("kept"):
        lines.append(f"  kept: {report['kept']}")
    lines.append(f"  result: {'OK' if report['ok'] else 'FAILED'}")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------


def parse(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="load.py", description="Send mails to msmtpd concurrently and check that every mail "
        "answered 250 was delivered exactly once.")
    parser.add_argument("--mails", "-n", type=int, default=1000, help="mails to send (default 1000)")
    parser.add_argument("--concurrency", "-c", type=int, default=16,
                        help="concurrent SMTP sessions (default 16)")
    parser.add_argument("--per-session", "-m", type=int, default=1,
                        help="mails per session (default 1)")
    parser.add_argument("--size", type=int, default=1024,
                        help="approximate body size in bytes (default 1024)")
    parser.add_argument("--retries", type=int, default=0,
                        help="send a mail not answered 250 again, with the same Message-ID, "
                        "up to this many times (default 0)")
    parser.add_argument("--host", default="127.0.0.1", help="msmtpd to load (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=25, help="its port (default 25)")
    parser.add_argument("--maildir", type=Path,
                        help="the Maildir a running msmtpd delivers to (needed without --start)")
    parser.add_argument("--start", action="store_true",
                        help="start an msmtpd of our own on a free port, delivering into a temporary Maildir")
    parser.add_argument("--msmtpd", default=str(BIN / "msmtpd"),
                        help="the msmtpd to start (default: the console script next to this Python)")
    parser.add_argument("--max-sessions", type=int, default=16, help="--max-sessions of the started msmtpd")
    parser.add_argument("--store-with", choices=("self", "maildir"), default="self",
                        help="delivery command of the started msmtpd: this script's --store "
                        "(default, fast start) or msmtpd-maildir")
    parser.add_argument("--kill-workers", type=float, default=0.0, metavar="RATE",
                        help="SIGKILL a random worker of the started msmtpd RATE times per second")
    parser.add_argument("--kill-target", choices=("any", "delivering"), default="any",
                        help="which workers --kill-workers picks from (default any)")
    parser.add_argument("--seed", type=int, help="seed for choosing the workers to kill")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="timeout of every socket operation, in seconds (default 30)")
    parser.add_argument("--deadline", type=float, default=300.0,
                        help="stop everything after this many seconds (default 300)")
    parser.add_argument("--queue", action="store_true",
                        help="the started msmtpd stores and forwards (--queue); wait until its "
                        "queue is empty before counting")
    parser.add_argument("--fail-rate", type=float, default=0.5,
                        help="with --queue: share of delivery attempts deferred with 75 (default 0.5)")
    parser.add_argument("--queue-workers", type=int, default=4,
                        help="with --queue: --queue-workers of the started msmtpd (default 4)")
    parser.add_argument("--queue-retry", type=float, default=0.1,
                        help="with --queue: first retry delay in seconds (default 0.1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON report on stdout (the summary goes to stderr)")
    options = parser.parse_args(argv)
    if options.mails < 1 or options.concurrency < 1 or options.per_session < 1 or options.retries < 0:
        parser.error("--mails, --concurrency and --per-session must be positive, --retries not negative")
    if options.size < 0 or options.timeout <= 0 or options.deadline <= 0 or options.kill_workers < 0:
        parser.error("--size, --timeout, --deadline and --kill-workers must be positive")
    if not options.start and options.maildir is None:
        parser.error("give --start, or --maildir with the store of the running msmtpd")
    if options.queue and (not options.start or options.store_with != "self"):
        parser.error("--queue needs --start with the tool's own store")
    if not 0 <= options.fail_rate < 1 or options.queue_workers < 1 or options.queue_retry <= 0:
        parser.error("--fail-rate must be from 0 to under 1, --queue-workers and --queue-retry positive")
    if options.kill_workers and not options.start:
        parser.error("--kill-workers needs --start (it kills workers of the msmtpd it started)")
    if options.start:
        if not os.access(options.msmtpd, os.X_OK):
            parser.error(f"{options.msmtpd} is not an executable msmtpd")
        for path in (options.msmtpd, sys.executable, str(SCRIPT), str(BIN / "msmtpd-maildir")):
            if not SAFE_PATH.match(path):
                parser.error(f"{path}: a path with blanks or shell characters cannot go into --command")
    return options


def delivery_command(options: argparse.Namespace, maildir: Path) -> str:
    if options.store_with == "maildir":
        return f"{BIN / 'msmtpd-maildir'} {maildir} -f %F --"
    rate = f" --fail-rate {options.fail_rate:g}" if options.queue else ""
    return f"{sys.executable} -I -S {SCRIPT} --store {maildir}{rate} -f %F --"


def run(options: argparse.Namespace) -> Dict[str, Any]:
    begun = time.monotonic()
    deadline = begun + options.deadline
    run_id = f"{os.getpid()}.{random.getrandbits(32):08x}"
    workdir: Optional[Path] = None
    server: Optional[StartedServer] = None
    stop = threading.Event()
    kill_stats = KillStats()
    report: Dict[str, Any] = {"stopped": ""}
    try:
        if options.start:
            workdir = Path(tempfile.mkdtemp(prefix="msmtpd-load-"))
            maildir = workdir / "maildir"
            for sub in ("tmp", "new", "cur"):
                (maildir / sub).mkdir(parents=True)
            server = StartedServer(options, workdir, delivery_command(options, maildir))
            server.wait_ready(min(30.0, max(1.0, deadline - time.monotonic())))
            options.port = server.port
            options.host = "127.0.0.1"
        else:
            maildir = options.maildir.expanduser().resolve()
        before = set(store_files(maildir))
        mails = [Mail(index, f"<load.{run_id}.{index}@msmtpd.test>", f"mail{index}@example.test",
                      make_body(index, run_id, options.size)) for index in range(options.mails)]
        load = Load(options, mails, stop)
        killer_thread = None
        if options.kill_workers and server is not None:
            killer_thread = threading.Thread(
                target=killer, name="killer", daemon=True,
                args=(server.process.pid, options.kill_workers, options.kill_target,
                      random.Random(options.seed), stop, kill_stats))
        started = time.monotonic()
        threads = load.run()
        if killer_thread is not None:
            killer_thread.start()
        while any(thread.is_alive() for thread in threads):
            if time.monotonic() > deadline:
                report["stopped"] = f"deadline of {options.deadline:g} s reached"
                break
            if server is not None and server.process.poll() is not None:
                report["stopped"] = f"msmtpd exited with status {server.process.returncode}"
                break
            if load.gave_up:
                report["stopped"] = load.gave_up
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        stop.set()
        load.registry.cut_all()
        for thread in threads:
            thread.join(max(0.1, min(options.timeout, deadline + 5 - time.monotonic())))
        if killer_thread is not None:
            killer_thread.join(5)
        if server is not None and options.queue:
            report["queue"] = drain(server, deadline)
            if report["queue"]["left"]:
                report["stopped"] = report["stopped"] or "the queue did not empty before the deadline"
        report["server"] = {"started": server is not None, "max_sessions": options.max_sessions}
        if server is not None:
            report["server"]["workers_at_end"] = len(workers_of(server.process.pid))
            report["server"]["exit_status"] = server.stop(max(5.0, deadline - time.monotonic()))
        settled, stragglers = settle(maildir, max(time.monotonic() + 2, deadline))
        if not settled:
            report["stopped"] = report["stopped"] or "the store did not settle before the deadline"
        files = {name: path for name, path in store_files(maildir).items() if name not in before}
        verdict = verify(mails, files, load.date)
        acked = sum(mail.acked for mail in mails)
        never = sum(not mail.attempts for mail in mails)
        problems = [f"{kind}: {item}" for kind in ("lost", "duplicated", "refused_delivered", "premature",
                                                   "unexpected", "corrupt")
                    for item in getattr(verdict, kind)[:10]]
        report.update({
            "run": run_id,
            "concurrency": options.concurrency,
            "per_session": options.per_session,
            "retries": options.retries,
            "size": options.size,
            "store": options.store_with if server is not None else str(maildir),
            "mails": {"total": len(mails), "acknowledged": acked,
                      "not_acknowledged": len(mails) - acked - never, "never_sent": never,
                      "attempts": sum(len(m.attempts) for m in mails)},
            "sessions": load.sessions,
            "session_failures": load.session_failures,
            "seconds": round(elapsed, 3),
            "throughput": round(acked / elapsed, 2) if elapsed > 0 else 0.0,
            "latency_ms": {
                "mail": percentiles([a.seconds for m in mails for a in m.attempts if a.outcome == ACKED]),
                "session": percentiles(load.session_seconds),
            },
            "kills": {"rate": options.kill_workers, "target": options.kill_target, "done": kill_stats.kills,
                      "while_delivering": kill_stats.while_delivering, "missed": kill_stats.missed},
            "stragglers": stragglers,
            "verdict": {
                "files": verdict.files, "delivered_once": verdict.delivered_once,
                "lost": len(verdict.lost), "duplicated": len(verdict.duplicated),
                "refused_delivered": len(verdict.refused_delivered), "premature": len(verdict.premature),
                "unexpected": len(verdict.unexpected), "corrupt": len(verdict.corrupt),
                "window": len(verdict.window), "window_repeats": len(verdict.window_repeats),
            },
            "window": verdict.window[:50],
            "problems": problems,
            "ok": verdict.ok,
        })
        return report
    finally:
        stop.set()
        if server is not None:
            server.stop()
        if workdir is not None:
            if options.keep:
                report["kept"] = str(workdir)
            else:
                shutil.rmtree(workdir, ignore_errors=True)


def drain(server: StartedServer, deadline: float) -> Dict[str, Any]:
    """Wait for the queue runner to deliver everything queued."""
    began = time.monotonic()
    left, failed = server.queued()
    while left and time.monotonic() < deadline and server.process.poll() is None:
        time.sleep(0.1)
        left, failed = server.queued()
    attempts = 0
    try:
        attempts = server.log.read_text(errors="replace").count(": attempt ")
    except OSError:
        pass
    return {"left": left, "failed": failed, "drain_seconds": round(time.monotonic() - began, 3),
            "attempts": attempts}


def main(argv: Optional[List[str]] = None) -> int:
    options = parse(argv)

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the clean-up

    signal.signal(signal.SIGTERM, terminate)
    try:
        report = run(options)
    except RuntimeError as exc:
        sys.stderr.write(f"load.py: {exc}\n")
        return 2
    text = summary(report)
    if options.json:
        sys.stderr.write(text + "\n")
        print(json.dumps(report, indent=2))
    else:
        print(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
