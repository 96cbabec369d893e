"""The service files in etc/, exercised with the real tools that read them:
the init script under start-stop-daemon, the start-stop-daemon lines of the
original manual page, xinetd with the shipped service, logrotate's
postrotate action against a running daemon, and systemd-analyze on the
units.

Daemons that detach (``--daemon``, ``start-stop-daemon --background``) are
started under a small child-subreaper process, so the test can see with
which status they end and no daemon is ever left to init.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import shlex
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from tests.helpers import (
    WAIT,
    Server,
    children,
    descendants,
    free_port,
    kill_quietly,
    maildir_command,
    program,
    tool,
    wait_for_mails,
    wait_for_port,
    wait_until,
)
from tests.support.service_files import ETC, start_xinetd, stop_xinetd

INIT_SCRIPT = ETC / "init.d" / "msmtpd"

# Runs a command as the child of a child subreaper: every process the
# command orphans (daemons) is adopted here instead of by init.  Writes one
# JSON line with the command's exit status, then one per adopted process as
# it ends, and exits when nothing is left.
REAPER = r"""
import ctypes, json, os, subprocess, sys
report = open(sys.argv[1], "a", buffering=1)
PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    report.write(json.dumps({"error": os.strerror(ctypes.get_errno())}) + "\n")
    sys.exit(1)
with open(sys.argv[2], "wb") as output:
    code = subprocess.call(sys.argv[3:], stdin=subprocess.DEVNULL, stdout=output,
                           stderr=subprocess.STDOUT)
