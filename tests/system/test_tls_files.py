"""Reading the certificate and key, where openssl makes the file: an
encrypted key is refused at once (no prompt); the rest is in tests/unit."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Tuple

from tests.support.tls_files import assert_refused


def test_an_encrypted_key_is_refused_without_a_prompt(pair: Tuple[Path, Path], tmp_path: Path) -> None:
    encrypted = tmp_path / "enc.pem"
    subprocess.run(["openssl", "pkey", "-in", str(pair[1]), "-aes128", "-passout", "pass:x",
                    "-out", str(encrypted)], check=True, capture_output=True)
    assert_refused("is encrypted", pair[0], encrypted)
