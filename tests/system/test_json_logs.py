"""``--log-format=json`` with real daemons and real clients, read by jq:
every line parses, every kind of event carries its fields, and hostile
client strings stay inside JSON strings on a bounded line."""

from __future__ import annotations

import json
import smtplib
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List

from tests import helpers
from tests.helpers import Server, auth_plain, dev_log, syslog_entries

FAIL_COMMAND = 'cat >/dev/null; case "$1" in fail@*) echo mailbox full >&2; exit 1;; esac; :'
# --log-format=json's bound on a line (msmtpd.base.json_log.MAX_JSON_LINE).
MAX_JSON_LINE = 4000


def jq_lines(text: str, program: str = ".") -> List[Dict[str, Any]]:
    """Each object jq finds in ``text``; jq fails (and so the test) on a line that is no JSON."""
    done = subprocess.run([helpers.tool("jq"), "-c", program], input=text.encode(),
                          capture_output=True, timeout=helpers.WAIT)
    assert done.returncode == 0, (done.stderr, text[-3000:])
    return [json.loads(line) for line in done.stdout.decode().split("\n") if line]  # not splitlines: U+2028


def events(objects: List[Dict[str, Any]], name: str, **fields: Any) -> List[Dict[str, Any]]:
    return [o for o in objects if o["event"] == name and all(o.get(k) == v for k, v in fields.items())]


def assert_every_line_is_one_object(text: str) -> List[Dict[str, Any]]:
    objects = jq_lines(text)
    assert len(objects) == len(text.splitlines()), text
    for line in text.splitlines():
        assert len(line) <= MAX_JSON_LINE, line[:200]
        assert line.isprintable(), line
    for obj in objects:
        assert {"time", "level", "pid", "event", "message"} <= obj.keys(), obj
        assert obj["level"] in ("info", "warning", "error")
        assert time.strptime(obj["time"][:19], "%Y-%m-%dT%H:%M:%S")
        assert obj["time"][19] == "." and obj["time"][23] in "+-" and obj["time"][26] == ":", obj
    return objects


def test_every_kind_of_line_in_a_json_log_file(tmp_path: Path) -> None:
    log = tmp_path / "msmtpd.log"
    users = tmp_path / "users"
    helpers.htpasswd(users, "alice", "secret", "-B", "-C", str(helpers.LOW_BCRYPT_COST))
    args = [f"--log={log}", "--log-format=json", f"--command={FAIL_COMMAND}", f"--auth-file={users}",
            "--max-size=2000", "--timeout=1"]
    with Server(args) as server:
        with smtplib.SMTP(server.host, server.port, timeout=helpers.WAIT) as client:
            client.ehlo("client.example")
            code, _ = client.docmd("AUTH", "PLAIN " + auth_plain("alice", "wrong"))
            assert code == 535
            client.login("alice", "secret")
            client.sendmail("alice@example.org", ["bob@example.org", "carol@example.org"],
                            b"Subject: ok\r\n\r\nhi\r\n")
            try:
                client.sendmail("alice@example.org", ["fail@example.org"], b"Subject: x\r\n\r\nx\r\n")
            except smtplib.SMTPDataError as exc:
                assert exc.smtp_code == 554
            else:
                raise AssertionError("the failed delivery was answered 250")
        with socket.create_connection((server.host, server.port)) as silent:
            silent.recv(1000)
            helpers.wait_for_log(log, '"reason":"timeout"')
    objects = assert_every_line_is_one_object(log.read_text())
    assert events(objects, "start")[0]["max_sessions"] == 16
    assert events(objects, "stop")
    assert len(events(objects, "session_start", peer="127.0.0.1")) >= 2  # and the port probe's
    assert events(objects, "auth", user="alice", result="failure", peer="127.0.0.1")
    assert events(objects, "auth", user="alice", result="success")
    [delivered] = events(objects, "mail", result="delivered")
    assert delivered["level"] == "info" and delivered["user"] == "alice"
    assert delivered["sender"] == "alice@example.org" and delivered["peer"] == "127.0.0.1"
    assert delivered["recipients"] == ["bob@example.org", "carol@example.org"]
    assert delivered["recipients_total"] == 2 and delivered["size"] > 0
    assert delivered["reply"].startswith("250 ") and isinstance(delivered["seconds"], float)
    [failed] = events(objects, "mail", result="permanent_failure")
    assert failed["level"] == "error" and failed["stderr"] == "mailbox full"
    assert failed["reply"].startswith("554 5.3.0") and failed["recipients"] == ["fail@example.org"]
    assert events(objects, "session_end", reason="timeout", peer="127.0.0.1")
    assert jq_lines(log.read_text(), 'select(.event == "mail") | .result') == ["delivered",
                                                                              "permanent_failure"]


