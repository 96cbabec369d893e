"""The floor under loads 1 to 3: the CPU the delivery command costs when
run alone with the same message on its standard input.  No server can
deliver a mail for less; what a server's tree costs per mail beyond it is
the server's own work (the SMTP exchange, the spool, starting the command,
and, for the C msmtpd, its /bin/sh and its process per session).

The command gets exactly the bytes the servers hand it: the DATA content
without its final ".", dot-unstuffed, with LF line endings (ours also puts
a Received: line of some 150 bytes in front, which is not counted here).
It reads them from a regular file, as from ours (the C msmtpd and aiosmtpd
write them into a pipe).  Each run's CPU is the child's user+system time
from os.wait4's rusage: the exec and everything the command does, not the
parent's fork, which every server pays itself and which is in its figure.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from typing import List

SENDER, RECIPIENT = "bench@example.org", "sink@example.org"  # as the benchmark's clients send
RUNS_SMALL, RUNS_LARGE = 200, 10  # runs per round: enough for a steady median
RUNS_SMALL_QUICK, RUNS_LARGE_QUICK = 20, 3
LARGE = 100_000  # bytes: a message this large (load 3's) gets the fewer runs, and MB/s in the tables


def delivered(data: bytes) -> bytes:
    """What a server hands the command for the DATA content ``data``
    (CRLF lines ending with ".\\r\\n"): the final "." removed, a leading
    "." of each line removed, CRLF turned into LF."""
    assert data.endswith(b"\r\n.\r\n") or data == b".\r\n"
    lines = data[: -len(b".\r\n")].split(b"\r\n")
    return b"\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def runs_for(data: bytes, quick: bool) -> int:
    """How many runs a round gives the command with this message."""
    if len(data) >= LARGE:
        return RUNS_LARGE_QUICK if quick else RUNS_LARGE
    return RUNS_SMALL_QUICK if quick else RUNS_SMALL


def command_cpu_ms(command: str, data: bytes, runs: int) -> List[float]:
    """The command's CPU milliseconds (user+system, from wait4) in each of
    ``runs`` runs with the mail for ``data`` on its standard input, from a
    regular file, with the arguments msmtpd gives it."""
    argv = [command, "-f", SENDER, "--", RECIPIENT]
    times: List[float] = []
    with tempfile.TemporaryFile() as mail:
        mail.write(delivered(data))
        mail.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            for _ in range(runs):
                os.lseek(mail.fileno(), 0, os.SEEK_SET)  # the child shares this offset
                pid = os.posix_spawn(command, argv, os.environ, file_actions=[
                    (os.POSIX_SPAWN_DUP2, mail.fileno(), 0),
                    (os.POSIX_SPAWN_DUP2, devnull, 1),
                    (os.POSIX_SPAWN_DUP2, devnull, 2)])
                _, status, usage = os.wait4(pid, 0)
                if os.waitstatus_to_exitcode(status) != 0:
                    raise RuntimeError(f"{command} failed alone: wait status {status}")
                times.append((usage.ru_utime + usage.ru_stime) * 1000)
        finally:
            os.close(devnull)
    return times


def command_floor_ms(command: str, data: bytes, quick: bool) -> float:
    """One round's figure for the command alone: the median of its runs."""
    return statistics.median(command_cpu_ms(command, data, runs_for(data, quick)))
