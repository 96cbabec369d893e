"""``msmtpd --inetd`` as a real process: scripted SMTP conversations on a
pipe, on a socketpair and on an accepted TCP connection, the exit status,
the idle timeout, the log file, start-up errors and the start-up cost."""

from __future__ import annotations

import base64
import datetime
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import pytest

from tests import helpers
from tests.support.inetd import TinyInetd, finish

HOST = socket.gethostname()
LOG_LINE = re.compile(
    r"(?P<stamp>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) msmtpd\[(?P<pid>\d+)\] "
    r"(?P<level>info|error): (?P<message>.+)")
RFC5322_DATE = rb"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}"
WAIT = 15.0  # upper bound for any single wait on a process or socket


def lines(*commands: str) -> bytes:
    """SMTP command lines (or DATA content lines), each ended by CRLF."""
    return b"".join(c.encode("utf-8") + b"\r\n" for c in commands)


def reply_codes(output: bytes) -> List[int]:
    """The code of every complete reply in ``output``; multi-line replies
    count once.  Every line must be CRLF-terminated and well formed."""
    assert output.endswith(b"\r\n"), output
    codes = []
    for line in output[:-2].split(b"\r\n"):
        assert re.fullmatch(rb"[2-5]\d\d[ -].*", line), line
        if line[3:4] == b" ":
            codes.append(int(line[:3]))
    return codes


def transaction(sender: str = "alice@example.org", recipients: Sequence[str] = ("bob@example.org",),
                body: Sequence[str] = ("Subject: hello", "", "hi")) -> bytes:
    """MAIL, RCPT..., DATA, the (already dot-stuffed) content and the final dot."""
    return lines(f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in recipients), "DATA",
                 *body, ".")


def maildir_args(directory: Path) -> List[str]:
    return [f"--command={helpers.maildir_command(directory)}"]


def log_lines(path: Path) -> List[re.Match[str]]:
    text = path.read_text(encoding="utf-8")
    matches = []
    for line in text.splitlines():
        match = LOG_LINE.fullmatch(line)
        assert match, f"log line in the wrong format: {line!r}"
        matches.append(match)
    return matches


def stored_content(mail: bytes) -> bytes:
    """What msmtpd piped to msmtpd-maildir: the mail without the
    Return-Path and Delivered-To lines that msmtpd-maildir added."""
    return re.sub(rb"\A(?:Return-Path: [^\n]*\n)?(?:Delivered-To: [^\n]*\n)*", b"", mail)


