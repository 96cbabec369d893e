"""The table of rows 1 to 6: medians over the rounds, the ratio ours / C,
the floor beside, and the rounds' spread of the CPU lines."""

from __future__ import annotations

import statistics
from typing import Dict, List, Optional, Tuple

from benchkit.bench.cpu import CPU_METRIC, Counter, cpu_method
from benchkit.bench.programs import FLOOR

Samples = Dict[Tuple[str, str], List[Dict[str, float]]]


def row(load: str, metric: str, mine: float, theirs: Optional[float], ratio: Optional[float],
        base: Optional[float], note: str = "", digits: int = 1) -> str:
    """One line of the table; a missing figure is a dash."""
    def cell(value: Optional[float], width: int, places: int) -> str:
        return f"{value:{width}.{places}f}" if value is not None else f"{'-':>{width}}"
    line = f"{load:42} {metric:11} {mine:10.{digits}f} {cell(theirs, 10, digits)} {cell(ratio, 7, 2)}"
    if base is not None:
        line += f" {base:15.{digits}f}"
    return line + (f"  {note}" if note else "")


def spread(ours: List[float], theirs: List[float]) -> str:
    """The rounds' range of ours, of C and of the ratio ours/C taken round
    by round (ours and C alternate within each round)."""
    text = f"rounds: ours {min(ours):.2f}-{max(ours):.2f}"
    if theirs:
        text += f", C {min(theirs):.2f}-{max(theirs):.2f}"
        ratios = [mine / other for mine, other in zip(ours, theirs) if other]
        if ratios:
            text += f", ratio {min(ratios):.2f}-{max(ratios):.2f}"
    return text


def report(samples: Samples, rounds: int, counter: Optional[Counter]) -> None:
    loads = sorted({load for load, _ in samples})
    print(f"\nmedians of {rounds} round(s); ratio = ours / C "
          f"(for ms and MB lower is better, for rates higher is better)")
    if any(CPU_METRIC in s for sample in samples.values() for s in sample):
        print(cpu_method(counter))
    print(f"{'load':42} {'metric':11} {'ours':>10} {'C':>10} {'ratio':>7} {FLOOR:>15}")
    for load in loads:
        ours = samples.get((load, "ours"), [])
        other = samples.get((load, "C"), [])
        floor = samples.get((load, FLOOR), [])
        for metric in ours[0] if ours else []:
            mine = statistics.median(s[metric] for s in ours)
            theirs = statistics.median(s[metric] for s in other) if other else None
            base = statistics.median(s[metric] for s in floor) if floor else None
            ratio = mine / theirs if theirs else None
            if metric == CPU_METRIC:
                note = spread([s[metric] for s in ours], [s[metric] for s in other])
                print(row(load, metric, mine, theirs, ratio, base, note, digits=2))
            else:
                print(row(load, metric, mine, theirs, ratio, base))
