"""The tables of loads 1 to 3 (and 2s, load 2 with the compiled sink): per
server, its throughput, its CPU per mail and its CPU per mail beyond the
command itself, each the median of the rounds with the rounds' range; the
ratios ours / C and ours / aiosmtpd of all three; the latencies."""

from __future__ import annotations

import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from benchkit.bench.command_floor import runs_for
from benchkit.bench.cpu import CPU_METRIC
from benchkit.bench.daemon_loads import Load
from benchkit.bench.programs import AIOSMTPD
from benchkit.bench.report import Samples

COMMAND_ALONE = "the command"  # the floor's samples in load_samples: {"ms": CPU per run}, one a round
BEYOND = "beyond ms"  # CPU per mail minus the command's CPU per run, round by round
SERVERS = ("ours", "C", AIOSMTPD)
PEERS = ("C", AIOSMTPD)  # ours is compared with each
FIGURE_WIDTH = 19  # a median with its range: "618.5 (588.1-638.9)"


def series(load_samples: Samples, key: str, server: str, metric: str) -> List[float]:
    """One figure of one server under one load, round by round; the CPU
    beyond the command is computed from the command's figure of the same
    round (they were measured in the same minutes)."""
    samples = load_samples.get((key, server), [])
    if metric != BEYOND:
        return [sample[metric] for sample in samples]
    floors = [sample["ms"] for sample in load_samples.get((key, COMMAND_ALONE), [])]
    if not floors:
        return []
    if len(floors) != len(samples):  # a round without the floor: its median stands in
        floors = [statistics.median(floors)] * len(samples)
    return [sample[CPU_METRIC] - floor for sample, floor in zip(samples, floors)]


def median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def ratio(mine: Optional[float], theirs: Optional[float]) -> Optional[float]:
    """ours / theirs; none when either is missing or theirs is not above 0
    (CPU beyond the command can come out at or below 0 in a noisy round)."""
    return mine / theirs if mine is not None and theirs is not None and theirs > 0 else None


def ratio_series(load_samples: Samples, key: str, peer: str, metric: str) -> List[float]:
    """ours / peer, round by round (the servers alternate within each round)."""
    pairs = zip(series(load_samples, key, "ours", metric), series(load_samples, key, peer, metric))
    return [mine / theirs for mine, theirs in pairs if theirs > 0]


def median_ratio(load_samples: Samples, key: str, peer: str, metric: str) -> Optional[float]:
    """The ratio of the medians, as the tables show it."""
    return ratio(median(series(load_samples, key, "ours", metric)),
                 median(series(load_samples, key, peer, metric)))


def with_range(values: List[float]) -> str:
    """The median, and the min-max in brackets when there are several; two
    decimals below 10, one above (load 3's figures are in the tens and, for
    aiosmtpd, the hundreds of ms)."""
    if not values:
        return "-"
    places = 2 if abs(statistics.median(values)) < 10 else 1
    text = f"{statistics.median(values):.{places}f}"
    if len(values) > 1:
        text += f" ({min(values):.{places}f}-{max(values):.{places}f})"
    return text


def cell(value: Optional[float], width: int = 6, places: int = 2) -> str:
    return f"{value:{width}.{places}f}" if value is not None else f"{'-':>{width}}"


def report_loads(loads: List[Load], load_samples: Samples, commands: Dict[str, str], quick: bool) -> None:
    """A table per load; ``commands`` gives each load key's command, as the
    header names it."""
    print("\nloads 1 to 3: medians of the rounds, (the rounds' min-max); CPU ms/mail as described above; "
          "beyond = CPU ms/mail minus the\n   command's own CPU per run (measured alone in the same round); "
          "ratios are ours / the other server: for mails/s and\n   MB/s higher is better, for CPU lower; "
          "p50/p99: latency per mail, ms")
    for load in loads:
        if not any((load.key, server) in load_samples for server in SERVERS):
            continue
        floor = series(load_samples, load.key, COMMAND_ALONE, "ms")
        print(f"\nload {load.key}: {load.title}; {load.sessions * load.mails} mails a round; "
              f"command {commands[load.key]}")
        runs = runs_for(load.body, quick)
        print(f"   the command itself: {with_range(floor)} ms per run (its CPU, median of {runs} runs alone "
              "a round)")
        width = FIGURE_WIDTH
        print(f"{'':22} {'CPU ms/mail':<{width}} {'beyond the':<{width}} {'ours/C':^20}  "
              f"{'ours/aiosmtpd':^20}")
        print(f"{'':3} {'server':9} {load.rate:>7}  {'(rounds)':<{width}} {'command (rounds)':<{width}} "
              + f"{'rate':>6} {'CPU':>6} {'beyond':>6}  " * 2 + f"{'p50':>7} {'p99':>7}")
        for server in SERVERS:
            if (load.key, server) not in load_samples:
                continue
            print(table_line(load, load_samples, server))


def table_line(load: Load, load_samples: Samples, server: str) -> str:
    """One server's line of a load's table; ours carries the ratios."""
    def figure(metric: str) -> Optional[float]:
        return median(series(load_samples, load.key, server, metric))
    rate = figure(load.rate)
    ratios = " " * 44
    if server == "ours":
        ratios = "".join(" ".join(cell(median_ratio(load_samples, load.key, peer, metric))
                                  for metric in (load.rate, CPU_METRIC, BEYOND)) + "  " for peer in PEERS)
    return (f"{load.key:3} {server:9} {cell(rate, 7, 1)}  "
            f"{with_range(series(load_samples, load.key, server, CPU_METRIC)):<{FIGURE_WIDTH}} "
            f"{with_range(series(load_samples, load.key, server, BEYOND)):<{FIGURE_WIDTH}} {ratios}"
            f"{cell(figure('p50 ms'), 7, 1)} {cell(figure('p99 ms'), 7, 1)}")


def ratio_figure(load_samples: Samples, key: str, peer: str,
                 metric: str) -> Tuple[Optional[float], List[float]]:
    """For the aims: the ratio of the medians and the round-by-round ratios."""
    return median_ratio(load_samples, key, peer, metric), ratio_series(load_samples, key, peer, metric)
