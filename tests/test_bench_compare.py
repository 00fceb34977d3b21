"""`zmqbus bench --compare`: the pure part (zmqbus.bench.compare), reports in, verdicts out."""

from __future__ import annotations

import copy
from typing import Any

from zmqbus.bench.compare import compare, figures, format_compare


def report(ratio: float = 0.6, rounds: tuple[float, ...] = (0.58, 0.6, 0.62), p50: float = 1.3) -> dict[str, Any]:
    raw = [200_000.0] * len(rounds)
    return {
        "quick": False,
        "sections": {
            "pubsub": {
                "ratio": ratio,
                "zmqbus_msgs_per_s": ratio * 200_000,
                "raw_msgs_per_s": 200_000,
                "zmqbus_rounds": [r * 200_000 for r in rounds],
                "raw_rounds": raw,
            },
            "reqrep": {"p50_ratio": p50, "throughput_ratio": 0.5, "p50_ratio_rounds": [p50] * 3},
            "workflow": {"workflows_per_s": 700.0, "workflows_per_s_rounds": [650.0, 700.0, 760.0]},
        },
    }


def test_figures_know_which_way_is_better() -> None:
    f = figures(report())
    assert f["pubsub: ratio to raw"].higher_is_better and not f["reqrep p50: zmqbus over raw asyncio"].higher_is_better
    assert f["pubsub: ratio to raw"].rounds == (0.58, 0.6, 0.62)
    assert not f["pubsub: zmqbus msg/s"].judged  # absolute figures are shown, not judged


def test_a_drop_beyond_the_noise_is_marked_and_one_within_it_is_not() -> None:
    base = report()
    rows = {r.name: r for r in compare(base, report(ratio=0.45, rounds=(0.44, 0.45, 0.46), p50=1.35))}
    assert rows["pubsub: ratio to raw"].verdict == "worse"  # -25%, the noise is 10%
    assert rows["reqrep p50: zmqbus over raw asyncio"].verdict == "same"  # +4% slower: within the floor
    assert rows["workflow: workflows/s"].verdict == "same"
    assert rows["pubsub: ratio to raw"].change is not None and rows["pubsub: ratio to raw"].change < -0.2
    text = format_compare(list(rows.values()), "base.json")
    assert "**WORSE**" in text and text.endswith("Dropped beyond the noise: pubsub: ratio to raw.")


def test_the_noise_is_the_wider_of_the_rounds_spread_and_the_floor() -> None:
    base = report(rounds=(0.4, 0.6, 0.8))  # a spread of 67% of the median
    rows = {r.name: r for r in compare(base, report(ratio=0.45))}
    assert rows["pubsub: ratio to raw"].verdict == "same" and rows["pubsub: ratio to raw"].noise > 0.6
    rows = {r.name: r for r in compare(report(p50=1.5), report(p50=1.2))}
    assert rows["reqrep p50: zmqbus over raw asyncio"].verdict == "better"  # lower latency is better


def test_sections_in_one_report_only_are_listed_not_judged() -> None:
    now = copy.deepcopy(report())
    del now["sections"]["workflow"]
    rows = {r.name: r for r in compare(report(), now)}
    assert rows["workflow: workflows/s"].verdict == "gone"
    assert "Nothing dropped beyond the noise." in format_compare(list(rows.values()), "b")
