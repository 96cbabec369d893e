"""The server's TLS context: the certificate and key, read and checked at
start-up (and again on SIGHUP), and the protocol settings of RFC 8314.

``ssl`` is imported only when a certificate is configured: every other
start of msmtpd, and every ``--inetd`` session without TLS, does without.
Wrapping sockets is the connection layer's job, not this module's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from msmtpd.base.config import ConfigError

if TYPE_CHECKING:
    import ssl


def load_context(cert: str, key: Optional[str]) -> ssl.SSLContext:
    """A server context for ``cert`` (and ``key``, else the key in ``cert``);
    ConfigError with one line that says what is wrong."""
    import ssl

    # create_default_context, then only what must change: TLS 1.2 or newer,
    # the server's cipher order, no renegotiation, no compression.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= (ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
                        | ssl.OP_NO_COMPRESSION)
    _check_pem(cert, key)
    try:
        # An encrypted key would make OpenSSL prompt on the terminal: refuse it.
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        raise ConfigError(_describe(exc, cert, key)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS certificate or key: {exc.strerror or exc}") from None
    return context


def _no_password() -> bytes:
    return b""


def _check_pem(cert: str, key: Optional[str]) -> None:
    """Say what is missing before OpenSSL does (it only says "PEM lib")."""
    cert_text = _read(cert)
    if b"-----BEGIN CERTIFICATE-----" not in cert_text:
        raise ConfigError(f"{cert} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    key_path = key or cert
    key_text = cert_text if key is None else _read(key)
    if b"ENCRYPTED" in key_text:
        raise ConfigError(f"the TLS key in {key_path} is encrypted; give msmtpd a key without a passphrase")
    if b"PRIVATE KEY-----" not in key_text:
        if key is None:
            raise ConfigError(f"{cert} holds no private key; name the key file with --tls-key")
        raise ConfigError(f"{key} holds no PEM private key")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(1024 * 1024)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _describe(exc: ssl.SSLError, cert: str, key: Optional[str]) -> str:
    """One line a user can act on, from OpenSSL's reason codes."""
    reason = (exc.reason or ("PEM_LIB" if "PEM lib" in str(exc) else "")).upper()
    pair = f"{cert}" + (f" and {key}" if key else "")
    if reason == "KEY_VALUES_MISMATCH":
        return f"the TLS key {key or cert} does not match the certificate {cert}"
    if reason in ("BAD_DECRYPT", "BAD_PASSWORD_READ", "PROBLEMS_GETTING_PASSWORD"):
        return f"the TLS key {key or cert} is encrypted; give msmtpd a key without a passphrase"
    if reason in ("PEM_LIB", "NO_START_LINE", "BAD_END_LINE", "BAD_BASE64_DECODE"):
        return f"cannot load the TLS certificate and key from {pair}: they are not valid PEM"
    if reason in ("EE_KEY_TOO_SMALL", "CA_MD_TOO_WEAK"):
        return f"the TLS certificate {cert} is too weak for OpenSSL's security level"
    text = (exc.reason or str(exc)).lower().replace("_", " ")
    return f"cannot load the TLS certificate and key from {pair}: {text}"


def describe_session(version: Optional[str], cipher: Optional[str]) -> str:
    """``TLSv1.3 with TLS_AES_256_GCM_SHA384``, for the log and Received:."""
    return f"{version or 'TLS'} with {cipher or 'unknown cipher'}"
