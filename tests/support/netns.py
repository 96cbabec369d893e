"""A network namespace joined to us by a veth pair, for tests that need a
client that is not on loopback.  Never the machine's own addresses: the
link gets a /30 of TEST-NET-2 and a /64 of the documentation prefix,
chosen by the test run's pid so that two runs at once do not collide."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from typing import Iterator, List

from tests import helpers

WAIT = 15.0
_SUBNET = 4 * (os.getpid() % 64)
HOST_ADDRESS = f"198.51.100.{_SUBNET + 1}"  # our end of the link
PEER_ADDRESS = f"198.51.100.{_SUBNET + 2}"  # the client's, in the namespace
HOST_ADDRESS6 = f"2001:db8:{os.getpid() % 65536:x}::1"
PEER_ADDRESS6 = f"2001:db8:{os.getpid() % 65536:x}::2"


@contextmanager
def veth_namespace(tag: str) -> Iterator[str]:
    """Yield the name of a namespace whose only link is a veth pair to us,
    with PEER_ADDRESS(6) there and HOST_ADDRESS(6) here; removed afterwards."""
    ip = helpers.tool("ip")
    helpers.need_root("network namespaces need root")
    name = f"msmtpd-{tag}-{os.getpid()}"
    host_end, peer_end = f"m{tag}{os.getpid()}h", f"m{tag}{os.getpid()}n"

    def ip_run(*args: str) -> None:
        done = subprocess.run([ip, *args], capture_output=True, text=True, timeout=WAIT)
        assert done.returncode == 0, (args, done.stderr)

    def remove() -> None:
        subprocess.run([ip, "link", "del", host_end], capture_output=True, timeout=WAIT)
        subprocess.run([ip, "netns", "del", name], capture_output=True, timeout=WAIT)

    remove()
    try:
        ip_run("netns", "add", name)
        ip_run("link", "add", host_end, "type", "veth", "peer", "name", peer_end)
        ip_run("link", "set", peer_end, "netns", name)
        ip_run("addr", "add", f"{HOST_ADDRESS}/30", "dev", host_end)
        ip_run("addr", "add", f"{HOST_ADDRESS6}/64", "dev", host_end, "nodad")
        ip_run("link", "set", host_end, "up")
        ip_run("-n", name, "addr", "add", f"{PEER_ADDRESS}/30", "dev", peer_end)
        ip_run("-n", name, "addr", "add", f"{PEER_ADDRESS6}/64", "dev", peer_end, "nodad")
        ip_run("-n", name, "link", "set", peer_end, "up")
        ip_run("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        remove()
        listed = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, timeout=WAIT)
        assert name not in listed.stdout


def inside(namespace: str, *command: str) -> List[str]:
    """``command`` run in the namespace."""
    return [helpers.tool("ip"), "netns", "exec", namespace, *command]
