"""CHUNKING (RFC 3030) on real processes: Perl's Net::SMTP sends BDAT,
raw clients over real sockets vanish mid-chunk, cross --max-size, pipeline
chunks, send a lone "." line, split a CRLF across chunks, trickle a chunk
and never read their replies; the mail msmtpd-maildir stores from a BDAT
send is byte for byte the one DATA gives."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import List

from tests.helpers import (
    Server,
    delivered,
    maildir_command,
    tool,
    wait_for_log,
    wait_for_mails,
)
from tests.support.raw_smtp import start_session

WAIT = 15.0
DEAF_BOUND = 60.0  # a client that never reads is dropped well within this
HOST = socket.gethostname()
SLOW_421 = f"421 4.4.2 {HOST} Data too slow, closing connection\r\n".encode()
MESSAGE = (b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: chunks\r\n\r\n"
           b"first line\r\n.\r\n..two dots\r\n" + b"x" * 3000 + b"\r\nlast line\r\n")

PERL_CLIENT = r"""
use strict; use warnings; use Net::SMTP;
my ($port, $file) = @ARGV;
open(my $in, '<:raw', $file) or die "open: $!";
my $message = do { local $/; <$in> };
my $smtp = Net::SMTP->new('127.0.0.1', Port => $port, Hello => 'perl.example', Timeout => 15)
    or die "connect: $@";
# supports() returns the keyword's parameters: "" for CHUNKING, so defined()
defined $smtp->supports('CHUNKING') or die "no CHUNKING offered";
$smtp->mail('alice@example.org') or die "MAIL: " . $smtp->message;
$smtp->to('bob@example.org') or die "RCPT: " . $smtp->message;
# Net::SMTP turns its bdat and bdatlast on only with mail(..., Bits => 'binary'),
# that is with BODY=BINARYMIME, which msmtpd (like Postfix) does not offer:
# switch them on as that would, and the wire is Net::SMTP's own.
${*$smtp}{'net_smtp_chunking'} = 1;
my $half = int(length($message) / 2);
$smtp->bdat(substr($message, 0, $half)) or die "BDAT: " . $smtp->message;
$smtp->bdatlast(substr($message, $half)) or die "BDAT LAST: " . $smtp->message;
print $smtp->code, " ", $smtp->message;
$smtp->quit;
"""


def bdat(data: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


def undated(mail: bytes) -> bytes:
    """The mail with its Received header's date line blanked, and the
    client's HELO name (the only other thing that may differ)."""
    mail = re.sub(rb"\n\t[A-Z][a-z]{2}, [^\n]*\n", b"\n\tDATE\n", mail, count=1)
    return re.sub(rb"(?m)^Received: from \S+", b"Received: from HELO", mail, count=1)


def send_by_data(port: int, message: bytes) -> None:
    """``message`` by DATA, in the envelope Net::SMTP's script uses."""
    client = start_session(port)
    try:
        assert client.command(b"MAIL FROM:<alice@example.org>\r\n").startswith(b"250")
        assert client.command(b"RCPT TO:<bob@example.org>\r\n").startswith(b"250")
        assert client.command(b"DATA\r\n").startswith(b"354")
        stuffed = re.sub(rb"(?m)^\.", b"..", message)
        assert client.command(stuffed + b".\r\n").startswith(b"250 ")
        assert client.command(b"QUIT\r\n").startswith(b"221")
    finally:
        client.close()


def test_net_smtp_sends_bdat_and_the_mail_is_byte_for_byte_datas(tmp_path: Path) -> None:
    """A real client (Perl's Net::SMTP, bdat and bdatlast) delivers; the
    stored mail equals the one the same message gives by DATA."""
    perl = tool("perl")
    script, message = tmp_path / "bdat.pl", tmp_path / "message.eml"
    script.write_text(PERL_CLIENT)
    message.write_bytes(MESSAGE)
    maildir = tmp_path / "maildir"
    with Server([f"--command={maildir_command(maildir)}"]) as server:
        sent = subprocess.run([perl, str(script), str(server.port), str(message)],
                              capture_output=True, timeout=WAIT)
        assert sent.returncode == 0, sent.stderr.decode()
        assert sent.stdout.startswith(b"250 "), sent.stdout
        send_by_data(server.port, MESSAGE)
    by_bdat, by_data = wait_for_mails(maildir, 2)
    assert b"with ESMTP;" in by_bdat
    assert undated(by_bdat) == undated(by_data)
    assert b"\n.\n..two dots\n" in by_bdat and b"\r" not in by_bdat