report.write(json.dumps({"command": code}) + "\n")
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    report.write(json.dumps({"pid": pid, "exit": os.waitstatus_to_exitcode(status)}) + "\n")
"""

# Inside a private mount namespace, replace a directory that an unprivileged
# user may not search (say /root, mode 0700) by an empty searchable tmpfs
# that holds only the one entry leading to the installed program, then run
# the command.  Nothing outside the namespace changes.
EXPOSE = r"""
set -e
blocked=$1 child=$2 hold=$3
shift 3
mount --bind "$blocked/$child" "$hold"
mount -t tmpfs -o mode=0755,size=1m msmtpd-test "$blocked"
mkdir "$blocked/$child"
mount --bind "$hold" "$blocked/$child"
umount "$hold"
exec "$@"
"""

_serial = itertools.count()










class Reaper:
    """A command run under the child subreaper above."""

    def __init__(self, workdir: Path, argv: Sequence[str], env: Optional[Dict[str, str]] = None) -> None:
        serial = next(_serial)
        self.report = workdir / f"reaper-{serial}.jsonl"
        self.output = workdir / f"reaper-{serial}.out"
        self.process = subprocess.Popen(
            [sys.executable, "-c", REAPER, str(self.report), str(self.output), *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def records(self) -> List[Dict[str, Any]]:
        if not self.report.exists():
            return []
        lines = self.report.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def _record(self, key: str, value: Optional[int] = None) -> Optional[Dict[str, Any]]:
        ended = self.process.poll() is not None  # before reading: its last line is written by then
        for record in self.records():
            if "error" in record:
                raise AssertionError(f"the reaper could not start: {record['error']}")
            if key in record and (value is None or record[key] == value):
                return record
        if ended:
            raise AssertionError(f"the reaper ended without reporting {key} {value or ''}")
        return None

    def command(self, timeout: float = 30.0) -> Tuple[int, str]:
        """The command's exit status and its output."""
        record = wait_until(lambda: self._record("command"), timeout, what="the command to finish")
        return int(record["command"]), self.output.read_text(errors="replace")

    def exit_status(self, pid: int, timeout: float = 30.0) -> int:
        """How the adopted process ``pid`` ended."""
        record = wait_until(lambda: self._record("pid", pid), timeout, what=f"process {pid} to end")
        return int(record["exit"])

    def finished(self, timeout: float = 15.0) -> None:
        """Every adopted process has ended."""
        self.process.wait(timeout)

    def close(self) -> None:
        """Stop whatever is still running under the reaper, then the reaper."""
        if self.process.poll() is None:
            for pid in descendants(self.process.pid):
                kill_quietly(pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                for pid in descendants(self.process.pid):
                    kill_quietly(pid, signal.SIGKILL)
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()


def masters_on(port: int) -> List[int]:
    """Running msmtpd masters that listen on ``port`` (by process title)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("msmtpd: master") and title.rstrip().endswith(f":{port}"):
            found.append(int(entry.name))
    return sorted(found)


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for process {pid}")


def send_mail(port: int, sender: str, recipient: str, marker: str) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, recipient, marker
    message.set_content(f"body of {marker}\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.send_message(message)


def mail_with(maildir: Path, marker: str, count: int) -> bytes:
    mails = wait_for_mails(maildir, count)
    matching = [mail for mail in mails if marker.encode() in mail]
    assert matching, f"no mail containing {marker!r} among {len(mails)} in {maildir}"
    return matching[0]


def read_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


# -- (a) the init script with start-stop-daemon ------------------------------

# Runs a command with /lib/lsb hidden, as on systems without the LSB helpers.
WITHOUT_LSB = r"""
mount -t tmpfs -o mode=0755,size=64k msmtpd-test /lib/lsb
exec "$@"
"""


def init_script(lsb_functions: bool) -> List[str]:
    if lsb_functions or not Path("/lib/lsb/init-functions").exists():
        return [str(INIT_SCRIPT)]
    return [tool("unshare"), "--mount", "--propagation", "private", "/bin/sh", "-ec", WITHOUT_LSB,
            "without-lsb", str(INIT_SCRIPT)]


@pytest.mark.parametrize("lsb_functions", [True, False], ids=["lsb-functions", "no-lsb-functions"])
def test_init_script_start_status_restart_stop(tmp_path: Path, lsb_functions: bool) -> None:
    tool("start-stop-daemon")
    script = init_script(lsb_functions)
    port = free_port()
    maildir = tmp_path / "Maildir"
    pidfile = tmp_path / "msmtpd.pid"
    log = tmp_path / "msmtpd.log"
    defaults = tmp_path / "default-msmtpd"
    settings = {
        "DAEMON": program("msmtpd"), "PIDFILE": str(pidfile), "INTERFACE": "127.0.0.1",
        "PORT": str(port), "COMMAND": maildir_command(maildir),
        "USER": pwd.getpwuid(os.getuid()).pw_name, "LOG": str(log), "EXTRA": "--max-sessions=2",
    }
    defaults.write_text("".join(f"{name}={shlex.quote(value)}\n" for name, value in settings.items()))
    env = {**os.environ, "MSMTPD_DEFAULTS": str(defaults), "SYSTEMCTL_SKIP_REDIRECT": "1"}

    def run(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*script, action], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)

    starter = Reaper(tmp_path, [*script, "start"], env)
    reapers = [starter]
    try:
        code, output = starter.command()
        assert code == 0, output
        first = int(pidfile.read_text())
        assert masters_on(port) == [first]
        status = run("status")
        assert status.returncode == 0, status
        assert str(first) in status.stdout

        send_mail(port, "init@example.org", "one@example.org", "init-script-mail-1")
        assert b"Delivered-To: one@example.org" in mail_with(maildir, "init-script-mail-1", 1)

        again = run("start")  # already running: harmless, LSB status 0
        assert again.returncode == 0, again
        assert "already running" in again.stdout + again.stderr
        assert int(pidfile.read_text()) == first
        assert masters_on(port) == [first]

        reload = run("reload")
        assert reload.returncode == 0, reload
        wait_until(lambda: "reopening the log" in read_text(log), WAIT, what="the SIGHUP to reach the master")

        restarter = Reaper(tmp_path, [*script, "restart"], env)
        reapers.append(restarter)
        code, output = restarter.command()
        assert code == 0, output
        assert starter.exit_status(first) == 0
        starter.finished()
        second = int(pidfile.read_text())
        assert second != first
        assert masters_on(port) == [second]
        send_mail(port, "init@example.org", "two@example.org", "init-script-mail-2")
        mail_with(maildir, "init-script-mail-2", 2)

        stop = run("stop")
        assert stop.returncode == 0, stop
        assert restarter.exit_status(second) == 0
        restarter.finished()
        assert not pidfile.exists()
        assert masters_on(port) == []
        assert port_closed(port)

        after = run("status")
        assert after.returncode == 3, after
        assert "not running" in after.stdout + after.stderr
        again = run("stop")  # already stopped: LSB status 0
        assert again.returncode == 0, again
        assert run("force-reload").returncode == 0  # nothing to restart
        assert masters_on(port) == []
        assert run("reload").returncode == 7  # LSB: program is not running
        assert run("no-such-action").returncode == 2

        # A pid file left by a killed daemon: status says so, start takes over.
        gone = subprocess.Popen(["true"])
        gone.wait()
        pidfile.write_text(f"{gone.pid}\n")
        stale = run("status")
        assert stale.returncode == 1, stale  # LSB: dead and the pid file exists
        third_start = Reaper(tmp_path, [*script, "start"], env)
        reapers.append(third_start)
        code, output = third_start.command()
        assert code == 0, output
        third = int(pidfile.read_text())
        assert masters_on(port) == [third]
        assert run("stop").returncode == 0
        assert third_start.exit_status(third) == 0
        third_start.finished()
        assert not pidfile.exists()
    finally:
        for reaper in reversed(reapers):
            reaper.close()


def test_init_script_reports_start_up_errors(tmp_path: Path) -> None:
    tool("start-stop-daemon")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    pidfile = tmp_path / "msmtpd.pid"
    defaults = tmp_path / "default-msmtpd"
    defaults.write_text(f"DAEMON={shlex.quote(program('msmtpd'))}\nPIDFILE={shlex.quote(str(pidfile))}\n"
                        f"PORT={port}\nUSER=\nLOG=none\n")
    env = {**os.environ, "MSMTPD_DEFAULTS": str(defaults), "SYSTEMCTL_SKIP_REDIRECT": "1"}
    starter = Reaper(tmp_path, [str(INIT_SCRIPT), "start"], env)
    try:
        code, output = starter.command()
        assert code == 1, output  # LSB: generic failure
        assert f"port {port}" in output  # msmtpd's own one-line reason
        starter.finished()
        assert not pidfile.exists()
        defaults.write_text(f"DAEMON={shlex.quote(str(tmp_path / 'missing'))}\n")
        missing = subprocess.run([str(INIT_SCRIPT), "start"], env=env, capture_output=True, text=True,
                                 timeout=30)
        assert missing.returncode == 5, missing  # LSB: program is not installed
    finally:
        starter.close()
        busy.close()


# -- (b) the start-stop-daemon lines of the original manual page -------------

def exposing_prefix(user: pwd.struct_passwd, path: str, workdir: Path) -> List[str]:
    """A command prefix under which ``user`` can run the installed program.

    Empty when the user can run it already.  Otherwise (a Python under
    /root, mode 0700, say) a private mount namespace that makes just the
    program's tree reachable; the user gains no privilege.  The probe runs
    the program through a shell, as start-stop-daemon does: setpriv's own
    exec of a path under /root succeeds where the user's exec does not."""
    setpriv = tool("setpriv")
    probe = subprocess.run([setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                            "--clear-groups", "--", "/bin/sh", "-c", 'exec "$0" --version', path],
                           capture_output=True, timeout=30)
    if probe.returncode == 0:
        return []
    # The program, and the interpreter of its #! line (a virtualenv's python
    # links into the Python it was made from).
    with open(path, "rb") as script:
        first = script.readline()
    paths = [path]
    if first.startswith(b"#!"):
        paths.append(os.path.realpath(first[2:].split()[0].decode()))
    for candidate in paths:
        parts = Path(candidate).parts
        for depth in range(1, len(parts) - 1):
            directory = Path(*parts[:depth + 1])
            if not directory.stat().st_mode & stat.S_IXOTH:
                hold = workdir / "hold"
                hold.mkdir()
                return [tool("unshare"), "--mount", "--propagation", "private", "/bin/sh", "-c",
                        EXPOSE, "expose", str(directory), parts[depth + 1], str(hold)]
    raise AssertionError(f"{user.pw_name} cannot run {path}: {probe.stderr!r}")


def test_manual_page_start_stop_daemon_lines(tmp_path: Path) -> None:
    ssd = tool("start-stop-daemon")
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    pidfile = tmp_path / "msmtpd.pid"
    msmtpd = program("msmtpd")
    # A Maildir the unprivileged user may write in (pytest's tmp_path is private).
    shared = Path(tempfile.mkdtemp(prefix="msmtpd-nobody-", dir="/tmp"))
    starter: Optional[Reaper] = None
    try:
        shared.chmod(0o755)
        maildir = shared / "Maildir"
        maildir.mkdir()
        os.chown(maildir, nobody.pw_uid, nobody.pw_gid)
        # start msmtpd (paths and the port adapted; the rest as in the manual)
        start = [ssd, "--start", "--pidfile", str(pidfile), "--make-pidfile", "--chuid", "nobody",
                 "--background", "--exec", msmtpd, "--",
                 "--command", f"{program('msmtpd-maildir')} {maildir} -f %F", f"--port={port}"]
        # stop msmtpd
        stop = [ssd, "--stop", "--pidfile", str(pidfile), "--remove-pidfile", "--quiet", "--signal", "TERM"]

        starter = Reaper(tmp_path, [*exposing_prefix(nobody, msmtpd, tmp_path), *start])
        code, output = starter.command()
        assert code == 0, output
        wait_for_port(port)
        master = int(pidfile.read_text())
        workers = wait_until(lambda: children(master), WAIT, what="the workers")
        assert uid_of(master) == nobody.pw_uid
        assert all(uid_of(worker) == nobody.pw_uid for worker in workers)

        send_mail(port, "manual@example.org", "someone@example.org", "manual-page-mail")
        mail = mail_with(maildir, "manual-page-mail", 1)
        assert b"Return-Path: <manual@example.org>" in mail
        assert all(path.stat().st_uid == nobody.pw_uid for path in (maildir / "new").iterdir())

        stopped = subprocess.run(stop, capture_output=True, text=True, timeout=30)
        assert stopped.returncode == 0, stopped
        assert starter.exit_status(master) == 0
        starter.finished()
        assert not pidfile.exists()
        assert port_closed(port)
    finally:
        if starter is not None:
            starter.close()
        shutil.rmtree(shared, ignore_errors=True)


# -- (c) xinetd with the shipped service -------------------------------------

def test_xinetd_with_shipped_service(tmp_path: Path) -> None:
    xinetd = tool("xinetd")
    swaks, curl, msmtp = tool("swaks"), tool("curl"), tool("msmtp")
    port = free_port()
    maildir = tmp_path / "Maildir"
    # xinetd splits server_args at white space and knows no quoting, so the
    # delivery command with its arguments lives in a script (as the shipped
    # file's comment says).
    deliver = tmp_path / "deliver"
    deliver.write_text(f"#!/bin/sh\nexec {shlex.quote(program('msmtpd-maildir'))} "
                       f"{shlex.quote(str(maildir))} -- \"$@\"\n")
    deliver.chmod(0o755)
    services = tmp_path / "xinetd.d"
    services.mkdir()
    shipped = ETC / "xinetd.d" / "msmtpd"
    copy = services / "msmtpd"
    user = pwd.getpwuid(os.getuid()).pw_name
    with copy.open("w") as out:
        subprocess.run(["sed",
                        "-e", rf"s|^\([[:space:]]*port[[:space:]]*=\).*|\1 {port}|",
                        "-e", rf"s|^\([[:space:]]*server[[:space:]]*=\).*|\1 {program('msmtpd')}|",
                        "-e", rf"s|^\([[:space:]]*user[[:space:]]*=\).*|\1 {user}|",
                        "-e", rf"s|^\([[:space:]]*server_args[[:space:]]*=.*\)$|\1 --command={deliver}|",
                        str(shipped)], stdout=out, check=True, timeout=30)
    changed = [(a, b) for a, b in zip(shipped.read_text().splitlines(), copy.read_text().splitlines())
               if a != b]
    assert len(changed) == 4, changed
    server = start_xinetd(xinetd, tmp_path, services)
    try:
        wait_for_port(port, process=server)
        message = tmp_path / "message.txt"

        # xinetd hands msmtpd the connection as standard input, output *and*
        # error: the greeting must still be the first thing the client reads.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            first = raw.makefile("rb").readline()
            raw.sendall(b"QUIT\r\n")
        assert first.startswith(b"220 "), f"the session did not start with the greeting: {first!r}"

        send_mail(port, "smtplib@example.org", "one@example.org", "via-smtplib")
        assert b"Delivered-To: one@example.org" in mail_with(maildir, "via-smtplib", 1)

        done = subprocess.run([swaks, "--server", f"127.0.0.1:{port}", "--from", "swaks@example.org",
                               "--to", "two@example.org", "--header", "Subject: via-swaks",
                               "--body", "sent by swaks", "--timeout", "30"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert b"Delivered-To: two@example.org" in mail_with(maildir, "via-swaks", 2)

        message.write_text("From: curl@example.org\r\nTo: three@example.org\r\nSubject: via-curl\r\n"
                           "\r\nsent by curl\r\n")
        done = subprocess.run([curl, "-sS", "--max-time", "30", f"smtp://127.0.0.1:{port}",
                               "--mail-from", "curl@example.org", "--mail-rcpt", "three@example.org",
                               "--upload-file", str(message)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert b"Delivered-To: three@example.org" in mail_with(maildir, "via-curl", 3)

        message.write_text("From: msmtp@example.org\nTo: four@example.org\nSubject: via-msmtp\n"
                           "\nsent by msmtp\n")
        with message.open("rb") as mail_in:
            done = subprocess.run([msmtp, "--host=127.0.0.1", f"--port={port}", "--from=msmtp@example.org",
                                   "four@example.org"], stdin=mail_in, capture_output=True, text=True,
                                  timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert b"Delivered-To: four@example.org" in mail_with(maildir, "via-msmtp", 4)

        # Every session was its own msmtpd --inetd, and each has ended.
        wait_until(lambda: not children(server.pid), WAIT, what="the msmtpd --inetd processes to end")
        assert server.poll() is None
    finally:
        stop_xinetd(server)


# -- (d) logrotate's postrotate action ----------------------------------------

def open_paths(pid: int) -> List[str]:
    paths = []
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return []
    for fd in fds:
        try:
            paths.append(os.readlink(fd))
        except OSError:
            continue
    return paths


def test_logrotate_makes_the_daemon_reopen_its_log(tmp_path: Path) -> None:
    logrotate = tool("logrotate")
    maildir = tmp_path / "Maildir"
    log = tmp_path / "msmtpd.log"
    rotated = tmp_path / "msmtpd.log.1"
    pidfile = tmp_path / "msmtpd.pid"
    config = tmp_path / "logrotate.conf"
    with config.open("w") as out:
        subprocess.run(["sed", "-e", f"s|/var/log/msmtpd.log|{log}|g", "-e", f"s|/run/msmtpd.pid|{pidfile}|g",
                        str(ETC / "logrotate.d" / "msmtpd")], stdout=out, check=True, timeout=30)
    config.chmod(0o644)  # logrotate ignores configuration files others may write
    assert str(log) in config.read_text() and str(pidfile) in config.read_text()

    with Server([f"--command={maildir_command(maildir)}", f"--log={log}", f"--pidfile={pidfile}",
                 "--max-sessions=2"]) as server:
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() == str(server.pid), WAIT,
                   what="the pid file")
        processes = [server.pid, *wait_until(lambda: len(children(server.pid)) == 2 and children(server.pid),
                                             WAIT, what="two workers")]
        send_mail(server.port, "before@example.org", "one@example.org", "before-rotation")
        mail_with(maildir, "before-rotation", 1)
        wait_until(lambda: "<before@example.org>" in read_text(log), WAIT,
                   what="the first delivery in the log")

        done = subprocess.run([logrotate, "-f", "-s", str(tmp_path / "logrotate.state"), str(config)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "<before@example.org>" in read_text(rotated)
        assert log.exists()

        def everyone_reopened() -> bool:
            opened = [open_paths(pid) for pid in processes]
            return all(str(log) in paths and str(rotated) not in paths for paths in opened)

        wait_until(everyone_reopened, WAIT, what="the master and every worker to reopen the log")
        send_mail(server.port, "after@example.org", "two@example.org", "after-rotation")
        mail_with(maildir, "after-rotation", 2)
        wait_until(lambda: "<after@example.org>" in read_text(log), WAIT,
                   what="the next delivery in the new log")
        assert "<after@example.org>" not in read_text(rotated)
        assert server.process is not None and server.process.poll() is None
    assert server.process is not None and server.process.returncode == 0


# -- (e) the systemd units -----------------------------------------------------

SYSTEMD_UNITS = ("msmtpd.service", "msmtpd.socket", "msmtpd-inetd.socket", "msmtpd-inetd@.service")


def systemd_verify(analyze: str, units: Sequence[Path]) -> Tuple[int, List[str]]:
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "notice", "SYSTEMD_PAGER": "cat"}
    done = subprocess.run([analyze, "verify", "--man=no", *map(str, units)], cwd=units[0].parent,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=60)
    return done.returncode, (done.stdout + done.stderr).splitlines()


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    copies = []
    for name in SYSTEMD_UNITS:
        text = (ETC / "systemd" / name).read_text()
        copy = tmp_path / name
        copy.write_text(text.replace("/usr/local/bin/msmtpd", program("msmtpd")))
        copies.append(copy)

    code, lines = systemd_verify(analyze, copies)
    about_units = [line for line in lines
                   if str(tmp_path) in line or any(name.split(".")[0] in line for name in SYSTEMD_UNITS)]
    assert about_units == [], "\n".join(lines)
    assert code == 0, "\n".join(lines)

    # The check is live: the same tool run flags a broken copy of the unit.
    broken = tmp_path / f"broken-{uuid.uuid4().hex[:8]}.service"
    broken.write_text(copies[0].read_text().replace("KillMode=", "KillMood="))
    _, lines = systemd_verify(analyze, [broken])
    assert any("KillMood" in line for line in lines), "\n".join(lines)
