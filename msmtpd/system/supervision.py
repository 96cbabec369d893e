"""The rules a supervisor applies to any child it keeps alive (the master
to its workers and to the queue runner): the back-off after deaths at
start, the words for how a child ended, and the stop's margin.  Pure
rules with an injected clock, so they are tested without a process."""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing at run time costs every process some 1.6 MB and 3 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Callable

# A child that died young is replaced after 0.1 s, 0.2 s, 0.4 s ... up to
# MAX_RESPAWN_DELAY, not in a tight loop.
FIRST_RESPAWN_DELAY = 0.1
MAX_RESPAWN_DELAY = 10.0
# After the stop's grace time (--timeout): how long children get to end
# their own delivery commands and record it before they are killed.
STOP_MARGIN_SECONDS = 2.0


def respawn_delay(deaths: int) -> float:
    """The wait before replacing a child after ``deaths`` young deaths in a row."""
    return min(FIRST_RESPAWN_DELAY * 2.0 ** (deaths - 1), MAX_RESPAWN_DELAY)


def exit_text(code: int) -> str:
    """How a child ended, for the log; ``code`` as from waitstatus_to_exitcode."""
    return f"exit status {code}" if code >= 0 else f"signal {-code}"


class Backoff:
    """When the next child of one kind may start: at once, unless the
    last ones died young."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.deaths = 0
        self.next_start = 0.0

    def ended(self, young: bool) -> None:
        """A child ended; ``young``: so soon that its replacement waits."""
        if young:
            self.deaths += 1
            self.next_start = self.clock() + respawn_delay(self.deaths)
        else:
            self.deaths = 0

    def may_start(self) -> bool:
        return self.clock() >= self.next_start
