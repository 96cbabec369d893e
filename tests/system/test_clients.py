"""Real clients against a real msmtpd daemon: Python's smtplib, swaks, curl
and msmtp (as a client, and as the pipe command relaying to a second
msmtpd), the exit-status mapping a client sees, and syslog through a
datagram socket at /dev/log."""

from __future__ import annotations

import email
import email.policy
import re
import shlex
import smtplib
import socket
import subprocess
import time
from email.message import EmailMessage
from pathlib import Path
from typing import IO, Callable, Iterator, List, Sequence, Tuple

import pytest

from tests import helpers
from tests.helpers import dev_log, received_headers, syslog_entries

HOST = socket.gethostname()
WAIT = 15.0  # upper bound for any single wait on a process or socket


def stored_content(mail: bytes) -> bytes:
    """What msmtpd piped to msmtpd-maildir: the mail without the
    Return-Path and Delivered-To lines that msmtpd-maildir added."""
    return re.sub(rb"\A(?:Return-Path: [^\n]*\n)?(?:Delivered-To: [^\n]*\n)*", b"", mail)


def after_received(mail: bytes) -> bytes:
    """The content the client sent: the stored mail without msmtpd-maildir's
    lines and msmtpd's Received: header (three lines)."""
    content = stored_content(mail)
    assert content.startswith(b"Received: from "), content[:200]
    return content.split(b"\n", 3)[3]


class Daemon:
    """A started msmtpd master with its own log file."""

    def __init__(self, server: helpers.Server, log: Path) -> None:
        self.server = server
        self.log = log

    @property
    def port(self) -> int:
        return self.server.port

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8") if self.log.exists() else ""


StartDaemon = Callable[..., Daemon]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """Starts msmtpd masters on free loopback ports; all are stopped (and must
    exit 0) at teardown."""
    started: List[Daemon] = []

    def start(command: str, *extra: str, name: str = "msmtpd") -> Daemon:
        log = tmp_path / f"{name}.log"
        server = helpers.Server([f"--command={command}", f"--log={log}", "--max-sessions=2",
                                 "--timeout=10", *extra])
        daemon = Daemon(server, log)
        started.append(daemon)
        server.start()
        # The port accepts connections as soon as it is bound; wait until the
        # workers are up too, so that stopping the daemon later is orderly.
        deadline = time.monotonic() + WAIT
        while "listening on" not in daemon.log_text():
            assert time.monotonic() < deadline, f"{name} did not report listening"
            assert server.process is not None and server.process.poll() is None
            time.sleep(0.02)
        return daemon

    yield start
    statuses = []
    for daemon in started:
        process = daemon.server.process
        if process is None:
            continue
        statuses.append(daemon.server.stop(timeout=WAIT))
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert all(status == 0 for status in statuses), statuses


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    return tmp_path / "Maildir"


def one_mail(directory: Path) -> bytes:
    mails = helpers.wait_for_mails(directory, 1)
    assert len(mails) == 1, mails
    return mails[0]


# -- smtplib ---------------------------------------------------------------


def test_smtplib_send_message(start_daemon: StartDaemon, maildir: Path) -> None:
    daemon = start_daemon(helpers.maildir_command(maildir))
    message = EmailMessage()
    message["From"] = "Alice <alice@example.org>"
    message["To"] = "Bob <bob@example.org>"
    message["Subject"] = "send_message"
    message.set_content("first line\n.a line with a leading dot\n.\nlast line\n")
    with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="client.example",
                      timeout=WAIT) as smtp:
        refused = smtp.send_message(message)
    assert refused == {}
    mail = one_mail(maildir)
    assert mail.startswith(b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.org\n"
                           b"Received: from client.example ([127.0.0.1])\n\tby ")
    assert received_headers(mail)[0].startswith(
        f"Received: from client.example ([127.0.0.1]) by {HOST} (msmtpd) with ESMTP;".encode())
    parsed = email.message_from_bytes(mail, policy=email.policy.default)
    assert parsed["Subject"] == "send_message"
    body = parsed.get_body()
    assert body is not None
    assert body.get_content() == "first line\n.a line with a leading dot\n.\nlast line\n"