def test_raw_chunks_split_anywhere_give_datas_mail(tmp_path: Path) -> None:
    """CRLF split across chunks, a lone "." line, one-octet chunks, all
    pipelined in one write and answered in order."""
    maildir = tmp_path / "maildir"
    cuts = [0, 1, 2, 70, 71, 72, 73, 90, 3000, len(MESSAGE) - 1, len(MESSAGE)]
    chunks = [MESSAGE[a:b] for a, b in zip(cuts, cuts[1:])]
    assert any(chunk.endswith(b"\r") for chunk in chunks)
    with Server([f"--command={maildir_command(maildir)}"]) as server:
        client = start_session(server.port)
        try:
            assert client.command(b"MAIL FROM:<alice@example.org>\r\n").startswith(b"250")
            assert client.command(b"RCPT TO:<bob@example.org>\r\n").startswith(b"250")
            client.send(b"".join(bdat(c, last=i == len(chunks) - 1) for i, c in enumerate(chunks))
                        + b"NOOP\r\n")
            answers = [client.reply() for _ in chunks]
            assert answers[:-1] == [b"250 2.0.0 %d octets received\r\n" % len(c) for c in chunks[:-1]]
            assert answers[-1].startswith(b"250 2.0.0 OK, mail was handed")
            assert client.reply() == b"250 2.0.0 OK\r\n"
            assert client.command(b"QUIT\r\n").startswith(b"221")
        finally:
            client.close()
        send_by_data(server.port, MESSAGE)
    by_bdat, by_data = wait_for_mails(maildir, 2)
    assert undated(by_bdat) == undated(by_data)


def test_a_client_that_vanishes_mid_chunk_delivers_nothing(tmp_path: Path) -> None:
    maildir, log = tmp_path / "maildir", tmp_path / "msmtpd.log"
    with Server([f"--command={maildir_command(maildir)}", f"--log={log}"]) as server:
        for cut in (b"BDAT 100 LAST\r\nonly part", bdat(b"whole chunk\r\n") + b"BDAT 50 LAST\r\nhalf"):
            client = start_session(server.port, through_rcpt=True)
            client.send(cut)
            client.close()
        wait_for_log(log, "client disconnected during BDAT; nothing delivered", count=2)
        # A whole first chunk, then gone before BDAT LAST was sent at all.
        client = start_session(server.port, through_rcpt=True)
        assert client.command(bdat(b"first\r\n")).startswith(b"250 2.0.0 7 octets")
        client.close()
        wait_for_log(log, "client disconnected", count=3)
    assert delivered(maildir) == []


def reset_after(client: object, data: bytes) -> None:
    """Send ``data``, then vanish with a reset (SO_LINGER 0), as a client
    does that closes with replies unread: the server's next read fails
    with ECONNRESET rather than seeing an end of file."""
    sock = client.sock  # type: ignore[attr-defined]
    sock.sendall(data)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_client_reset_mid_chunk_or_mid_data_delivers_nothing_and_says_so(tmp_path: Path) -> None:
    """A reset is a disconnection like any other: the log says nothing was
    delivered (not only "connection lost"), for BDAT and for DATA."""
    maildir, log = tmp_path / "maildir", tmp_path / "msmtpd.log"
    with Server([f"--command={maildir_command(maildir)}", f"--log={log}"]) as server:
        client = start_session(server.port, through_rcpt=True)
        reset_after(client, b"BDAT 100 LAST\r\nonly part")
        wait_for_log(log, "client disconnected during BDAT; nothing delivered")
        client = start_session(server.port, through_rcpt=True)
        assert client.command(b"DATA\r\n").startswith(b"354")
        reset_after(client, b"Subject: half\r\n\r\nhalf a mail\r\n")
        wait_for_log(log, "client disconnected during DATA; nothing delivered")
    assert delivered(maildir) == []


def test_the_chunk_that_crosses_max_size_is_read_and_refused_552(tmp_path: Path) -> None:
    """The chunks pipelined behind it are discarded and answered alike; the
    session goes on and the next transaction is delivered."""
    maildir = tmp_path / "maildir"
    with Server([f"--command={maildir_command(maildir)}", "--max-size=1000"]) as server:
        client = start_session(server.port, through_rcpt=True)
        try:
            assert client.command(bdat(b"a" * 600 + b"\r\n")).startswith(b"250 ")
            client.send(bdat(b"b" * 600 + b"\r\n") + bdat(b"MAIL FROM:<x@example.org>\r\n" * 30)
                        + bdat(b"c" * 5000 + b"\r\n", last=True))
            too_big = b"552 5.3.4 Message exceeds the size limit of 1000 octets\r\n"
            assert [client.reply() for _ in range(3)] == [too_big] * 3
            assert client.command(b"BDAT 2 LAST\r\nxx").startswith(b"503 5.5.1 Send MAIL")
            assert client.command(b"MAIL FROM:<a@example.org>\r\n").startswith(b"250")
            assert client.command(b"RCPT TO:<b@example.org>\r\n").startswith(b"250")
            assert client.command(bdat(b"Subject: small\r\n\r\nfits\r\n", last=True)).startswith(b"250 ")
            assert client.command(b"QUIT\r\n").startswith(b"221")
        finally:
            client.close()
    mails = wait_for_mails(maildir, 1)
    assert len(mails) == 1 and mails[0].endswith(b"Subject: small\n\nfits\n")


