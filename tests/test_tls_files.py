"""Unit tests of reading the certificate and key: every mistake is one
line that names the file and says what is wrong (no traceback, no prompt)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import Tuple

import pytest
import trustme

from msmtpd.base.config import ConfigError
from msmtpd.net.tls_context import load_context


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


def test_a_good_pair_gives_a_tls_1_2_server_context(pair: Tuple[Path, Path]) -> None:
    context = load_context(str(pair[0]), str(pair[1]))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert context.options & ssl.OP_NO_COMPRESSION


def test_the_key_may_be_in_the_certificate_file(pair: Tuple[Path, Path], tmp_path: Path) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(pair[0].read_bytes() + pair[1].read_bytes())
    load_context(str(both), None)


def check(message: str, cert: Path, key: Path | None) -> None:
    with pytest.raises(ConfigError) as error:
        load_context(str(cert), None if key is None else str(key))
    assert message in str(error.value)
    assert "\n" not in str(error.value) and "_ssl.c" not in str(error.value)


def test_a_missing_file(pair: Tuple[Path, Path], tmp_path: Path) -> None:
    check("cannot read", tmp_path / "nope.pem", pair[1])
    check("cannot read", pair[0], tmp_path / "nope.pem")


def test_a_file_without_a_certificate(pair: Tuple[Path, Path]) -> None:
    check("holds no PEM certificate", pair[1], pair[1])


def test_a_certificate_file_without_its_key(pair: Tuple[Path, Path]) -> None:
    check("holds no private key; name the key file with --tls-key", pair[0], None)


def test_a_key_of_another_certificate(pair: Tuple[Path, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(other))
    check("does not match the certificate", pair[0], other)


def test_an_encrypted_key_is_refused_without_a_prompt(pair: Tuple[Path, Path], tmp_path: Path) -> None:
    encrypted = tmp_path / "enc.pem"
    subprocess.run(["openssl", "pkey", "-in", str(pair[1]), "-aes128", "-passout", "pass:x",
                    "-out", str(encrypted)], check=True, capture_output=True)
    check("is encrypted", pair[0], encrypted)
