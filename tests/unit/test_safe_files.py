"""msmtpd.system.safe_files on its own: what root may open of another user's files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from msmtpd.system.safe_files import UnsafeFile, open_checked, open_directory


def test_a_regular_file_of_the_owner_opens_blocking(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    path.chmod(0o644)
    fd = open_checked(str(path), os.O_RDONLY, stat.S_IFREG, os.geteuid())
    try:
        assert os.get_blocking(fd) and os.read(fd, 1) == b"x"
    finally:
        os.close(fd)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.symlink_to("/etc/hostname"), "f is a symbolic link"),
    (lambda p: os.mkfifo(p), "f is a FIFO, not a regular file"),
    (lambda p: p.mkdir(), "f is a directory, not a regular file"),
    (lambda p: (p.write_text(""), p.chmod(0o620)), "f is writable by group or others (mode 0620)"),
])
def test_anything_else_is_refused_without_blocking(tmp_path: Path, make: object,
                                                   message: str) -> None:
    path = tmp_path / "f"
    make(path)  # type: ignore[operator]
    with pytest.raises(UnsafeFile) as refused:
        os.close(open_checked(str(path), os.O_RDONLY, stat.S_IFREG, os.geteuid(), label="f"))
    assert str(refused.value) == message


def test_a_file_of_someone_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("")
    with pytest.raises(UnsafeFile, match=r"is owned by .*, not by uid 4242"):
        open_checked(str(path), os.O_RDONLY, stat.S_IFREG, 4242)


def test_a_directory_opens_and_a_file_in_its_place_is_named(tmp_path: Path) -> None:
    os.close(open_directory(str(tmp_path), os.geteuid()))
    (tmp_path / "file").write_text("")
    with pytest.raises(UnsafeFile, match="is a regular file, not a directory"):
        open_directory(str(tmp_path / "file"), None)
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafeFile, match="is a symbolic link"):
        open_directory(str(tmp_path / "link"), None)
