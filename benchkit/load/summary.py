"""The report of a run as text: counts, throughput, latency percentiles,
kills, the queue, the verdict."""

from __future__ import annotations

from typing import Any, Dict, Sequence


def percentiles(values: Sequence[float]) -> Dict[str, float]:
    """Nearest-rank percentiles, in milliseconds."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        index = max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 100)) - 1))
        return round(ordered[index] * 1000, 2)

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": round(ordered[-1] * 1000, 2)}


def describe_latency(name: str, values: Dict[str, float]) -> str:
    if not values:
        return f"  latency per {name}: no data"
    return (f"  latency per {name}: p50 {values['p50']:.1f} ms, p90 {values['p90']:.1f} ms, "
            f"p99 {values['p99']:.1f} ms, max {values['max']:.1f} ms")


def summary(report: Dict[str, Any]) -> str:
    counts = report["mails"]
    verdict = report["verdict"]
    lines = [f"msmtpd load: {counts['total']} mails over {report['concurrency']} concurrent sessions, "
             f"{report['per_session']} per session, {report['retries']} retries"]
    if report["server"]["started"]:
        lines.append(f"  server: msmtpd --max-sessions={report['server']['max_sessions']}, "
                     f"store: {report['store']}" + (", --queue" if "queue" in report else ""))
    lines.append(f"  {counts['acknowledged']} answered 250, {counts['not_acknowledged']} not "
                 f"acknowledged, {counts['never_sent']} never sent; {counts['attempts']} attempts "
                 f"in {report['sessions']} sessions ({report['session_failures']} failed to start)")
    lines.append(f"  throughput: {report['throughput']:.1f} mails/s "
                 f"({counts['acknowledged']} in {report['seconds']:.2f} s)")
    lines.append(describe_latency("mail (MAIL FROM to the reply after the dot)",
                                  report["latency_ms"]["mail"]))
    lines.append(describe_latency("session (connect to QUIT)", report["latency_ms"]["session"]))
    kills = report["kills"]
    if kills["rate"]:
        lines.append(f"  workers killed: {kills['done']} ({kills['while_delivering']} while delivering, "
                     f"{kills['missed']} missed)")
    queue = report.get("queue")
    if queue:
        lines.append(f"  queue: emptied in {queue['drain_seconds']:.2f} s after the load, "
                     f"{queue['attempts']} delivery attempts, {queue['left']} left, "
                     f"{queue['failed']} failed")
    lines.append(f"  store: {verdict['files']} files; {verdict['delivered_once']} acknowledged mails "
                 f"stored exactly once")
    for key, text in (("lost", "lost (answered 250, not stored)"),
                      ("duplicated", "duplicated (one transaction stored twice)"),
                      ("refused_delivered", "stored although answered 4xx/5xx"),
                      ("premature", "stored although the final dot was never sent"),
                      ("unexpected", "stored but never sent"),
                      ("corrupt", "stored differently from what was sent")):
        lines.append(f"  {text}: {verdict[key]}")
    lines.append(f"  RFC 1047 window: {verdict['window']} attempts stored without a 250 reaching the "
                 f"client ({verdict['window_repeats']} mails thereby stored twice after a retry)")
    if report["stragglers"]:
        lines.append(f"  delivery commands still running after the load: seen {report['stragglers']} times")
    for problem in report["problems"]:
        lines.append(f"    {problem}")
    if report["stopped"]:
        lines.append(f"  stopped early: {report['stopped']}")
    if report.get("kept"):
        lines.append(f"  kept: {report['kept']}")
    lines.append(f"  result: {'OK' if report['ok'] else 'FAILED'}")
    return "\n".join(lines)
