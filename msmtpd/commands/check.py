"""``--check``: a health check for Docker's HEALTHCHECK, init scripts and
monitoring.

It connects to the first ``--interface`` and ``--port`` (the server's
defaults; a Unix socket when the interface is a path), reads the greeting,
sends EHLO and QUIT, and prints one line saying what it saw.  Exit status
0 when every answer was 2xx, 1 otherwise.  The whole check ends within
CHECK_SECONDS, however the server behaves, and runs in this one process:
nothing is left behind.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, List, Optional

from msmtpd.base.config import Config, is_unix_path
from msmtpd.base.exit_codes import EXIT_FAILURE, EXIT_OK

# The whole check (connect, greeting, EHLO, QUIT) ends within this long,
# or --timeout when that is shorter.
CHECK_SECONDS = 5.0
# Where to connect when the server listens on every address.
LOOPBACK_FOR = {"0.0.0.0": "127.0.0.1", "::": "::1"}


class _Expired(Exception):
    pass


def _expire(signum: int, frame: Any) -> None:
    raise _Expired()


class _Probe:
    """The exchange, step by step, so a failure can say what came before."""

    def __init__(self, host: str, port: int, tls: bool, seconds: float) -> None:
        self.host, self.port, self.tls, self.seconds = host, port, tls, seconds
        self.seen: List[str] = []
        self.step = "connecting"

    def run(self) -> Optional[str]:
        """None when healthy, else what went wrong."""
        import smtplib

        client: Any
        plain: Any = _unix_smtp_class() if is_unix_path(self.host) else smtplib.SMTP
        if self.tls:
            import ssl

            context = ssl.create_default_context()
            context.check_hostname = False  # a liveness check, not a peer verification
            context.verify_mode = ssl.CERT_NONE
            # SMTP_SSL wraps what its base's _get_socket connects: TCP or a Unix socket.
            tls_class: Any = type("CheckSMTP_SSL", (smtplib.SMTP_SSL, plain), {})
            client = tls_class(local_hostname="localhost", timeout=self.seconds, context=context)
            client._host = self.host  # what SNI gets; smtplib sets it only with a constructor host
        else:
            client = plain(local_hostname="localhost", timeout=self.seconds)
        try:
            code, text = client.connect(self.host, self.port)
            self._saw("greeting", code, text)
            if code != 220:
                return "the greeting is not 220"
            self.step = "waiting for the EHLO reply"
            code, text = client.ehlo("localhost")
            self._saw("EHLO", code, text)
            if not 200 <= code < 300:
                return "EHLO was refused"
            self.step = "waiting for the QUIT reply"
            code, text = client.docmd("QUIT")
            self._saw("QUIT", code, text)
            if not 200 <= code < 300:
                return "QUIT was refused"
            return None
        finally:
            client.close()

    def _saw(self, what: str, code: int, text: bytes) -> None:
        first = text.decode("utf-8", "replace").splitlines()[:1]
        shown = "".join(c if c.isprintable() else "?" for c in "".join(first))[:120]
        self.seen.append(f"{what} {code} {shown}".rstrip())


def _unix_smtp_class() -> Any:
    """smtplib's SMTP on a Unix stream socket (``--interface=/PATH``)."""
    import smtplib
    import socket

    class UnixSMTP(smtplib.SMTP):
        def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(host)
            except OSError:
                sock.close()
                raise
            return sock

    return UnixSMTP


def run_check(config: Config) -> int:
    interface = config.interfaces[0]
    host = LOOPBACK_FOR.get(interface, interface)
    seconds = min(CHECK_SECONDS, config.timeout)
    if is_unix_path(host):
        where = host
    else:
        where = f"[{host}]:{config.port}" if ":" in host else f"{host}:{config.port}"
    probe = _Probe(host, config.port, config.tls_implicit, seconds)
    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        problem = probe.run()
    except _Expired:
        problem = f"no answer within {seconds:g} s while {probe.step}"
    except OSError as exc:  # refused, reset, TLS failure, timeout, ...
        problem = _describe(exc, probe.step)
    except Exception as exc:  # smtplib's own errors: a reply that is not SMTP
        problem = f"{type(exc).__name__} while {probe.step}: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    seen = "; ".join(probe.seen)
    if problem is None:
        print(f"msmtpd: {where} is healthy: {seen}", flush=True)
        return EXIT_OK
    detail = f" (saw {seen})" if seen else ""
    print(f"msmtpd: {where} is not healthy: {problem}{detail}", file=sys.stderr, flush=True)
    return EXIT_FAILURE


def _describe(exc: OSError, step: str) -> str:
    import socket

    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"timed out while {step}"
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is msmtpd running?)"
    return f"{reason} while {step}"
