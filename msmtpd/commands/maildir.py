"""``msmtpd-maildir``: a tiny delivery command that stores each mail as a
file in a Maildir, so a fresh install has somewhere visible to deliver to.

Usage: ``msmtpd-maildir DIRECTORY [-f SENDER] [--] RECIPIENT...``, reading
the mail on standard input.  The mail is written to ``DIRECTORY/tmp`` and
renamed into ``DIRECTORY/new``, so a reader never sees half a mail.
Exit status 0 when stored, 75 (EX_TEMPFAIL) when the disk said no,
64 (EX_USAGE) for a bad command line.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import List, Optional, Sequence

from msmtpd.base.exit_codes import EXIT_OK, EXIT_TEMPFAIL, EXIT_USAGE

_counter = 0


def _unique_name() -> str:
    global _counter
    _counter += 1
    now = time.time()
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{_counter}.{socket.gethostname()}"


def store(directory: str, message: bytes, sender: Optional[str], recipients: Sequence[str]) -> str:
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    name = _unique_name()
    tmp_path = os.path.join(directory, "tmp", name)
    header = b""
    if sender is not None:
        header += f"Return-Path: <{'' if sender == 'MAILER-DAEMON' else sender}>\n".encode()
    for recipient in recipients:
        header += f"Delivered-To: {recipient}\n".encode()
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(header)
            out.write(message)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(tmp_path)
        raise
    final = os.path.join(directory, "new", name)
    os.rename(tmp_path, final)
    return final


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stderr.write("usage: msmtpd-maildir DIRECTORY [-f SENDER] [--] RECIPIENT...\n")
        return EXIT_USAGE
    directory = args.pop(0)
    sender = None
    if args[:1] == ["-f"]:
        if len(args) < 2:
            sys.stderr.write("msmtpd-maildir: -f needs a sender\n")
            return EXIT_USAGE
        sender = args[1]
        args = args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    try:
        message = sys.stdin.buffer.read()
        path = store(directory, message, sender, args)
    except OSError as exc:
        sys.stderr.write(f"msmtpd-maildir: cannot store the mail in {directory}: {exc.strerror}\n")
        return EXIT_TEMPFAIL
    sys.stderr.write(f"msmtpd-maildir: stored {path}\n")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
