"""An htpasswd users file as the system tests write it."""

from __future__ import annotations

from pathlib import Path

from tests import helpers

PASSWORDS = {"alice": "alice secret 1", "bob": "b0b-pw:with:colons", "carol": "carol-pw"}



def users_file(directory: Path) -> Path:
    path = directory / "users"
    helpers.htpasswd(path, "alice", PASSWORDS["alice"], "-B")
    helpers.htpasswd(path, "bob", PASSWORDS["bob"], "-B")
    path.write_text("# msmtpd users\n\n" + path.read_text())
    return path

