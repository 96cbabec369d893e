"""The client threads that send the mails (``Load``): C sessions at once,
M mails each, taken from one queue; what was not acknowledged goes back
while it has attempts left."""

from __future__ import annotations

import argparse
import collections
import threading
import time
from email.utils import formatdate
from typing import Deque, List, Sequence

from benchkit.load.client import Client, Dropped, SocketRegistry
from benchkit.load.mails import ACKED, REFUSED, Attempt, Mail, wire

EHLO_NAME = "load.example.test"
# Consecutive failed session starts (connect, greeting, EHLO) before the run
# gives up on the server.
MAX_SESSION_FAILURES = 500


class Load:
    """C client threads take batches of M mails from a shared queue; a mail
    that was not acknowledged goes back to the queue while it has attempts
    left; mails a broken session did not get to go back untouched."""

    def __init__(self, options: argparse.Namespace, mails: List[Mail], stop: threading.Event) -> None:
        self.options = options
        self.mails = mails
        self.stop = stop
        self.queue: Deque[Mail] = collections.deque(mails)
        self.outstanding = len(mails)
        self.condition = threading.Condition()
        self.registry = SocketRegistry()
        self.date = formatdate(usegmt=True)
        self.session_seconds: List[float] = []
        self.session_failures = 0
        self.consecutive_failures = 0
        self.gave_up = ""
        self.sessions = 0

    def run(self) -> List[threading.Thread]:
        threads = [threading.Thread(target=self._client, name=f"client-{n}", daemon=True)
                   for n in range(self.options.concurrency)]
        for thread in threads:
            thread.start()
        return threads

    def _take(self) -> List[Mail]:
        with self.condition:
            while not self.queue:
                if self.outstanding == 0 or self.stop.is_set():
                    return []
                self.condition.wait(0.1)
            if self.stop.is_set():
                return []
            count = min(self.options.per_session, len(self.queue))
            return [self.queue.popleft() for _ in range(count)]

    def _finish(self, mail: Mail) -> None:
        with self.condition:
            self.outstanding -= 1
            self.condition.notify_all()

    def _put_back(self, mails: Sequence[Mail]) -> None:
        with self.condition:
            self.queue.extendleft(reversed(mails))
            self.condition.notify_all()

    def _after_failure(self, mail: Mail) -> None:
        if len(mail.attempts) <= self.options.retries and not self.stop.is_set():
            with self.condition:
                self.queue.append(mail)
                self.condition.notify_all()
        else:
            self._finish(mail)

    def _session_failed(self, mails: Sequence[Mail]) -> None:
        self._put_back(mails)
        with self.condition:
            self.session_failures += 1
            self.consecutive_failures += 1
            if self.consecutive_failures >= MAX_SESSION_FAILURES and not self.gave_up:
                self.gave_up = f"{MAX_SESSION_FAILURES} sessions in a row failed to start"
                self.stop.set()
        time.sleep(0.02)

    def _client(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            self._session(batch)

    def _session(self, batch: List[Mail]) -> None:
        options = self.options
        started = time.monotonic()
        try:
            client = Client(options.host, options.port, options.timeout, self.registry)
        except Dropped:
            self._session_failed(batch)
            return
        pending = collections.deque(batch)
        try:
            if client.reply() != 220 or client.command(f"EHLO {EHLO_NAME}") != 250:
                raise Dropped("no greeting")
            with self.condition:
                self.consecutive_failures = 0
                self.sessions += 1
            while pending and not self.stop.is_set():
                mail = pending[0]
                attempt = Attempt(len(mail.attempts) + 1)
                mail.attempts.append(attempt)
                pending.popleft()
                payload = wire(mail.headers(attempt.number, self.date), mail.body)
                try:
                    client.transaction(mail, attempt, payload)
                finally:
                    if attempt.outcome == ACKED:
                        self._finish(mail)
                    else:
                        self._after_failure(mail)
                if attempt.outcome == REFUSED and client.command("RSET") != 250:
                    raise Dropped("RSET refused")
            if not pending:
                client.command("QUIT")
                with self.condition:
                    self.session_seconds.append(time.monotonic() - started)
            elif pending:
                self._put_back(list(pending))  # stopped early: the mails were never sent
        except Dropped:
            if len(pending) == len(batch):
                self._session_failed(batch)
            else:
                self._put_back(list(pending))
        finally:
            client.close()
