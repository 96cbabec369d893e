"""The table of rows 4 to 6: medians over the rounds, the ratio ours / C,
aiosmtpd and the floor beside."""

from __future__ import annotations

import statistics
from typing import Dict, List, Optional, Tuple

from benchkit.bench.programs import AIOSMTPD, FLOOR

Samples = Dict[Tuple[str, str], List[Dict[str, float]]]


def row(load: str, metric: str, mine: float, theirs: Optional[float], ratio: Optional[float],
        base: Optional[float], note: str = "", digits: int = 1, peer: Optional[float] = None,
        with_peer: bool = False) -> str:
    """One line of the table; a missing figure is a dash."""
    def cell(value: Optional[float], width: int, places: int) -> str:
        return f"{value:{width}.{places}f}" if value is not None else f"{'-':>{width}}"
    line = f"{load:42} {metric:11} {mine:10.{digits}f} {cell(theirs, 10, digits)} {cell(ratio, 7, 2)}"
    if with_peer:
        line += f" {cell(peer, 10, digits)}"
    if base is not None:
        line += f" {base:15.{digits}f}"
    return line + (f"  {note}" if note else "")


def report(samples: Samples, rounds: int) -> None:
    loads = sorted({load for load, _ in samples})
    with_peer = any(server == AIOSMTPD for _, server in samples)
    print(f"\nrows 4 to 6: medians of {rounds} round(s); ratio = ours / C "
          f"(for ms and MB lower is better, for rates higher is better)")
    print(f"{'load':42} {'metric':11} {'ours':>10} {'C':>10} {'ratio':>7}"
          + (f" {AIOSMTPD:>10}" if with_peer else "") + f" {FLOOR:>15}")
    for load in loads:
        ours = samples.get((load, "ours"), [])
        other = samples.get((load, "C"), [])
        peer = samples.get((load, AIOSMTPD), [])
        floor = samples.get((load, FLOOR), [])
        for metric in ours[0] if ours else []:
            mine = statistics.median(s[metric] for s in ours)
            theirs = statistics.median(s[metric] for s in other) if other else None
            base = statistics.median(s[metric] for s in floor) if floor else None
            print(row(load, metric, mine, theirs, mine / theirs if theirs else None, base,
                      peer=statistics.median(s[metric] for s in peer) if peer else None, with_peer=with_peer))
