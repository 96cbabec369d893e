"""msmtpd.base.safe_files on its own: what root may open of another user's files."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from msmtpd.base.safe_files import UnsafeFile, open_checked, queue_file, written_file


def test_a_regular_file_of_the_owner_opens_blocking(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    path.chmod(0o644)
    fd = open_checked(str(path), os.O_RDONLY, queue_file(stat.S_IFREG, os.geteuid()))
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
        os.close(open_checked(str(path), os.O_RDONLY, queue_file(stat.S_IFREG, os.geteuid()),
                              label="f"))
    assert str(refused.value) == message


def test_a_file_of_someone_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("")
    with pytest.raises(UnsafeFile, match=r"is owned by .*, not by uid 4242"):
        open_checked(str(path), os.O_RDONLY, queue_file(stat.S_IFREG, 4242))


def test_a_directory_opens_and_a_file_in_its_place_is_named(tmp_path: Path) -> None:
    os.close(open_checked(str(tmp_path), os.O_RDONLY, queue_file(stat.S_IFDIR, os.geteuid())))
    (tmp_path / "file").write_text("")
    with pytest.raises(UnsafeFile, match="is a regular file, not a directory"):
        open_checked(str(tmp_path / "file"), os.O_RDONLY, queue_file(stat.S_IFDIR, None))
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafeFile, match="is a symbolic link"):
        open_checked(str(tmp_path / "link"), os.O_RDONLY, queue_file(stat.S_IFDIR, None))


@pytest.mark.parametrize("make, message", [
    (lambda p: p.symlink_to("/etc/hostname"), "is a symbolic link; refusing to follow it"),
    (lambda p: os.mkfifo(p), "is not a regular file"),  # O_WRONLY, nobody reads: ENXIO
    (lambda p: (p.write_text(""), os.link(p, p.with_name("g"))),
     "has 2 hard links; refusing a file that is also elsewhere"),
])
def test_a_written_file_is_refused_in_its_own_words(tmp_path: Path, make: object,
                                                    message: str) -> None:
    """The log's and the pid file's rules: one link, no symlink, no FIFO."""
    path = tmp_path / "f"
    make(path)  # type: ignore[operator]
    with pytest.raises(UnsafeFile) as refused:
        os.close(open_checked(str(path), os.O_WRONLY | os.O_APPEND, written_file()))
    assert str(refused.value) == f"{path} {message}"
    assert refused.value.strerror == message  # what "cannot open log file X: ..." shows


def test_a_written_file_of_someone_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("")
    with pytest.raises(UnsafeFile, match=r"belongs to uid \d+, not to uid 4242$"):
        open_checked(str(path), os.O_RDWR, written_file({4242}))
    fd = open_checked(str(path), os.O_RDWR, written_file({os.geteuid()}))
    os.close(fd)


def test_a_group_writable_file_is_refused_only_by_the_queue_rules(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("")
    path.chmod(0o666)
    os.close(open_checked(str(path), os.O_RDONLY, written_file()))
    with pytest.raises(UnsafeFile, match=r"writable by group or others \(mode 0666\)"):
        open_checked(str(path), os.O_RDONLY, queue_file(stat.S_IFREG, None))


def test_a_refusal_is_an_oserror_and_a_fifo_without_reader_is_not_a_refusal(tmp_path: Path) -> None:
    """Whoever reports a failed open reports a refusal too; a wake-up FIFO
    that nobody reads is ENXIO, not a refusal."""
    assert issubclass(UnsafeFile, OSError)
    fifo = tmp_path / "w"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as failed:
        open_checked(str(fifo), os.O_WRONLY, queue_file(stat.S_IFIFO, None))
    assert failed.type is OSError and failed.value.errno == errno.ENXIO
