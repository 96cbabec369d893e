"""An SMTP client on a Unix socket, run by the tests as another user
(``setpriv --reuid=nobody /usr/bin/python3 unix_client.py ...``): the
Python the tests run under may be unreadable to that user, so this file
imports nothing but the standard library, and prints its outcome as one
JSON object.

    unix_client.py PATH SENDER RECIPIENT [USER PASSWORD]

The outcome: ``{"sent": true}``, ``{"code": 553, "message": "..."}`` for a
refused command, or ``{"error": "PermissionError"}`` when it cannot connect.
"""

from __future__ import annotations

import json
import smtplib
import socket
import sys


class UnixSMTP(smtplib.SMTP):
    """smtplib's SMTP over a Unix stream socket (as its LMTP class does)."""

    def connect(self, host: str = "localhost", port: int = 0, source_address: object = None):  # type: ignore[no-untyped-def, override]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.file = None
        self.sock.connect(host)
        return self.getreply()


def main(argv: list) -> dict:
    path, sender, recipient, *login = argv
    try:
        client = UnixSMTP(timeout=20, local_hostname="client.test")
        client.connect(path)
    except OSError as exc:
        return {"error": type(exc).__name__}
    with client:
        try:
            if login:
                client.ehlo()
                client.login(login[0], login[1])
            client.sendmail(sender, [recipient], f"From: {sender}\r\nSubject: unix\r\n\r\nhello\r\n")
        except smtplib.SMTPResponseException as exc:
            return {"code": exc.smtp_code, "message": exc.smtp_error.decode()}
        except smtplib.SMTPRecipientsRefused as exc:
            code, message = next(iter(exc.recipients.values()))
            return {"code": code, "message": message.decode()}
    return {"sent": True}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
