"""Relative paths and --daemon (issue 17, item 11), as parsed: every path
option is made absolute, log keywords stay keywords; the daemon that
re-reads them on SIGHUP is in tests/system."""

from __future__ import annotations

from pathlib import Path

import pytest

from msmtpd.commands.cli import parse_args


def test_every_path_option_is_made_absolute() -> None:
    config = parse_args(["--tls-cert=c.pem", "--tls-key=k.pem", "--auth-file=users",
                         "--pidfile=run/m.pid", "--log=m.log", "--queue=spool", "--spool-dir=."])
    here = Path.cwd()
    assert (config.tls_cert, config.tls_key, config.auth_file, config.pidfile, config.log,
            config.queue, config.spool_dir) == tuple(str(here / name) for name in (
                "c.pem", "k.pem", "users", "run/m.pid", "m.log", "spool")) + (str(here),)


@pytest.mark.parametrize("keyword", ["none", "syslog", "-"])
def test_log_keywords_stay_keywords(keyword: str) -> None:
    assert parse_args([f"--log={keyword}"]).log == keyword
