"""A tiny inetd for the system tests: msmtpd --inetd run on each connection of
a listening socket, as xinetd would, and the end of such a process."""

from __future__ import annotations

import socket
import subprocess
import threading
from typing import List, Sequence, Tuple

from tests import helpers
from tests.helpers import WAIT


def finish(process: subprocess.Popen[bytes]) -> Tuple[int, bytes]:
    try:
        _, err = process.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return process.returncode, err



class TinyInetd:
    """Accepts on an ephemeral loopback port and starts one
    ``msmtpd --inetd`` per connection, the socket as its stdin and stdout."""

    def __init__(self, args: Sequence[str]) -> None:
        self.args = [helpers.program("msmtpd"), "--inetd", *args]
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.processes: List[subprocess.Popen[bytes]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with connection:
                connection.setblocking(True)
                self.processes.append(subprocess.Popen(
                    self.args, stdin=connection.fileno(), stdout=connection.fileno(), stderr=subprocess.PIPE))

    def close(self) -> List[Tuple[int, bytes]]:
        self.stopping.set()
        self.thread.join(WAIT)
        self.listener.close()
        results = []
        for process in self.processes:
            results.append(finish(process))
        return results