def test_smtplib_sendmail_plain_with_null_sender(start_daemon: StartDaemon, maildir: Path) -> None:
    daemon = start_daemon(helpers.maildir_command(maildir))
    text = "Subject: plain\r\n\r\n.\r\n..\r\nbare LF line\nend\r\n"
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=WAIT) as smtp:
        refused = smtp.sendmail("", ["bob@example.org", "carol@example.org"], text)
    assert refused == {}
    mail = one_mail(maildir)
    assert mail.startswith(b"Return-Path: <>\nDelivered-To: bob@example.org\n"
                           b"Delivered-To: carol@example.org\nReceived: ")
    assert after_received(mail) == b"Subject: plain\n\n.\n..\nbare LF line\nend\n"


def test_smtplib_several_mails_in_one_connection(start_daemon: StartDaemon, maildir: Path) -> None:
    daemon = start_daemon(helpers.maildir_command(maildir))
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=WAIT) as smtp:
        for number in range(5):
            smtp.sendmail(f"sender{number}@example.org", [f"rcpt{number}@example.org"],
                          f"Subject: mail {number}\r\n\r\nbody {number}\r\n")
            if number == 2:
                assert smtp.rset()[0] == 250
                assert smtp.noop()[0] == 250
    mails = helpers.wait_for_mails(maildir, 5)
    assert len(mails) == 5
    for number, mail in enumerate(mails):
        assert mail.startswith(f"Return-Path: <sender{number}@example.org>\n"
                               f"Delivered-To: rcpt{number}@example.org\n".encode())
        assert after_received(mail) == f"Subject: mail {number}\n\nbody {number}\n".encode()
    assert daemon.log_text().count("delivered, exit status 0") == 5


def read_reply(stream: IO[bytes]) -> int:
    while True:
        line = stream.readline()
        assert line.endswith(b"\r\n"), line
        code = int(line[:3])
        if line[3:4] == b" ":
            return code


def test_pipelined_commands_over_tcp(start_daemon: StartDaemon, maildir: Path) -> None:
    daemon = start_daemon(helpers.maildir_command(maildir))
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=WAIT) as sock:
        stream = sock.makefile("rb")

        def batch(data: bytes, count: int) -> List[int]:
            sock.sendall(data)
            return [read_reply(stream) for _ in range(count)]

        assert read_reply(stream) == 220
        assert batch(b"EHLO client.example\r\n", 1) == [250]
        envelope = (b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
                    b"RCPT TO:<-rm@example.org>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n")
        assert batch(envelope, 5) == [250, 250, 553, 250, 354]
        assert batch(b"Subject: one\r\n\r\nfirst\r\n.\r\n" + envelope, 6) == [250, 250, 250, 553, 250, 354]
        assert batch(b"Subject: two\r\n\r\nsecond\r\n.\r\nNOOP\r\nQUIT\r\n", 3) == [250, 250, 221]
        assert stream.read() == b""
        stream.close()
    first, second = helpers.wait_for_mails(maildir, 2)
    for mail, text in ((first, b"Subject: one\n\nfirst\n"), (second, b"Subject: two\n\nsecond\n")):
        assert b"Delivered-To: bob@example.org\nDelivered-To: carol@example.org\n" in mail
        assert after_received(mail) == text


def test_smtplib_smtputf8_addresses(start_daemon: StartDaemon, maildir: Path) -> None:
    daemon = start_daemon(helpers.maildir_command(maildir))
    sender, recipient = "jörg@exämple.org", "zoë@example.org"
    content = "Subject: grüße\r\nFrom: jörg@exämple.org\r\n\r\nÄpfel und Bären\r\n".encode()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=WAIT) as smtp:
        smtp.ehlo("client.example")
        assert smtp.has_extn("smtputf8")
        refused = smtp.sendmail(sender, [recipient], content, mail_options=["SMTPUTF8"])
    assert refused == {}
    mail = one_mail(maildir)
    assert mail.startswith(f"Return-Path: <{sender}>\nDelivered-To: {recipient}\n".encode())
    assert b" with UTF8SMTP;" in received_headers(mail)[0]
    assert after_received(mail) == content.replace(b"\r\n", b"\n")