def test_protocol_mistakes_are_answered_and_refused_chunks_discarded(tmp_path: Path) -> None:
    maildir = tmp_path / "maildir"
    with Server([f"--command={maildir_command(maildir)}"]) as server:
        client = start_session(server.port)
        try:
            # No transaction: 503, and the chunk is not read as commands.
            assert client.command(bdat(b"QUIT\r\n", last=True)).startswith(b"503 5.5.1 Send MAIL")
            assert client.command(b"BDAT ten\r\n") == b"501 5.5.4 Syntax: BDAT size [LAST]\r\n"
            assert client.command(b"BDAT 1234567890123456789 LAST\r\n").startswith(b"501 5.5.4 BDAT size")
            assert client.command(b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n").startswith(b"555 ")
            assert client.command(b"MAIL FROM:<a@example.org>\r\n").startswith(b"250")
            assert client.command(bdat(b"RCPT TO:<x@example.org>\r\n")).startswith(b"503 5.5.1 Send RCPT")
            assert client.command(b"RCPT TO:<b@example.org>\r\n").startswith(b"250")
            assert client.command(bdat(b"part\r\n")).startswith(b"250 ")
            assert client.command(b"DATA\r\n").startswith(b"503 5.5.1 DATA cannot follow BDAT")
            assert client.command(b"BDAT 0 LAST\r\n").startswith(b"250 2.0.0 OK")
            assert client.command(b"QUIT\r\n").startswith(b"221")
        finally:
            client.close()
    mails = wait_for_mails(maildir, 1)
    assert len(mails) == 1 and mails[0].endswith(b"\npart\n")


def test_a_chunk_trickled_below_the_minimum_rate_gets_421(tmp_path: Path) -> None:
    """100 octets every 0.5 s: never silent for --timeout, but 200 octets/s."""
    timeout, maildir = 2, tmp_path / "maildir"
    with Server([f"--timeout={timeout}", f"--command={maildir_command(maildir)}"]) as server:
        client = start_session(server.port, through_rcpt=True)
        try:
            client.send(b"BDAT 20000 LAST\r\n")
            started = time.monotonic()
            while time.monotonic() - started < timeout + 4 and not client.readable(0.5):
                try:
                    client.send(b"x" * 98 + b"\r\n")
                except OSError:
                    break
            answer = client.reply_or_eof(timeout + 3)
            answered = time.monotonic() - started
            assert answer == SLOW_421, f"{answered:.1f} s into the chunk: {answer!r}"
            assert answered < timeout + 3
        finally:
            client.close()
    assert delivered(maildir) == []


def test_a_client_that_never_reads_its_chunk_replies_is_dropped(tmp_path: Path) -> None:
    """Tens of thousands of one-octet chunks and never a read: the replies
    fill the socket, the worker drops the client within --timeout, serves
    the next one, and nothing is delivered."""
    timeout, maildir, log = 2, tmp_path / "maildir", tmp_path / "msmtpd.log"
    with Server([f"--timeout={timeout}", "--max-sessions=1", f"--command={maildir_command(maildir)}",
                 f"--log={log}"]) as server:
        deaf = start_session(server.port, through_rcpt=True)
        flood = bdat(b"x") * 400_000
        errors: List[BaseException] = []

        def send() -> None:
            try:
                deaf.sock.settimeout(timeout * 5 + WAIT)
                deaf.sock.sendall(flood)
            except OSError as exc:
                errors.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        started = time.monotonic()
        sender.start()
        # How soon the replies fill the socket buffers depends on how fast
        # this machine answers chunks: the bound is loose, the drop certain.
        wait_for_log(log, "client does not read its replies; dropped", timeout=DEAF_BOUND)
        dropped = time.monotonic() - started
        deaf.close()
        sender.join(WAIT)
        fresh = start_session(server.port)
        try:
            assert fresh.command(b"QUIT\r\n").startswith(b"221")
        finally:
            fresh.close()
    assert dropped < DEAF_BOUND, f"dropped after {dropped:.1f} s"
    assert delivered(maildir) == []