def _msmtpd_children() -> List[int]:
    """Live msmtpd processes whose parent is this test process (any thread)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = re.search(r"^PPid:\s+(\d+)$", status, re.M)
        if ppid and int(ppid.group(1)) == os.getpid() and b"msmtpd" in command:
            found.append(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def _no_stray_children() -> Iterator[None]:
    """Every msmtpd a test starts must be gone when the test ends."""
    yield
    assert _msmtpd_children() == []


# -- a whole transaction ---------------------------------------------------


def test_transaction_is_stored_exactly_and_quit_exits_0(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    conversation = (
        lines("EHLO client.example")
        + transaction(recipients=("bob@example.org", "carol@example.org"),
                      body=("Subject: dots", "", "..leading dot", "..", "...", "middle",
                            "bare LF line\nnext", "last"))
        + lines("QUIT"))
    result = helpers.run_inetd(maildir_args(maildir), conversation)
    assert result.returncode == 0, result.stderr
    assert reply_codes(result.stdout) == [220, 250, 250, 250, 250, 354, 250, 221]
    assert result.stdout.startswith(f"220 {HOST} ESMTP msmtpd\r\n".encode())
    [mail] = helpers.delivered(maildir)
    expected = (
        rb"Return-Path: <alice@example\.org>\n"
        rb"Delivered-To: bob@example\.org\n"
        rb"Delivered-To: carol@example\.org\n"
        rb"Received: from client\.example \(\[local\]\)\n"
        rb"\tby " + re.escape(HOST.encode()) + rb" \(msmtpd\) with ESMTP;\n"
        rb"\t" + RFC5322_DATE + rb"\n"
        + re.escape(b"Subject: dots\n\n.leading dot\n.\n..\nmiddle\nbare LF line\nnext\nlast\n"))
    assert re.fullmatch(expected, mail), mail
    assert b"\r" not in mail


def test_input_ending_without_quit_exits_1_but_keeps_the_finished_mail(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    result = helpers.run_inetd(maildir_args(maildir), lines("HELO client.example") + transaction())
    assert result.returncode == 1
    assert reply_codes(result.stdout) == [220, 250, 250, 250, 354, 250]
    [mail] = helpers.delivered(maildir)
    assert b"with SMTP;" in mail  # HELO, not EHLO
    assert mail.endswith(b"Subject: hello\n\nhi\n")


@pytest.mark.parametrize("cut_after", [
    b"partial body\r\n",
    b"partial body\r\n.",
    b"partial body\r\n.\r",
    b"smuggled end\n.\n",
    b"smuggled end\r\n.\n",
    b"smuggled end\n.\r\n",
], ids=["line", "dot", "dot-cr", "lf-dot-lf", "crlf-dot-lf", "lf-dot-crlf"])
def test_client_gone_during_data_delivers_nothing(tmp_path: Path, cut_after: bytes) -> None:
    maildir = tmp_path / "Maildir"
    conversation = (lines("EHLO client.example", "MAIL FROM:<alice@example.org>",
                          "RCPT TO:<bob@example.org>", "DATA", "Subject: cut", "")
                    + cut_after)
    result = helpers.run_inetd(maildir_args(maildir), conversation)
    assert result.returncode == 1
    assert reply_codes(result.stdout) == [220, 250, 250, 250, 354]
    assert helpers.delivered(maildir) == []


def test_pipelined_batch_is_answered_in_order(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    conversation = (
        lines("EHLO client.example")
        + transaction(body=("Subject: first", "", "one"))
        + transaction(sender="", recipients=("bob@example.org", "carol@example.org"),
                      body=("Subject: second", "", "two"))
        + lines("RCPT TO:<dave@example.org>", "RSET", "NOOP", "VRFY bob", "EXPN staff", "HELP",
                "FROB", "MAIL FROM:<eve@example.org> FROB=1", "MAIL FROM:<alice@example.org>",
                "MAIL FROM:<alice@example.org>", "QUIT"))
    result = helpers.run_inetd(maildir_args(maildir), conversation)
    assert result.returncode == 0, result.stderr
    assert reply_codes(result.stdout) == [
        220, 250,
        250, 250, 354, 250,
        250, 250, 250, 354, 250,
        503, 250, 250, 252, 502, 214, 500, 555, 250, 503, 221,
    ]
    first, second = helpers.delivered(maildir)
    assert first.endswith(b"Subject: first\n\none\n")
    assert second.startswith(b"Return-Path: <>\nDelivered-To: bob@example.org\n"
                             b"Delivered-To: carol@example.org\nReceived: ")
    assert second.endswith(b"Subject: second\n\ntwo\n")


# -- the idle timeout ------------------------------------------------------


@pytest.mark.parametrize("before_silence", [
    lines("EHLO client.example"),
    lines("EHLO client.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA",
          "Subject: never finished", "", "half a"),
], ids=["between-commands", "inside-data"])
def test_idle_client_gets_421_and_exit_1(tmp_path: Path, before_silence: bytes) -> None:
    maildir = tmp_path / "Maildir"
    process = subprocess.Popen(
        [helpers.program("msmtpd"), "--inetd", "--timeout=1", *maildir_args(maildir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    try:
        started = time.monotonic()
        process.stdin.write(before_silence)
        process.stdin.flush()
        # stdin stays open: msmtpd must give up on its own.
        status = process.wait(timeout=WAIT)
        elapsed = time.monotonic() - started
        output = process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert status == 1
    assert 0.9 <= elapsed < 5, elapsed
    assert reply_codes(output)[-1] == 421
    assert output.endswith(f"421 4.4.2 {HOST} Idle too long, closing connection\r\n".encode())
    assert helpers.delivered(maildir) == []


# -- the delivery command's output -----------------------------------------


def test_command_stdout_never_reaches_the_client() -> None:
    conversation = lines("EHLO client.example") + transaction() + lines("QUIT")
    # The recipients are appended to the command: the last echo prints them.
    result = helpers.run_inetd(["--command=echo LEAK; cat >/dev/null; echo LEAK for"], conversation)
    assert result.returncode == 0, result.stderr
    assert b"LEAK" not in result.stdout
    assert b"LEAK" not in result.stderr
    assert reply_codes(result.stdout) == [220, 250, 250, 250, 354, 250, 221]


# -- standard input being a socket ------------------------------------------


class Talk:
    """The client side of an SMTP conversation on a socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(WAIT)
        self.sock = sock
        self.stream = sock.makefile("rb")

    def reply(self) -> Tuple[int, bytes]:
        text = b""
        while True:
            line = self.stream.readline()
            assert line.endswith(b"\r\n"), f"connection ended inside a reply: {text + line!r}"
            text += line
            if line[3:4] == b" ":
                return int(line[:3]), text

    def command(self, data: bytes) -> int:
        self.sock.sendall(data)
        return self.reply()[0]

    def at_eof(self) -> bool:
        return self.stream.read() == b""

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def converse(sock: socket.socket) -> None:
    """One mail, step by step, waiting for each reply."""
    talk = Talk(sock)
    try:
        assert talk.reply()[0] == 220
        assert talk.command(lines("EHLO client.example")) == 250
        assert talk.command(lines("MAIL FROM:<alice@example.org>")) == 250
        assert talk.command(lines("RCPT TO:<bob@example.org>")) == 250
        assert talk.command(lines("DATA")) == 354
        assert talk.command(lines("Subject: over a socket", "", "hello", ".")) == 250
        assert talk.command(lines("QUIT")) == 221
        assert talk.at_eof()
    finally:
        talk.close()




