"""Fixtures both tiers use."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import pytest
import trustme


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    """A certificate for localhost and its key, in two files, once per module."""
    directory = tmp_path_factory.mktemp("tls")
    cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file
