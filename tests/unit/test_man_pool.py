"""The manual's DESCRIPTION tells how the pool really grows (issue 17,
item 13): from --spare-workers idle workers, on demand, up to
--max-sessions; a real master is held to it in tests/system."""

from __future__ import annotations

import re

from tests.helpers import ROOT

MAN_PAGE = ROOT / "msmtpd.1"


def section(name: str) -> str:
    """A section of the man page as plain words (roff requests and escapes removed)."""
    source = MAN_PAGE.read_text()
    start = source.index(f".SH {name}\n")
    end = source.index("\n.SH ", start + 1)
    words = []
    for line in source[start:end].splitlines()[1:]:
        if line.startswith("."):
            line = line.partition(" ")[2] if " " in line else ""
        words.append(line.replace("\\-", "-").replace("\\c", "").replace("\\&", ""))
    return re.sub(r"\s+", " ", " ".join(words))


def test_the_description_says_the_pool_grows_from_the_spare_workers() -> None:
    text = section("DESCRIPTION")
    assert "pool of --max-sessions worker" not in text, text
    assert "--spare-workers idle workers ready" in text, text
    assert "never more than --max-sessions" in text, text