def test_smtplib_three_megabyte_message(start_daemon: StartDaemon, maildir: Path) -> None:
    daemon = start_daemon(helpers.maildir_command(maildir))
    lines = [b"Subject: big", b""]
    total = 0
    while total < 3 * 1024 * 1024:
        prefix = b"." if len(lines) % 97 == 0 else b""
        lines.append(prefix + b"line %06d " % len(lines) + b"0123456789abcdef" * 4)
        total += len(lines[-1]) + 2
    content = b"\r\n".join(lines) + b"\r\n"
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as smtp:
        refused = smtp.sendmail("alice@example.org", ["bob@example.org"], content)
    assert refused == {}
    mail = one_mail(maildir)
    assert after_received(mail) == content.replace(b"\r\n", b"\n")
    logged = re.search(r"to <bob@example\.org>, (\d+) octets: delivered", daemon.log_text())
    assert logged, daemon.log_text()
    # The size is the message as received, with or without msmtpd's trace header.
    assert int(logged[1]) in (len(stored_content(mail)), len(after_received(mail)))


# -- swaks -----------------------------------------------------------------


@pytest.mark.parametrize("pipeline", [False, True], ids=["lockstep", "pipeline"])
def test_swaks(start_daemon: StartDaemon, maildir: Path, pipeline: bool) -> None:
    swaks = helpers.tool("swaks")
    daemon = start_daemon(helpers.maildir_command(maildir))
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{daemon.port}", "--from", "alice@example.org",
         "--to", "bob@example.org,carol@example.org", "--body", "sent by swaks",
         "--header", "Subject: swaks test", "--timeout", "10",
         *(["--pipeline"] if pipeline else [])],
        capture_output=True, timeout=WAIT, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    transcript = result.stdout
    if pipeline:  # the whole envelope went out before the first answer came back
        assert transcript.index(" -> DATA") < transcript.index("<-  250 2.1.0 Sender OK")
    else:
        assert transcript.index("<-  250 2.1.0 Sender OK") < transcript.index(" -> RCPT TO")
    mail = one_mail(maildir)
    assert mail.startswith(b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.org\n"
                           b"Delivered-To: carol@example.org\nReceived: from ")
    parsed = email.message_from_bytes(mail, policy=email.policy.default)
    assert parsed["Subject"] == "swaks test"
    assert b"\n\nsent by swaks\n" in mail


# -- curl ------------------------------------------------------------------


def test_curl_upload(start_daemon: StartDaemon, maildir: Path, tmp_path: Path) -> None:
    curl = helpers.tool("curl")
    daemon = start_daemon(helpers.maildir_command(maildir))
    content = (b"From: alice@example.org\r\nTo: bob@example.org, carol@example.org\r\n"
               b"Subject: via curl\r\n\r\nline one\r\n.dotted line\r\n.\r\nline four\r\n")
    upload = tmp_path / "mail.eml"
    upload.write_bytes(content)
    result = subprocess.run(
        [curl, "-sS", "--max-time", "10", f"smtp://127.0.0.1:{daemon.port}",
         "--mail-from", "alice@example.org", "--mail-rcpt", "bob@example.org",
         "--mail-rcpt", "carol@example.org", "--upload-file", str(upload)],
        capture_output=True, timeout=WAIT)
    assert result.returncode == 0, result.stderr
    mail = one_mail(maildir)
    assert mail.startswith(b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.org\n"
                           b"Delivered-To: carol@example.org\nReceived: from ")
    assert after_received(mail) == content.replace(b"\r\n", b"\n")


# -- msmtp -----------------------------------------------------------------


def msmtp_args(msmtp: str, port: int) -> List[str]:
    # -C /dev/null: no user or system configuration can interfere.
    return [msmtp, "-C", "/dev/null", "--host=127.0.0.1", f"--port={port}", "--auth=off", "--tls=off"]


