"""Unit tests of the connection layer's deadlines, on a simulated clock and
transport (no sockets, no sleeping): whole-request deadlines, the write
deadline, DATA's minimum rate, and the worker's watch."""

from __future__ import annotations

from typing import List, Optional, Tuple

import pytest

from msmtpd.net.connection import (
    MIN_DATA_RATE,
    TICK_SECONDS,
    ClientNotReading,
    Connection,
    DataTooSlow,
    Overloaded,
    RequestTimeout,
    Transport,
)
from tests.helpers import Clock

TIMEOUT = 3.0




class SimulatedClient(Transport):
    """Bytes that arrive at given times; a client that reads or does not."""

    def __init__(self, clock: Clock, arrivals: List[Tuple[float, bytes]], reads: bool = True) -> None:
        super().__init__(-1, -1)
        self.clock = clock
        self.arrivals = list(arrivals)
        self.reads = reads
        self.received = b""  # what the client got from us

    def wait(self, writing: bool, seconds: float, wake_fd: Optional[int]) -> bool:
        if writing:
            if self.reads:
                return True
            self.clock.now += seconds
            return False
        if self.arrivals and self.arrivals[0][0] <= self.clock.now + seconds:
            self.clock.now = max(self.clock.now, self.arrivals[0][0])
            return True
        if not self.arrivals:  # end of input is readable at once
            return True
        self.clock.now += seconds
        return False

    def recv(self, size: int) -> bytes:
        if not self.arrivals:
            return b""
        return self.arrivals.pop(0)[1]

    def send(self, data: memoryview) -> int:
        if not self.reads:
            raise BlockingIOError()
        self.received += bytes(data)
        return len(data)


def trickle(text: bytes, every: float, start: float = 0.0) -> List[Tuple[float, bytes]]:
    return [(start + every * (i + 1), text[i:i + 1]) for i in range(len(text))]


def connection(arrivals: List[Tuple[float, bytes]], reads: bool = True,
               watch: Optional[object] = None) -> Tuple[Connection, SimulatedClient, Clock]:
    clock = Clock()
    client = SimulatedClient(clock, arrivals, reads)
    return Connection(client, TIMEOUT, watch=watch, clock=clock), client, clock  # type: ignore[arg-type]


def test_a_line_trickled_within_the_deadline_is_read() -> None:
    conn, _, _ = connection(trickle(b"NOOP\r\n", every=0.4))
    assert conn.readline(100) == b"NOOP\r\n"


def test_a_trickled_line_is_bounded_as_a_whole() -> None:
    """One byte every 2 s never leaves the line silent for 3 s, yet the
    whole line must be complete 3 s after the previous reply."""
    conn, _, clock = connection(trickle(b"NOOP\r\n", every=2.0))
    with pytest.raises(RequestTimeout):
        conn.readline(100)
    assert clock.now <= TIMEOUT + 0.01


def test_the_deadline_starts_again_after_each_reply() -> None:
    arrivals = trickle(b"NOOP\r\n", every=0.4) + trickle(b"NOOP\r\n", every=0.4, start=2.4)
    conn, client, clock = connection(arrivals)
    assert conn.readline(100) == b"NOOP\r\n"
    clock.now = 2.4
    conn.write(b"250 OK\r\n")
    assert conn.readline(100) == b"NOOP\r\n"  # complete 4.8 s after start, 2.4 s after the reply
    assert client.received == b"250 OK\r\n"


def test_replies_go_out_before_the_connection_waits_for_input() -> None:
    conn, client, _ = connection([(0.1, b"QUIT\r\n")])
    conn.write(b"220 hi\r\n")
    assert client.received == b""
    conn.readline(100)
    assert client.received == b"220 hi\r\n"


def test_a_client_that_does_not_read_is_dropped_after_the_timeout() -> None:
    conn, _, clock = connection([], reads=False)
    conn.write(b"250 OK\r\n")
    with pytest.raises(ClientNotReading):
        conn.flush()
    assert TIMEOUT <= clock.now <= TIMEOUT + 0.01


def test_a_big_batch_of_replies_is_sent_without_waiting_for_a_read() -> None:
    """Past the write buffer, replies go out even mid-batch, so a deaf
    pipelining client is found out while it floods us."""
    conn, _, _ = connection([], reads=False)
    with pytest.raises(ClientNotReading):
        for _ in range(100_000):
            conn.write(b"250 2.0.0 OK\r\n")


