"""What the unit tests (no sockets, no processes) share as fixtures."""

from __future__ import annotations

from typing import List

import pytest


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> List[float]:
    """Replaces time.sleep (used by the brute-force delay) with a recorder."""
    calls: List[float] = []
    monkeypatch.setattr("msmtpd.policy.passwords.time.sleep", calls.append)
    return calls
