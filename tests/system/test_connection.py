"""The connection layer on a real socket: TLS turns Nagle off; the
deadlines on a simulated clock are in tests/unit."""

from __future__ import annotations

from msmtpd.net.connection import (
    Transport,
)


def test_tls_turns_nagle_off() -> None:
    """OpenSSL writes its session tickets and our next reply as separate
    small records; with Nagle the reply would wait for a delayed ACK."""
    import socket
    import ssl

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        try:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            transport = Transport(server, server).start_tls(context)
            tls = transport.reader
            assert isinstance(tls, ssl.SSLSocket)
            assert tls.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            transport.close()
        finally:
            client.close()
            server.close()
