"""The delivery command sees only its standard input, output and error.

msmtpd starts the command with ``os.posix_spawn``, which, unlike
subprocess's ``close_fds``, closes nothing: every descriptor msmtpd opens
is close-on-exec, and the ones it inherited are marked so before its first
command.  Here msmtpd is handed descriptors nobody marked (a file, a
connected socket, a pipe, as a careless parent leaks them, and systemd's
listening socket) and the command lists its own: only 0, 1 and 2 may be
there, besides the directory ``ls`` itself opens to list them.
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
import subprocess
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from tests.helpers import free_port, program, tool, wait_for_port, wait_until

WAIT = 20.0
MESSAGE = "Subject: fds\r\n\r\nwhat does the command inherit?\r\n"
# ls -l's line for one descriptor: "lrwx------ 1 root root 64 ... 3 -> socket:[123]".
_ENTRY = re.compile(r" (\d+) -> (.*)$", re.M)


def fd_lister(tmp_path: Path) -> Tuple[str, Path]:
    """A command script that writes ``ls -l /proc/self/fd`` to a file (ls
    inherits exactly the script's descriptors) and reads the mail."""
    listing = tmp_path / "fds"
    script = tmp_path / "list-fds"
    script.write_text(f"#!/bin/sh\nls -l /proc/self/fd > {listing}\nexec cat >/dev/null\n")
    script.chmod(0o755)
    return str(script), listing


def foreign(listing: Path) -> List[str]:
    """The descriptors in the listing other than 0, 1, 2 and ls's own
    directory (``N -> /proc/PID/fd``)."""
    text = listing.read_text()
    entries = _ENTRY.findall(text)
    assert {"0", "1", "2"} <= {fd for fd, _ in entries}, text
    return [f"{fd} -> {target}" for fd, target in entries
            if fd not in ("0", "1", "2") and not re.fullmatch(r"/proc/\d+/fd", target)]


@pytest.fixture
def leaked(tmp_path: Path) -> Iterator[List[int]]:
    """Inheritable descriptors, as a parent that forgot them passes them on:
    a file open for writing, one end of a connected socket pair, and the
    write end of a pipe."""
    sockets = socket.socketpair()
    pipe_r, pipe_w = os.pipe()
    fds = [os.open(tmp_path / "secret", os.O_CREAT | os.O_WRONLY, 0o600), sockets[0].fileno(), pipe_w]
    for fd in fds:
        os.set_inheritable(fd, True)
    yield fds
    for fd in (fds[0], pipe_r, pipe_w):
        os.close(fd)
    for sock in sockets:
        sock.close()


def send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as smtp:
        assert smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE) == {}


def test_a_daemon_passes_no_inherited_descriptor(tmp_path: Path, leaked: List[int]) -> None:
    command, listing = fd_lister(tmp_path)
    port = free_port()
    process = subprocess.Popen([program("msmtpd"), f"--port={port}", "--interface=127.0.0.1",
                                f"--command={command}", "--max-sessions=2"], pass_fds=leaked,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=process)
        send(port)
        send(port)  # a worker's second mail too
    finally:
        process.terminate()
        process.wait(WAIT)
    assert foreign(listing) == []


def test_inetd_passes_no_inherited_descriptor(tmp_path: Path, leaked: List[int]) -> None:
    command, listing = fd_lister(tmp_path)
    conversation = (b"EHLO client\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
                    + MESSAGE.encode() + b".\r\nQUIT\r\n")
    done = subprocess.run([program("msmtpd"), "--inetd", f"--command={command}"], input=conversation,
                          capture_output=True, timeout=WAIT, pass_fds=leaked)
    assert b"250 2.0.0 OK" in done.stdout, done.stdout + done.stderr
    assert foreign(listing) == []


def test_systemd_sockets_are_not_passed_on(tmp_path: Path) -> None:
    """systemd-socket-activate hands msmtpd its listening socket as
    descriptor 3, inheritable (LISTEN_FDS)."""
    command, listing = fd_lister(tmp_path)
    port = free_port()
    process = subprocess.Popen([tool("systemd-socket-activate"), "-l", f"127.0.0.1:{port}",
                                program("msmtpd"), f"--command={command}", "--max-sessions=2"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=process)
        send(port)
        wait_until(listing.exists, WAIT, "the command's listing")
    finally:
        process.terminate()
        process.wait(WAIT)
    assert foreign(listing) == []
