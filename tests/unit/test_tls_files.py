"""Unit tests of reading the certificate and key: every mistake is one
line that names the file and says what is wrong (no traceback, no prompt)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Tuple

import trustme

from msmtpd.net.tls_context import load_context
from tests.support.tls_files import assert_refused


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




def test_a_missing_file(pair: Tuple[Path, Path], tmp_path: Path) -> None:
    assert_refused("cannot read", tmp_path / "nope.pem", pair[1])
    assert_refused("cannot read", pair[0], tmp_path / "nope.pem")


def test_a_file_without_a_certificate(pair: Tuple[Path, Path]) -> None:
    assert_refused("holds no PEM certificate", pair[1], pair[1])


def test_a_certificate_file_without_its_key(pair: Tuple[Path, Path]) -> None:
    assert_refused("holds no private key; name the key file with --tls-key", pair[0], None)


def test_a_key_of_another_certificate(pair: Tuple[Path, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(other))
    assert_refused("does not match the certificate", pair[0], other)
