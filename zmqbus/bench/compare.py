"""``zmqbus bench --compare BASELINE.json``: each figure of a run next to a saved report's, drops marked.

A figure *dropped* when it moved the wrong way by more than the run-to-run noise: the larger of the
spread of its rounds in either report (max minus min, over the median, where the report keeps rounds)
and a floor of ``NOISE_FLOOR`` (a single run on a shared 2-core machine moves that much). Ratios to
the raw baseline of the same run carry between machines; absolute figures are shown too, and only
ratios and the workflow rate are judged. Pure code: reports in, rows and text out.
"""

from __future__ import annotations

import statistics
from typing import Any, NamedTuple

__all__ = ["Figure", "Row", "figures", "compare", "format_compare", "NOISE_FLOOR"]

#: The smallest move called a change, relative (10%).
NOISE_FLOOR = 0.10


class Figure(NamedTuple):
    value: float
    higher_is_better: bool
    rounds: tuple[float, ...]  # every round's value where the report keeps them
    judged: bool  # False: shown for reference only (an absolute figure)


class Row(NamedTuple):
    name: str
    baseline: float | None
    now: float | None
    change: float | None  # relative, signed: positive is better
    noise: float
    verdict: str  # "better", "worse", "same", "new", "gone", "" (not judged)


def _spread(rounds: tuple[float, ...]) -> float:
    if len(rounds) < 2:
        return 0.0
    mid = statistics.median(rounds)
    return (max(rounds) - min(rounds)) / mid if mid else 0.0


def figures(report: dict[str, Any]) -> dict[str, Figure]:
    """The comparable figures of a ``zmqbus bench --json`` report (``report.json`` of ``--out``)."""
    s = report.get("sections", report)
    out: dict[str, Figure] = {}

    def add(name: str, value: Any, higher: bool = True, rounds: Any = (), judged: bool = True) -> None:
        if isinstance(value, (int, float)):
            out[name] = Figure(float(value), higher, tuple(float(x) for x in rounds or ()), judged)

    def pubsub_ratio(p: dict[str, Any]) -> tuple[float, ...]:
        zb, raw = p.get("zmqbus_rounds") or [], p.get("raw_rounds") or []
        return tuple(z / r for z, r in zip(zb, raw, strict=False) if r)

    if p := s.get("pubsub"):
        add("pubsub: ratio to raw", p.get("ratio"), rounds=pubsub_ratio(p))
        add("pubsub: zmqbus msg/s", p.get("zmqbus_msgs_per_s"), rounds=p.get("zmqbus_rounds"), judged=False)
        add("pubsub: raw msg/s", p.get("raw_msgs_per_s"), rounds=p.get("raw_rounds"), judged=False)
        if "batching_ratio" in p:
            raw = p.get("raw_rounds") or []
            b = tuple(x / r for x, r in zip(p.get("batching_rounds") or [], raw, strict=False) if r)
            add("pubsub: batching ratio to raw", p["batching_ratio"], rounds=b)
    for key in ("sizes", "fanout"):
        for p in s.get(key) or []:
            what = f"{p.get('content_bytes')} B" if key == "sizes" else f"{p.get('subscribers')} subscriber(s)"
            add(f"{key} {what}: ratio to raw", p.get("ratio"), rounds=pubsub_ratio(p))
    if lat := s.get("latency"):
        for q in ("p50", "p99"):
            zb, raw = lat.get("zmqbus", {}).get("latency_us", {}), lat.get("raw", {}).get("latency_us", {})
            if zb.get(q) and raw.get(q):
                add(f"latency {q}: zmqbus over raw", round(zb[q] / raw[q], 3), higher=False)
    if rr := s.get("reqrep"):
        add("reqrep p50: zmqbus over raw asyncio", rr.get("p50_ratio"), False, rr.get("p50_ratio_rounds"))
        tput = rr.get("throughput_ratio_rounds")
        add("reqrep 100 in flight: ratio to raw asyncio", rr.get("throughput_ratio"), True, tput)
        add("reqrep p50 us", rr.get("p50_us"), higher=False, judged=False)
        add("reqrep req/s, 100 in flight", rr.get("throughput_req_s"), judged=False)
    if wf := s.get("workflow"):
        add("workflow: workflows/s", wf.get("workflows_per_s"), rounds=wf.get("workflows_per_s_rounds"))
    return out


def compare(baseline: dict[str, Any], now: dict[str, Any], floor: float = NOISE_FLOOR) -> list[Row]:
    """One row per figure in either report, in the order of ``now`` then ``baseline``'s others."""
    before, after = figures(baseline), figures(now)
    rows: list[Row] = []
    for name in [*after, *(n for n in before if n not in after)]:
        b, a = before.get(name), after.get(name)
        if a is None or b is None:
            rows.append(
                Row(name, b.value if b else None, a.value if a else None, None, 0.0, "gone" if a is None else "new")
            )
            continue
        noise = max(floor, _spread(b.rounds), _spread(a.rounds))
        change = (a.value - b.value) / b.value if b.value else 0.0
        if not a.higher_is_better:
            change = -change
        verdict = "" if not a.judged else "worse" if change < -noise else "better" if change > noise else "same"
        rows.append(Row(name, b.value, a.value, change, noise, verdict))
    return rows


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def format_compare(rows: list[Row], baseline_name: str) -> str:
    """A markdown table, and a last line that says whether anything dropped."""
    lines = [
        f"## Compared with {baseline_name}",
        "",
        "| figure | baseline | now | change | noise | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        change = "-" if r.change is None else f"{r.change:+.1%}"
        noise = f"±{r.noise:.0%}" if r.change is not None else "-"
        verdict = f"**{r.verdict.upper()}**" if r.verdict == "worse" else r.verdict
        lines.append(f"| {r.name} | {_num(r.baseline)} | {_num(r.now)} | {change} | {noise} | {verdict} |")
    worse = [r.name for r in rows if r.verdict == "worse"]
    lines += ["", f"Dropped beyond the noise: {', '.join(worse)}." if worse else "Nothing dropped beyond the noise."]
    return "\n".join(lines)