def test_msmtp_as_client(start_daemon: StartDaemon, maildir: Path) -> None:
    msmtp = helpers.tool("msmtp")
    daemon = start_daemon(helpers.maildir_command(maildir))
    result = subprocess.run(
        [*msmtp_args(msmtp, daemon.port), "--from=alice@example.org", "rcpt@example.org"],
        input=b"Subject: via msmtp\n\nhello from msmtp\n..\n.dotted\n", capture_output=True,
        timeout=WAIT)
    assert result.returncode == 0, result.stderr
    mail = one_mail(maildir)
    assert mail.startswith(b"Return-Path: <alice@example.org>\nDelivered-To: rcpt@example.org\n"
                           b"Received: from ")
    assert b"\nSubject: via msmtp\n" in mail
    assert mail.endswith(b"\n\nhello from msmtp\n..\n.dotted\n")


def test_msmtp_as_pipe_command_relays_to_a_second_msmtpd(start_daemon: StartDaemon,
                                                        tmp_path: Path) -> None:
    msmtp = helpers.tool("msmtp")
    final = tmp_path / "final-Maildir"
    second = start_daemon(helpers.maildir_command(final), name="second")
    relay_command = " ".join([*msmtp_args(msmtp, second.port), "-f", "%F", "--"])
    first = start_daemon(relay_command, name="first")
    with smtplib.SMTP("127.0.0.1", first.port, local_hostname="origin.example", timeout=WAIT) as smtp:
        refused = smtp.sendmail("alice@example.org", ["bob@example.org", "carol@example.org"],
                                "Subject: relayed\r\nMessage-ID: <relay@example.org>\r\n\r\n"
                                "through two msmtpd\r\n")
    assert refused == {}
    mail = one_mail(final)
    assert mail.startswith(b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.org\n"
                           b"Delivered-To: carol@example.org\nReceived: from ")
    outer, inner = received_headers(mail)
    by_msmtpd = f"by {HOST} (msmtpd) with ESMTP;".encode()
    assert re.match(rb"Received: from \S+ \(\[127\.0\.0\.1\]\) " + re.escape(by_msmtpd), outer)
    assert inner.startswith(b"Received: from origin.example ([127.0.0.1]) " + by_msmtpd)
    assert mail.endswith(b"\n\nthrough two msmtpd\n")
    assert "delivered, exit status 0" in first.log_text()
    assert "delivered, exit status 0" in second.log_text()


# -- exit status of the command, as a client sees it -------------------------


def test_command_exit_status_reaches_the_client(start_daemon: StartDaemon, maildir: Path) -> None:
    command = (
        'case "$1" in '
        'tempfail@*) cat >/dev/null; echo queue full >&2; exit 75;; '
        'fail@*) cat >/dev/null; echo no such mailbox >&2; exit 1;; '
        'killed@*) cat >/dev/null; kill -KILL $$;; '
        f'esac; exec {shlex.quote(helpers.program("msmtpd-maildir"))} {shlex.quote(str(maildir))} -f %F --')
    daemon = start_daemon(command)
    message = "Subject: status\r\n\r\nbody\r\n"
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=WAIT) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as tempfail:
            smtp.sendmail("alice@example.org", ["tempfail@example.org"], message)
        assert tempfail.value.smtp_code == 451
        assert b"exit status 75" in tempfail.value.smtp_error
        with pytest.raises(smtplib.SMTPDataError) as failed:
            smtp.sendmail("alice@example.org", ["fail@example.org"], message)
        assert failed.value.smtp_code == 554
        assert b"exit status 1" in failed.value.smtp_error
        with pytest.raises(smtplib.SMTPDataError) as killed:
            smtp.sendmail("alice@example.org", ["killed@example.org"], message)
        assert killed.value.smtp_code == 451
        assert b"signal 9" in killed.value.smtp_error
        refused = smtp.sendmail("alice@example.org", ["ok@example.org"], message)
        assert refused == {}
    mail = one_mail(maildir)
    assert b"Delivered-To: ok@example.org\n" in mail
    log = daemon.log_text()
    assert re.search(r" msmtpd\[\d+\] error: 127\.0\.0\.1: mail from <alice@example\.org> to "
                     r"<tempfail@example\.org>, \d+ octets: 451 not delivered, command exit status 75 "
                     r"\(EX_TEMPFAIL\) in \d+\.\d+ s; stderr: queue full\n", log), log
    assert re.search(r" error: .* to <fail@example\.org>, \d+ octets: 554 not delivered, "
                     r"command exit status 1 in \d+\.\d+ s; stderr: no such mailbox\n", log), log


