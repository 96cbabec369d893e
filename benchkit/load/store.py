"""``load.py --store DIR [--fail-rate R] [-f SENDER] [--] RECIPIENT...``:
the load generator's own delivery command, run once per mail.  Maildir
layout, like msmtpd-maildir but with a much cheaper start: this module
imports nothing but os and sys (time only to name the file), and
scripts/load.py imports nothing else before it calls store_main."""

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
