"""The summary at the end: each aim of issue 22 beside this run's figure,
"met" or by how much it is missed."""

from __future__ import annotations

import statistics
from typing import Dict, List, NamedTuple, Optional

from benchkit.bench.cpu import CPU_METRIC
from benchkit.bench.load_tables import BEYOND, ratio_figure
from benchkit.bench.programs import AIOSMTPD, FLOOR
from benchkit.bench.report import Samples
from benchkit.bench.start_to_listen import START_AIM

INETD_ROW, PSS_ROW = "4 --inetd sessions", "6 memory PSS"
# load key: (ours / C throughput at least, beyond the command at most); the same beyond aim for aiosmtpd
AIMS_AGAINST_C = {"1": (2.5, 0.5), "2": (1.3, 0.5), "3": (1.2, 0.5)}
AIM_AGAINST_AIOSMTPD, AIM_AIOSMTPD_LOADS = 2.0, ("1", "2")  # throughput, on these loads
AIM_INETD = 2.5  # an --inetd session, times the interpreter's floor
AIM_IDLE_MB = 12.0  # PSS of the idle tree


class Aim(NamedTuple):
    what: str
    figure: Optional[float]
    rounds: List[float]  # the figure round by round, for its range
    at_least: bool  # the figure must be >= target (else <=)
    target: float
    unit: str = "x"


def verdict(aim: Aim) -> str:
    if aim.figure is None:
        return "not measured"
    short = aim.target - aim.figure if aim.at_least else aim.figure - aim.target
    return "met" if short <= 0 else f"missed by {short:.2f}{aim.unit}"


def load_aims(load_samples: Samples) -> List[Aim]:
    """Throughput and CPU beyond the command, ours / C and ours / aiosmtpd."""
    aims = []
    for key, (throughput, beyond) in AIMS_AGAINST_C.items():
        rate = "MB/s" if key == "3" else "mails/s"
        aims.append(Aim(f"load {key}: throughput, ours/C", *ratio_figure(load_samples, key, "C", rate),
                        True, throughput))
        aims.append(Aim(f"load {key}: CPU beyond the command, ours/C",
                        *ratio_figure(load_samples, key, "C", BEYOND), False, beyond))
    for key in AIMS_AGAINST_C:
        rate = "MB/s" if key == "3" else "mails/s"
        if key in AIM_AIOSMTPD_LOADS:
            aims.append(Aim(f"load {key}: throughput, ours/aiosmtpd",
                            *ratio_figure(load_samples, key, AIOSMTPD, rate), True, AIM_AGAINST_AIOSMTPD))
        aims.append(Aim(f"load {key}: CPU beyond the command, ours/aiosmtpd",
                        *ratio_figure(load_samples, key, AIOSMTPD, BEYOND), False, AIMS_AGAINST_C[key][1]))
    return aims


def other_aims(samples: Samples, start_times: Dict[str, List[float]]) -> List[Aim]:
    """--inetd against its floor, the idle PSS, start to listening."""
    ours = [s["p50 ms"] for s in samples.get((INETD_ROW, "ours"), [])]
    floor = [s["p50 ms"] for s in samples.get((INETD_ROW, FLOOR), [])]
    inetd = [mine / base for mine, base in zip(ours, floor)]
    idle = [s["idle MB"] for s in samples.get((PSS_ROW, "ours"), [])]
    start = None
    if start_times.get("ours") and start_times.get(FLOOR):
        start = statistics.median(start_times["ours"]) / statistics.median(start_times[FLOOR])
    return [
        Aim("--inetd, one-mail session / the floor (p50)",
            statistics.median(ours) / statistics.median(floor) if ours and floor else None, inetd, False,
            AIM_INETD),
        Aim("idle PSS of ours (master and spare workers)", statistics.median(idle) if idle else None, idle,
            False, AIM_IDLE_MB, " MB"),
        Aim("start to listening / the floor (medians)", start, [], False, START_AIM),
    ]


def report_aims(load_samples: Samples, samples: Samples, start_times: Dict[str, List[float]]) -> None:
    """The summary table; aims whose rows were not run say "not measured"."""
    print(f"\nthe aims of issue 22 (figure: the ratio of the medians or the median, then the rounds' "
          f"min-max; {CPU_METRIC} beyond the command as in the load tables)")
    print(f"{'aim':50} {'figure (rounds)':>24} {'aim':>10}  verdict")
    for aim in load_aims(load_samples) + other_aims(samples, start_times):
        figure = "-" if aim.figure is None else f"{aim.figure:.2f}{aim.unit}"
        if len(aim.rounds) > 1:
            figure += f" ({min(aim.rounds):.2f}-{max(aim.rounds):.2f})"
        target = f"{'>=' if aim.at_least else '<='} {aim.target:g}{aim.unit}"
        print(f"{aim.what:50} {figure:>24} {target:>10}  {verdict(aim)}")
