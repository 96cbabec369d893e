"""``--user=USER[:GROUP]``: who sessions and the pipe command run as."""

from __future__ import annotations

import grp
import os
import pwd

from msmtpd.base.config import ConfigError

TYPE_CHECKING = False  # typing at run time costs every process some 1.6 MB and 3 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Sequence


class UnixAccount:
    """An account as --user names it (a plain class: the master imports this
    module, and typing costs some 1.6 MB that every worker would share)."""

    __slots__ = ("name", "uid", "gid", "home")

    def __init__(self, name: str, uid: int, gid: int, home: str) -> None:
        self.name = name
        self.uid = uid
        self.gid = gid
        self.home = home


def resolve(spec: str) -> UnixAccount:
    """The account named by USER[:GROUP]; ConfigError when it does not exist."""
    user, _, group = spec.partition(":")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"invalid --user: no such user '{user}'") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"invalid --user: no such group '{group}'") from None
    return UnixAccount(entry.pw_name, entry.pw_uid, gid, entry.pw_dir)


def drop(spec: str, late_modules: Sequence[str] = ()) -> None:
    """Become USER[:GROUP] for good; raises ConfigError with a message fit
    for the terminal when that is not possible.

    ``late_modules`` are what the process imports only when it first needs
    them: they are imported first, since the user may be unable to read the
    Python installation (a virtualenv or pyenv under /root, mode 0700)."""
    account = resolve(spec)
    if os.getuid() == account.uid and os.getgid() == account.gid:
        return
    import importlib

    for name in late_modules:
        importlib.import_module(name)
    try:
        os.setgroups([])
        os.setgid(account.gid)
        os.setuid(account.uid)
    except OSError as exc:
        raise ConfigError(f"cannot switch to user {spec}: {exc.strerror}") from None
    os.environ.update(HOME=account.home, USER=account.name, LOGNAME=account.name)


def hand_over(fd: int, spec: str) -> None:
    """Give the log file root opened (``fd``) to the account, so it stays
    writable after the drop.  By descriptor, never by name: the name lies in
    a directory the account may write, and could by now be a symlink to a
    file of root's.  Only a regular file with one link, root's or already
    the account's, is handed over; anything else raises ConfigError."""
    if os.geteuid() != 0:
        return
    from msmtpd.base.safe_files import why_unsafe, written_file

    account = resolve(spec)
    info = os.fstat(fd)
    problem = why_unsafe(info, written_file({0, account.uid}))
    if problem is not None:
        raise ConfigError(f"will not hand the log file to {account.name}: it {problem}")
    if (info.st_uid, info.st_gid) != (account.uid, account.gid):
        try:
            os.fchown(fd, account.uid, account.gid)
        except OSError as exc:
            raise ConfigError(f"cannot hand the log file to {account.name}: {exc.strerror}") from None
