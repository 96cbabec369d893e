"""The certificate-and-key tests of both tiers: a refused pair is one line
that names the file and says what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from msmtpd.base.config import ConfigError
from msmtpd.net.tls_context import load_context


def assert_refused(message: str, cert: Path, key: Path | None) -> None:
    """Loading ``cert`` and ``key`` fails with one line holding ``message``."""
    with pytest.raises(ConfigError) as error:
        load_context(str(cert), None if key is None else str(key))
    assert message in str(error.value)
    assert "\n" not in str(error.value) and "_ssl.c" not in str(error.value)