def test_data_may_pause_but_not_for_the_timeout() -> None:
    conn, _, clock = connection([(0.5, b"x" * 2000), (0.5 + TIMEOUT + 1, b"y")])
    conn.begin_data()
    assert conn.read_chunk() == b"x" * 2000
    with pytest.raises(RequestTimeout):
        conn.read_chunk()
    assert clock.now == pytest.approx(0.5 + TIMEOUT)


def test_data_under_the_minimum_rate_is_too_slow() -> None:
    """100 octets every 0.5 s is never silent, but far under 500 octets/s."""
    arrivals = [(0.5 * (i + 1), b"z" * 100) for i in range(40)]
    conn, _, clock = connection(arrivals)
    conn.begin_data()
    with pytest.raises(DataTooSlow):
        while conn.read_chunk():
            pass
    assert TIMEOUT <= clock.now <= TIMEOUT + 1


def test_data_at_the_minimum_rate_goes_on() -> None:
    per_step = MIN_DATA_RATE // 2 + 10
    arrivals = [(0.5 * (i + 1), b"z" * per_step) for i in range(40)]
    conn, _, _ = connection(arrivals)
    conn.begin_data()
    total = 0
    while True:
        chunk = conn.read_chunk()
        if not chunk:
            break
        total += len(chunk)
    assert total == 40 * per_step


class Watch:
    wake_fd = -1

    def __init__(self, overload_after: Optional[float] = None) -> None:
        self.calls: List[Tuple[bool, bool]] = []
        self.overload_after = overload_after

    def check(self, connection: Connection, reading: bool) -> None:
        self.calls.append((reading, connection.awaiting_command))
        if (self.overload_after is not None and reading and connection.awaiting_command
                and connection.idle_seconds >= self.overload_after):
            raise Overloaded()

    def before_read(self, connection: Connection) -> None:
        self.check(connection, reading=True)


def test_the_watch_is_consulted_every_tick_while_waiting() -> None:
    watch = Watch()
    conn, _, _ = connection([(2.5, b"NOOP\r\n")], watch=watch)
    assert conn.readline(100) == b"NOOP\r\n"
    assert len(watch.calls) >= 2.5 / TICK_SECONDS
    assert all(reading and awaiting for reading, awaiting in watch.calls)


def test_the_watch_may_close_an_idle_session() -> None:
    watch = Watch(overload_after=2.0)
    conn, _, clock = connection([(2.9, b"NOOP\r\n")], watch=watch)
    with pytest.raises(Overloaded):
        conn.readline(100)
    assert clock.now < 2.9


def test_during_data_the_session_is_not_awaiting_a_command() -> None:
    watch = Watch(overload_after=0.5)
    conn, _, _ = connection([(2.0, b"x" * 2000), (2.5, b"more\r\n")], watch=watch)
    conn.begin_data()
    assert conn.read_chunk() == b"x" * 2000  # no overload close in DATA
    assert watch.calls and not any(awaiting for _, awaiting in watch.calls)
    conn.end_data()
    assert conn.awaiting_command


# -- BDAT chunks (RFC 3030) read under DATA's deadlines --------------------------


def test_a_chunk_is_read_to_its_exact_size_and_no_further() -> None:
    conn, _, _ = connection([(0.1, b"BDAT 5\r\nab"), (0.2, b"cdeQUIT\r\n")])
    assert conn.readline(100) == b"BDAT 5\r\n"
    pieces: List[bytes] = []
    assert conn.receive_octets(5, pieces.append) == 5
    assert b"".join(pieces) == b"abcde"
    assert conn.readline(100) == b"QUIT\r\n"
    assert conn.awaiting_command


def test_a_chunk_cut_short_by_end_of_input_says_how_much_arrived() -> None:
    conn, _, _ = connection([(0.1, b"abc")])
    assert conn.receive_octets(10, lambda piece: None) == 3


def test_a_chunk_under_the_minimum_rate_is_too_slow() -> None:
    """A BDAT chunk trickled at 200 octets/s is never silent, but too slow."""
    arrivals = [(0.5 * (i + 1), b"z" * 100) for i in range(40)]
    conn, _, clock = connection(arrivals)
    with pytest.raises(DataTooSlow):
        conn.receive_octets(4000, lambda piece: None)
    assert TIMEOUT <= clock.now <= TIMEOUT + 1
    assert conn.awaiting_command  # the chunk's deadlines are over


def test_a_silent_chunk_times_out() -> None:
    conn, _, clock = connection([(0.5, b"z" * 10), (0.5 + TIMEOUT + 1, b"y")])
    with pytest.raises(RequestTimeout):
        conn.receive_octets(20, lambda piece: None)
    assert clock.now == pytest.approx(0.5 + TIMEOUT)