def test_stdin_socketpair_peer_is_its_creators_uid(tmp_path: Path) -> None:
    """A Unix socket on standard input: the kernel names the caller (the
    process that made the pair), never an address (issue 19)."""
    maildir = tmp_path / "Maildir"
    ours, theirs = socket.socketpair()
    with ours:
        try:
            process = subprocess.Popen([helpers.program("msmtpd"), "--inetd", *maildir_args(maildir)],
                                       stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=subprocess.PIPE)
        finally:
            theirs.close()
        try:
            converse(ours)
        finally:
            status, err = finish(process)
    assert status == 0, err
    [mail] = helpers.delivered(maildir)
    assert f"\nReceived: from client.example (uid {os.getuid()})\n".encode() in mail, mail




def test_stdin_tcp_connection_names_the_peer(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    log = tmp_path / "msmtpd.log"
    inetd = TinyInetd([*maildir_args(maildir), f"--log={log}"])
    try:
        with socket.create_connection(("127.0.0.1", inetd.port), timeout=WAIT) as client:
            converse(client)
    finally:
        results = inetd.close()
    assert [status for status, _ in results] == [0], results
    [mail] = helpers.delivered(maildir)
    assert re.search(rb"\nReceived: from client\.example \(\[127\.0\.0\.1\]\)\n", mail), mail
    messages = [m["message"] for m in log_lines(log)]
    assert "session from 127.0.0.1" in messages
    assert any(m.startswith("127.0.0.1: mail from <alice@example.org>") for m in messages), messages


# -- logging ---------------------------------------------------------------


def test_log_file_lines(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    log = tmp_path / "msmtpd.log"
    conversation = (lines("EHLO client.example")
                    + transaction(recipients=("bob@example.org", "carol@example.org"))
                    + lines("QUIT"))
    before = datetime.datetime.now().replace(microsecond=0)
    process, out, err = helpers.run_inetd_process([f"--log={log}", *maildir_args(maildir)],
                                                  conversation, timeout=WAIT)
    after = datetime.datetime.now()
    assert process.returncode == 0, err
    assert reply_codes(out)[-2:] == [250, 221]
    entries = log_lines(log)
    assert entries, "nothing was logged"
    for entry in entries:
        assert int(entry["pid"]) == process.pid
        stamp = datetime.datetime.strptime(entry["stamp"], "%Y-%m-%d %H:%M:%S")
        assert before <= stamp <= after
    messages = [(e["level"], e["message"]) for e in entries]
    assert ("info", "session from unknown peer") in messages
    [mail] = helpers.delivered(maildir)
    delivery = [m for level, m in messages if "mail from" in m]
    assert len(delivery) == 1, messages
    logged = re.fullmatch(
        r"client: mail from <alice@example\.org> to <bob@example\.org>, <carol@example\.org>, "
        r"(\d+) octets: delivered, exit status 0 in \d+\.\d{3} s(; stderr: .*)?", delivery[0])
    assert logged, delivery[0]
    # The size is the message as received, with or without msmtpd's trace header.
    piped = stored_content(mail)
    assert int(logged[1]) in (len(piped), len(piped.split(b"\n", 3)[3]))


def test_log_file_records_a_failed_delivery_as_error(tmp_path: Path) -> None:
    log = tmp_path / "msmtpd.log"
    conversation = lines("EHLO client.example") + transaction() + lines("QUIT")
    result = helpers.run_inetd(
        [f"--log={log}", "--command=cat >/dev/null; echo disk on fire >&2; exit 1"], conversation)
    assert result.returncode == 0, result.stderr
    assert reply_codes(result.stdout)[-2:] == [554, 221]
    assert b"554 5.3.0 Delivery failed: command exit status 1\r\n" in result.stdout
    errors = [e["message"] for e in log_lines(log) if e["level"] == "error"]
    assert len(errors) == 1, errors
    assert re.fullmatch(r"client: mail from <alice@example\.org> to <bob@example\.org>, \d+ octets: "
                        r"554 not delivered, command exit status 1 in \d+\.\d{3} s; "
                        r"stderr: disk on fire", errors[0])


def test_log_never_shows_auth_payload_or_password(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    log = tmp_path / "msmtpd.log"
    wrong = base64.b64encode(b"\0mailuser\0wrongpw").decode()
    right = base64.b64encode(b"\0mailuser\0secretpw").decode()
    conversation = (lines("EHLO client.example", f"AUTH PLAIN {wrong}", f"AUTH PLAIN {right}")
                    + transaction() + lines("QUIT"))
    result = helpers.run_inetd(
        [f"--log={log}", "--auth=mailuser,echo secretpw", *maildir_args(maildir)], conversation)
    assert result.returncode == 0, result.stderr
    assert reply_codes(result.stdout) == [220, 250, 535, 235, 250, 250, 354, 250, 221]
    [mail] = helpers.delivered(maildir)
    assert b"with ESMTPA;" in mail
    text = log.read_text(encoding="utf-8")
    assert "authenticated as mailuser" in text
    for secret in ("secretpw", "wrongpw", right, wrong,
                   base64.b64encode(b"secretpw").decode(), base64.b64encode(b"wrongpw").decode()):
        assert secret not in text
        assert secret.encode() not in result.stderr


def test_log_to_stderr(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    conversation = lines("EHLO client.example") + transaction() + lines("QUIT")
    result = helpers.run_inetd(["--log=-", *maildir_args(maildir)], conversation)
    assert result.returncode == 0, result.stderr
    reply_codes(result.stdout)  # the SMTP stream holds replies only
    assert b"msmtpd[" not in result.stdout
    stderr_lines = result.stderr.decode().splitlines()
    matches = [LOG_LINE.fullmatch(line) for line in stderr_lines]
    assert all(matches), stderr_lines
    messages = [m["message"] for m in matches if m]
    assert "session from unknown peer" in messages
    assert any("delivered, exit status 0" in m for m in messages), messages
    assert not (tmp_path / "-").exists()


# -- start-up errors -------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--log={tmp}/no/such/dir/msmtpd.log"],
    ["--command= "],
    ["--command="],
    ["--timeout=soon"],
    ["--auth=mailuser,exit 1"],
    ["--no-such-option"],
], ids=["log-in-missing-dir", "blank-command", "empty-command", "bad-timeout", "failing-passwordeval",
        "unknown-option"])
def test_start_up_error_exits_3_with_one_line(tmp_path: Path, args: List[str]) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = helpers.run_inetd(args, lines("EHLO client.example", "QUIT"))
    assert result.returncode == 3
    assert result.stdout == b""  # not even a greeting
    err = result.stderr.decode()
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("msmtpd: ")
    assert not (tmp_path / "no").exists()


# -- start-up cost -----------------------------------------------------------


def _timed_run(argv: Sequence[str], stdin: bytes) -> Tuple[float, subprocess.CompletedProcess[bytes]]:
    started = time.perf_counter()
    result = subprocess.run(argv, input=stdin, capture_output=True, timeout=WAIT)
    return time.perf_counter() - started, result


def test_start_up_cost_of_an_inetd_session() -> None:
    """Reports the cost; the benchmark with a threshold lives in scripts/.
    The two kinds of run alternate, so background load hits both alike."""
    conversation = lines("EHLO client.example") + transaction() + lines("QUIT")
    # `true` as the command: the cheapest delivery, so msmtpd's own cost shows.
    session_argv = [helpers.program("msmtpd"), "--inetd", "--command=true"]
    sessions, bare = [], []
    for _ in range(10):
        seconds, result = _timed_run(session_argv, conversation)
        assert result.returncode == 0, result.stderr
        assert reply_codes(result.stdout) == [220, 250, 250, 250, 354, 250, 221]
        sessions.append(seconds)
        seconds, result = _timed_run([sys.executable, "-c", "pass"], b"")
        assert result.returncode == 0, result.stderr
        bare.append(seconds)
    session, python = statistics.median(sessions), statistics.median(bare)
    print(f"\nmedian of 10: one-mail --inetd session {session * 1000:.1f} ms, "
          f"python -c pass {python * 1000:.1f} ms, ratio {session / python:.2f}")


def test_sigterm_during_delivery_kills_the_command_and_answers_451(tmp_path: Path) -> None:
    """xinetd or systemd stopping sends SIGTERM: the running command is
    killed (nothing is delivered behind the client's back), the client gets
    451 and then 421, and the process exits 1."""
    late = tmp_path / "late.eml"
    marker = f"msmtpd-sigterm-{os.getpid()}"
    command = f"sleep 3; cat > {late}; : {marker}"
    process = subprocess.Popen([helpers.program("msmtpd"), "--inetd", "--timeout=10", f"--command={command}"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def running() -> bool:  # the delivery command, not msmtpd, whose arguments hold the marker too
        return subprocess.run(["pgrep", "-f", f"^/bin/sh -c sleep 3.*{marker}"],
                              capture_output=True).returncode == 0

    try:
        assert process.stdin is not None
        process.stdin.write(lines("EHLO client.test") + transaction())
        process.stdin.flush()
        assert helpers.wait_until(running)
        process.terminate()
        out, _ = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1
    assert reply_codes(out)[-2:] == [451, 421]
    assert b"delivery interrupted" in out
    time.sleep(3.5)
    assert not late.exists()
    assert not running()
