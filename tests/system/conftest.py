"""What the system tests (real msmtpd processes) share as fixtures."""

from __future__ import annotations

import re

import pytest

from tests.support.tls_daemons import Certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A test CA and two server certificates, once per module."""
    directory = tmp_path_factory.mktemp("certs")
    assert not re.search(r"\s", str(directory))  # xinetd's server_args cannot quote
    return Certs(directory)
