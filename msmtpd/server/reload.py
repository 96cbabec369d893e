"""What SIGHUP re-reads besides the log: the TLS certificate, the
``--auth-file`` users and the ``--senders`` bindings.  The master (still root under --user) reads them;
a file that fails to load is logged and the old one stays."""

from __future__ import annotations

from msmtpd.base.config import Config, ConfigError
from msmtpd.base.logger import log
from msmtpd.smtp.session_parts import Settings


def reload_settings(config: Config, settings: Settings) -> bool:
    """Re-read what can change on disk; True when the workers must be
    renewed to pick up something new."""
    renew = False
    if config.tls_cert is not None:
        renew |= _reload_tls(config, settings)
    if config.auth_file is not None:
        renew |= _reload_accounts(config, settings)
    if config.senders is not None:
        renew |= _reload_senders(config, settings)
    return renew


def _reload_tls(config: Config, settings: Settings) -> bool:
    from msmtpd.net.tls_context import load_context

    assert config.tls_cert is not None
    try:
        settings.tls = load_context(config.tls_cert, config.tls_key)
    except ConfigError as exc:
        log.error("keeping the old TLS certificate: %s", exc, event="reload_failed",
                  what="tls_certificate", error=str(exc))
        return False
    log.info("TLS certificate reloaded from %s", config.tls_cert, event="reloaded",
             what="tls_certificate", file=config.tls_cert)
    return True


def _reload_accounts(config: Config, settings: Settings) -> bool:
    from msmtpd.policy.users_file import Accounts, load_accounts

    assert config.auth_file is not None and isinstance(settings.auth, Accounts)
    try:
        settings.auth = load_accounts(config.auth_file, settings.auth.clock)
    except ConfigError as exc:
        log.error("keeping the old users: %s", exc, event="reload_failed", what="users",
                  error=str(exc))
        return False
    log.info("%d users reloaded from %s", len(settings.auth.users), config.auth_file,
             event="reloaded", what="users", file=config.auth_file, count=len(settings.auth.users))
    return True


def _reload_senders(config: Config, settings: Settings) -> bool:
    from msmtpd.policy.senders import load_senders

    assert config.senders is not None
    try:
        settings.senders = load_senders(config.senders)
    except ConfigError as exc:
        log.error("keeping the old senders: %s", exc, event="reload_failed", what="senders",
                  error=str(exc))
        return False
    log.info("senders of %d users reloaded from %s", len(settings.senders.bindings), config.senders,
             event="reloaded", what="senders", file=config.senders,
             count=len(settings.senders.bindings))
    return True
