"""The Python peer of loads 1 to 3: aiosmtpd (the asyncio SMTP server most
Python users would reach for) piping each mail to the same delivery command
the way msmtpd does: the command started directly with the sender and the
recipients as arguments, the mail (CRLF turned into LF) on its standard
input, 250 when it exits 0, else 451.  Run by scripts/bench.py as a process
of its own with the benchmark's interpreter:

    python benchkit/bench/aiosmtpd_server.py --command=CMD --interface=127.0.0.1 --port=PORT

The host name of the greeting is looked up once at start (aiosmtpd's SMTP
would call socket.getfqdn() for every connection otherwise): neither
msmtpd nor the C msmtpd resolves anything per connection either.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from typing import List, Optional, Sequence

from aiosmtpd.smtp import SMTP, Envelope, Session

DATA_SIZE_LIMIT = 64 * 1024 * 1024  # above load 3's 20 MB (aiosmtpd's default is 32 MiB)
STDERR_KEEP = 200  # of the command's standard error, in the reply to a failed delivery


class PipeToCommand:
    """aiosmtpd's handler: each mail to one run of the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)  # decode_data=False
        recipients: List[str] = list(envelope.rcpt_tos)
        process = await asyncio.create_subprocess_exec(
            self.command, "-f", envelope.mail_from or "", "--", *recipients,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, errors = await process.communicate(content.replace(b"\r\n", b"\n"))
        if process.returncode == 0:
            return "250 OK"
        return f"451 delivery failed: {errors[:STDERR_KEEP].decode(errors='replace').strip()}"


async def serve(command: str, interface: str, port: int) -> None:
    """Listen until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    hostname = socket.getfqdn()
    handler = PipeToCommand(command)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=hostname, decode_data=False, data_size_limit=DATA_SIZE_LIMIT),
        host=interface, port=port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--command", required=True, help="the delivery command (no shell)")
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args(argv)
    asyncio.run(serve(options.command, options.interface, options.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