def test_a_refused_mail_and_the_queue_in_json(tmp_path: Path) -> None:
    log = tmp_path / "msmtpd.log"
    maildir = tmp_path / "mail"
    args = [f"--log={log}", "--log-format=json", f"--command={helpers.maildir_command(maildir)}",
            f"--queue={tmp_path / 'queue'}", "--max-size=100"]
    with Server(args) as server:
        with smtplib.SMTP(server.host, server.port, timeout=helpers.WAIT) as client:
            client.sendmail("a@example.org", ["b@example.org"], b"Subject: q\r\n\r\nqueued\r\n")
            client.mail("a@example.org")  # no SIZE=: only the final dot can tell
            client.rcpt("b@example.org")
            assert client.data(b"x" * 500)[0] == 552
        helpers.wait_for_mails(maildir, 1)
        helpers.wait_for_log(log, '"event":"queue_delivered"')
    objects = assert_every_line_is_one_object(log.read_text())
    [queued] = events(objects, "mail", result="queued")
    mail_id = queued["queue_id"]
    assert queued["sender"] == "a@example.org" and queued["reply"] == f"250 2.0.0 OK, queued as {mail_id}"
    [attempt] = events(objects, "queue_attempt", queue_id=mail_id)
    assert attempt["result"] == "delivered" and attempt["attempt"] == 1 and attempt["peer"] == "127.0.0.1"
    assert events(objects, "queue_delivered", queue_id=mail_id, attempts=1)
    [refused] = events(objects, "mail", result="refused")
    assert refused["reason"] == "size" and refused["reply"].startswith("552 ") and refused["size"] > 100
    assert events(objects, "runner_start")


HOSTILE_USERS = [
    b'\x1b[31mred\x1b[0m"}\n{"event":"forged","level":"info"}\r\\',
    b"line\xe2\x80\xa8sep\xc2\x85c1\x7fdel\x08bs",
    b"bad utf-8 \xff\xfe\xc3(",
    b"a" * 40 + b"\xe2\x80\xa8" * 1000,  # 6000 characters as JSON escapes
]


def test_hostile_strings_stay_inside_json_strings_on_standard_error(tmp_path: Path) -> None:
    users = tmp_path / "users"
    helpers.htpasswd(users, "alice", "secret", "-B", "-C", str(helpers.LOW_BCRYPT_COST))
    sender = '"q\\"uo\\\\te\u2028"@example.org'
    args = ["--log=-", "--log-format=json", f"--auth-file={users}", f"--command={FAIL_COMMAND}"]
    server = Server(args).start()
    try:
        for user in HOSTILE_USERS:  # one session each: the third failure ends a session
            with smtplib.SMTP(server.host, server.port, timeout=helpers.WAIT) as client:
                client.ehlo("evil.example")
                code, _ = client.docmd("AUTH", "PLAIN " + auth_plain(user, "x"))
                assert code == 535, code
        with smtplib.SMTP(server.host, server.port, timeout=helpers.WAIT) as client:
            client.login("alice", "secret")
            client.sendmail(sender, ["b" * 60 + "@" + "x" * 180 + ".example"] * 40, b"hi\r\n",
                            mail_options=["SMTPUTF8"])
    finally:
        server.stop()
    assert server.process is not None and server.process.stderr is not None
    raw = server.process.stderr.read()
    for byte in (b"\x1b", b"\x00", b"\x7f", b"\r", "\u2028".encode(), "\x85".encode(), b"\xff"):
        assert byte not in raw, byte
    objects = assert_every_line_is_one_object(raw.decode("utf-8"))
    assert not events(objects, "forged")
    failures = events(objects, "auth", result="failure")
    names = [o["user"] for o in failures]
    assert names[0] == HOSTILE_USERS[0].decode()  # intact, only escaped
    assert names[1] == HOSTILE_USERS[1].decode()
    assert names[2] == "bad utf-8 \ufffd\ufffd\ufffd("
    assert names[3].startswith("a" * 40 + "\u2028") and names[3].endswith("more characters]")
    [mail] = events(objects, "mail", result="delivered")
    assert mail["sender"] == sender and mail["recipients_total"] == 40 and len(mail["recipients"]) == 2


def test_json_in_syslog_messages() -> None:
    conversation = (b"EHLO client.example\r\n"
                    b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
                    b"Subject: ok\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    with dev_log(listening=True) as (sock, prefix):
        assert sock is not None
        process, out, err = helpers.run_inetd_process(
            ["--log=syslog", "--log-format=json", f"--command={FAIL_COMMAND}"], conversation, prefix)
        entries = syslog_entries(sock, lambda got: any('"event":"mail"' in m for _, _, m in got))
    assert process.returncode == 0, err
    assert b"\r\n250 " in out
    objects = assert_every_line_is_one_object("\n".join(message for _, _, message in entries))
    assert {o["pid"] for o in objects} == {process.pid}
    assert events(objects, "session_start")
    [mail] = events(objects, "mail", result="delivered")
    assert mail["recipients"] == ["bob@example.org"] and entries[-1][0] == 22  # mail.info


def test_text_format_loads_no_json() -> None:
    """json (and the JSON formatter) load only when --log-format=json is chosen."""
    probe = ("import sys; from msmtpd.base import log_targets; "
             "log_targets.install(log_targets.open_handler('-', sys.argv[1])); "
             "print('msmtpd.base.json_log' in sys.modules, 'json' in sys.modules)")
    for log_format, loaded in (("text", "False False"), ("json", "True True")):
        done = subprocess.run([helpers.program("python"), "-c", probe, log_format],
                              capture_output=True, text=True, timeout=helpers.WAIT)
        assert done.stdout.strip() == loaded, done
