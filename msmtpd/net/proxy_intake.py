"""Reading the PROXY protocol header off a connection, before the greeting
(``--proxy-protocol``; the parsing itself is :mod:`msmtpd.net.proxy_header`).

The header is read exactly to its end: each read asks for no more octets
than the header still needs at least, so SMTP a client pipelined right
behind it stays on the wire for the session (and anything that did arrive
with it would stay in the connection's buffer all the same).  The whole
header must arrive within ``--timeout`` of the connection, the deadline of
any request (contract 6); a missing, malformed, truncated or late header
is :class:`ProxyHeaderError`, and the connection is then closed without a
greeting.
"""

from __future__ import annotations

from msmtpd.net.connection import Connection, Overloaded, RequestTimeout, ShutdownRequested
from msmtpd.net.proxy_header import Needed, ProxyHeader, ProxyHeaderError, parse


def read_proxy_header(connection: Connection) -> ProxyHeader:
    """The header at the start of ``connection``, consumed; raises
    ProxyHeaderError (the reason in its text)."""
    try:
        while True:
            parsed = parse(connection.buffered)
            if not isinstance(parsed, Needed):
                connection.take(parsed.length)
                return parsed
            if not connection.read_more(parsed.octets):
                raise ProxyHeaderError(_truncated(connection.buffered))
    except RequestTimeout:
        raise ProxyHeaderError(f"no complete PROXY header within {connection.timeout:g} s"
                               f" ({len(connection.buffered)} octets came)") from None
    except (ShutdownRequested, Overloaded) as exc:
        raise ProxyHeaderError(f"cut short before the PROXY header: {type(exc).__name__}") from None
    except OSError as exc:
        raise ProxyHeaderError(f"connection lost before the PROXY header: {exc}") from None


def _truncated(data: bytes) -> str:
    if not data:
        return "closed before sending a PROXY header"
    return f"closed after {len(data)} octets of a PROXY header"