# -- syslog ----------------------------------------------------------------


def run_inetd_session(prefix: Sequence[str], args: Sequence[str], conversation: bytes
                      ) -> Tuple[subprocess.Popen[bytes], bytes, bytes]:
    return helpers.run_inetd_process(args, conversation, prefix, timeout=WAIT)


def test_syslog_datagrams() -> None:
    command = 'cat >/dev/null; case "$1" in fail@*) echo mailbox full >&2; exit 1;; esac; :'
    conversation = (b"EHLO client.example\r\n"
                    b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
                    b"Subject: ok\r\n\r\nbody\r\n.\r\n"
                    b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<fail@example.org>\r\nDATA\r\n"
                    b"Subject: fails\r\n\r\nbody\r\n.\r\nQUIT\r\n")

    def complete(entries: Sequence[Tuple[int, int, str]]) -> bool:
        return sum("mail from <alice@example.org>" in message for _, _, message in entries) >= 2

    with dev_log(listening=True) as (sock, prefix):
        assert sock is not None
        process, out, err = run_inetd_session(prefix, ["--log=syslog", f"--command={command}"],
                                              conversation)
        entries = syslog_entries(sock, complete)
    assert process.returncode == 0, err
    assert out.endswith(b"\r\n221 2.0.0 " + HOST.encode() + b" closing connection\r\n")
    assert b"\r\n554 5.3.0 Delivery failed: command exit status 1\r\n" in out
    assert {pid for _, pid, _ in entries} == {process.pid}
    assert (22, process.pid, "session from unknown peer") in entries  # mail.info
    delivered = [e for e in entries if "to <bob@example.org>" in e[2]]
    failed = [e for e in entries if "to <fail@example.org>" in e[2]]
    assert len(delivered) == 1 and delivered[0][0] == 22, entries
    assert "delivered, exit status 0" in delivered[0][2]
    assert len(failed) == 1 and failed[0][0] == 19, entries  # mail.err
    assert failed[0][2].endswith("; stderr: mailbox full")


def test_unreachable_syslog_stays_out_of_the_smtp_stream() -> None:
    """xinetd hands the connection to the server as standard input, output
    and error; with nobody listening at /dev/log, logging must fail quietly
    instead of writing tracebacks to standard error, which is the client."""
    conversation = (b"EHLO client.example\r\nMAIL FROM:<alice@example.org>\r\n"
                    b"RCPT TO:<bob@example.org>\r\nDATA\r\nSubject: ok\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    with dev_log(listening=False) as (_, prefix):
        ours, theirs = socket.socketpair()
        with ours:
            try:
                process = subprocess.Popen(
                    [*prefix, helpers.program("msmtpd"), "--inetd", "--log=syslog",
                     "--command=cat >/dev/null; :"],
                    stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=theirs.fileno())
            finally:
                theirs.close()
            ours.settimeout(WAIT)
            ours.sendall(conversation)
            stream = ours.makefile("rb")
            received = stream.read()
            stream.close()
            try:
                status = process.wait(timeout=WAIT)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    assert status == 0
    replies = received.split(b"\r\n")
    assert replies[-1] == b""
    assert all(re.fullmatch(rb"[2-5]\d\d[ -].*", line) for line in replies[:-1]), received[:2000]
    assert b"\r\n250 2.0.0 OK, mail was handed to the delivery command\r\n221 " in received
