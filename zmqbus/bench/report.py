"""Turn a suite report (a dict) into markdown, and into a PNG plot when matplotlib is installed."""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["to_markdown", "plot", "write_report", "format_pubsub", "format_reqrep", "format_reqrep_secure"]


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 else f"{n} B"


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def to_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: one table per section, then the targets."""
    m = report["machine"]
    failed = {k: v["error"] for k, v in report["sections"].items() if isinstance(v, dict) and "error" in v}
    s = {k: v for k, v in report["sections"].items() if k not in failed}
    lines = [
        f"# zmqbus benchmark report{' (--quick: rough figures)' if report['quick'] else ''}",
        "",
        f"{report['started']}, {report['seconds']} s. zmqbus {m['zmqbus']} (protocol {m['protocol']}), "
        f"{m['implementation']} {m['python']}, pyzmq {m['pyzmq']}, libzmq {m['libzmq']}, msgpack {m['msgpack']}, "
        f"{m['cpus']} CPUs, {m['platform']}. Every figure is next to its raw pyzmq baseline from the same run; "
        "tcp loopback; each process on its own.",
        "",
    ]
    if "pubsub" in s:
        p = s["pubsub"]
        lines += [
            f"## Pub/sub through a forwarder: guide-shaped message ({p['content_bytes']} B content), "
            f"{p['count']:,} messages, median of {p['rounds']} rounds",
            "",
        ]
        lines += _table(
            ["side", "msg/s", "lost", "every round"],
            [
                [
                    "raw pyzmq + msgpack",
                    f"{p['raw_msgs_per_s']:,}",
                    p["raw"]["lost"],
                    ", ".join(f"{x:,}" for x in p["raw_rounds"]),
                ],
                [
                    "zmqbus",
                    f"{p['zmqbus_msgs_per_s']:,}",
                    p["zmqbus"]["lost"],
                    ", ".join(f"{x:,}" for x in p["zmqbus_rounds"]),
                ],
                ["**ratio**", f"**{p['ratio']:.2f}**", "", ""],
                *(
                    [
                        [
                            "zmqbus, batching on",
                            f"{p['batching_msgs_per_s']:,}",
                            p["batching"]["lost"],
                            ", ".join(f"{x:,}" for x in p["batching_rounds"]),
                        ],
                        ["**ratio, batching on**", f"**{p['batching_ratio']:.2f}**", "", ""],
                    ]
                    if "batching_ratio" in p
                    else []
                ),
            ],
        )
    if "sizes" in s:
        lines += ["## Pub/sub throughput by content size", ""]
        lines += _table(
            [
                "content",
                "messages",
                "raw msg/s",
                "zmqbus msg/s",
                "ratio",
                "raw MB/s",
                "zmqbus MB/s",
                "raw lost",
                "zmqbus lost",
            ],
            [
                [
                    _size(r["content_bytes"]),
                    f"{r['count']:,}",
                    f"{r['raw_msgs_per_s']:,}",
                    f"{r['zmqbus_msgs_per_s']:,}",
                    f"{r['ratio']:.2f}",
                    f"{r['raw_msgs_per_s'] * r['content_bytes'] / 1e6:,.0f}",
                    f"{r['zmqbus_msgs_per_s'] * r['content_bytes'] / 1e6:,.0f}",
                    r["raw"]["lost"],
                    r["zmqbus"]["lost"],
                ]
                for r in s["sizes"]
            ],
        )
        lines += [
            "A raw `PUB` drops at its high-water mark when the subscriber falls behind (counted as lost); "
            "zmqbus publishes with `XPUB_NODROP` and waits instead, so it loses nothing.",
            "",
        ]
    if "fanout" in s:
        lines += [
            "## Fan-out: one publisher, N subscriber processes (msg/s of the slowest subscriber; "
            "deliveries/s across all)",
            "",
        ]
        lines += _table(
            [
                "subscribers",
                "raw msg/s",
                "zmqbus msg/s",
                "ratio",
                "raw deliveries/s",
                "zmqbus deliveries/s",
                "zmqbus lost",
            ],
            [
                [
                    r["subscribers"],
                    f"{r['raw_msgs_per_s']:,}",
                    f"{r['zmqbus_msgs_per_s']:,}",
                    f"{r['ratio']:.2f}",
                    f"{r['raw']['deliveries_per_s']:,}",
                    f"{r['zmqbus']['deliveries_per_s']:,}",
                    r["zmqbus"]["lost"],
                ]
                for r in s["fanout"]
            ],
        )
    if "latency" in s:
        lat = s["latency"]
        lines += [
            f"## One-way latency at a fixed offered rate of {lat['offered_rate']:,.0f} msg/s "
            f"({lat['count']:,} messages, us)",
            "",
        ]
        rows = []
        for side in ("raw", "zmqbus"):
            p = lat[side]["latency_us"]
            rows.append(
                [side, p["p50"], p["p99"], p["p999"], p["max"], f"{lat[side]['msgs_per_s']:,}", lat[side]["lost"]]
            )
        lines += _table(["side", "p50", "p99", "p99.9", "max", "achieved msg/s", "lost"], rows)
    if "reqrep" in s:
        r = s["reqrep"]
        lines += [
            f"## Request/reply round trip ({r['latency_requests']:,} requests with 1 in flight, "
            f"{r['throughput_requests']:,} with 100 in flight; us)",
            "",
        ]
        rows = []
        for label, key in (
            ("raw sync echo (limit)", "sync"),
            ("raw asyncio echo (baseline)", "raw"),
            ("zmqbus", "zmqbus"),
        ):
            x = r[key]
            rows.append(
                [
                    label,
                    x["p50_us"],
                    x["p99_us"],
                    x["p999_us"],
                    f"{x['one_req_s']:,}",
                    x["many_p50_us"],
                    x["many_p99_us"],
                    f"{x['throughput_req_s']:,}",
                ]
            )
        nats = s.get("peers", {}).get("nats", {}).get("reqrep")
        if nats:
            rows.append(
                [
                    "nats-py (peer)",
                    nats["p50_us"],
                    nats["p99_us"],
                    nats["p999_us"],
                    f"{nats['one_req_s']:,}",
                    nats["many_p50_us"],
                    nats["many_p99_us"],
                    f"{nats['throughput_req_s']:,}",
                ]
            )
        lines += _table(["side", "1 in flight p50", "p99", "p99.9", "req/s", "100 in flight p50", "p99", "req/s"], rows)
        lines += [f"zmqbus / raw asyncio: p50 {r['p50_ratio']:.2f}x, throughput {r['throughput_ratio']:.2f}.", ""]
    if "secure_pubsub" in s:
        p = s["secure_pubsub"]
        lines += [f"## Pub/sub with CURVE ({p['count']:,} messages, median of {p['rounds']} rounds)", ""]
        lines += _table(
            ["side", "msg/s", "lost"],
            [
                ["raw pyzmq + CURVE", f"{p['raw_curve_msgs_per_s']:,}", p["lost"]["raw_curve"]],
                ["zmqbus + CURVE", f"{p['zmqbus_curve_msgs_per_s']:,}", p["lost"]["zmqbus_curve"]],
                ["zmqbus in clear", f"{p['zmqbus_clear_msgs_per_s']:,}", p["lost"]["zmqbus_clear"]],
                ["zmqbus + CURVE + publish policy", f"{p['zmqbus_policy_msgs_per_s']:,}", p["lost"]["zmqbus_policy"]],
            ],
        )
        lines += [
            f"zmqbus/raw with CURVE: **{p['ratio']:.2f}**; CURVE keeps {p['curve_cost']:.0%} of zmqbus in "
            f"clear; a publish policy keeps {p['policy_cost']:.0%} of CURVE alone.",
            "",
        ]
    if "secure_reqrep" in s:
        r = s["secure_reqrep"]
        lines += [f"## Request/reply with CURVE (best of {r['rounds']} rounds; us)", ""]
        lines += _table(
            ["side", "p50", "p99", "req/s, 100 in flight"],
            [
                [name, r[key]["p50_us"], r[key]["p99_us"], f"{r[key]['throughput_req_s']:,.0f}"]
                for name, key in (
                    ("raw asyncio + CURVE", "raw_curve"),
                    ("zmqbus + CURVE", "zmqbus_curve"),
                    ("zmqbus in clear", "zmqbus_clear"),
                )
            ],
        )
        lines += [f"zmqbus/raw with CURVE: p50 {r['p50_ratio']:.2f}x, throughput {r['throughput_ratio']:.2f}.", ""]
    if "ha" in s:
        h = s["ha"]
        f, one = h["failover"], h["single_restart"]
        lines += [f"## A redundant bus: two forwarders ({h['count']:,} messages, median of {h['rounds']} rounds)", ""]
        lines += _table(
            ["bus", "msg/s"],
            [
                ["one forwarder", f"{h['one_forwarder_msgs_per_s']:,}"],
                ["two forwarders (redundant)", f"{h['two_forwarders_msgs_per_s']:,}"],
            ],
        )
        lines += [
            f"Two over one: **{h['ratio']:.2f}**. At {f['rate']:,} msg/s, one of two forwarders killed "
            f"(SIGKILL) a third of the way through {f['count']:,} messages: **lost {f['lost']}, duplicated "
            f"{f['duplicated']}** ({f['copies_dropped']:,} second copies dropped). One forwarder killed and "
            f"restarted at once: lost {one['lost']} (counted {one['gaps_counted']}).",
            "",
        ]
    if "recovery" in s:
        rc = s["recovery"]
        rs, mem = rc["restart"], rc["cache_memory"]
        lines += ["## Recovery: publisher history and fetched gaps (PROTOCOL.md section 14)", ""]
        lines += _table(
            ["history", "msg/s"],
            [["on (the default)", f"{rc['history_on_msgs_per_s']:,}"], ["off", f"{rc['history_off_msgs_per_s']:,}"]],
        )
        lines += [
            f"On over off: **{rc['kept']:.2f}**. A forwarder killed with 200 messages in it: all recovered, in "
            f"order, **{rs['median_seconds_to_recovered']} s** after the new one started (median). A full history "
            f"({mem['messages']:,} messages of 330 B): {mem['rss_mb']} MB resident.",
            "",
        ]
    if "workflow" in s:
        w = s["workflow"]
        lines += ["## The demo workflow end to end (forwarder + 7 component processes, ipc)", ""]
        lines += _table(
            ["workflows", "completed", "failed", "missing", "workflows/s", "p50 ms", "p99 ms", "max ms"],
            [
                [
                    w["workflows"],
                    w["completed"],
                    w["failed"],
                    w["missing"],
                    w["workflows_per_s"],
                    w["latency_p50_ms"],
                    w["latency_p99_ms"],
                    w["latency_max_ms"],
                ]
            ],
        )
        if w.get("workflows_per_s_rounds"):
            rounds = ", ".join(f"{x:,}" for x in w["workflows_per_s_rounds"])
            lines += [f"The median of {w.get('rounds', 1)} round(s); workflows/s of every round: {rounds}.", ""]
    if "peers" in s:
        lines += ["## Peers: the same guide-shaped message through their servers", ""]
        rows = []
        zb = s.get("pubsub", {}).get("zmqbus_msgs_per_s")
        for name, entry in s["peers"].items():
            if "skipped" in entry or "failed" in entry:
                rows.append(
                    [
                        name,
                        f"skipped: {entry['skipped']}" if "skipped" in entry else f"failed: {entry['failed']}",
                        "",
                        "",
                    ]
                )
            else:
                ps = entry["pubsub"]
                rows.append([name, f"{ps['msgs_per_s']:,}", ps["lost"], _ratio(zb, ps["msgs_per_s"]) if zb else "-"])
        lines += _table(["peer", "pub/sub msg/s", "lost", "zmqbus / peer"], rows)
    for name, error in failed.items():
        lines += [f"## {name}: FAILED", "", f"`{error}`", ""]
    if report.get("targets"):
        lines += ["## Targets", ""]
        lines += _table(
            ["target", "measured", "goal", "met"],
            [[t["target"], t["measured"], t["goal"], "yes" if t["met"] else "**no**"] for t in report["targets"]],
        )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str) -> bool:
    """Write a PNG of throughput by size and latency percentiles; False if matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    s = {k: v for k, v in report["sections"].items() if not (isinstance(v, dict) and "error" in v)}
    panels = [k for k in ("sizes", "latency", "reqrep") if k in s]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, name in zip(axes[0], panels, strict=True):
        if name == "sizes":
            labels = [_size(r["content_bytes"]) for r in s["sizes"]]
            groups = {
                "raw pyzmq": [r["raw_msgs_per_s"] for r in s["sizes"]],
                "zmqbus": [r["zmqbus_msgs_per_s"] for r in s["sizes"]],
            }
            title, ylabel, log = "pub/sub throughput by content size", "msg/s (log)", True
        elif name == "latency":
            lat = s["latency"]
            labels = ["p50", "p99", "p99.9"]
            groups = {side: [lat[side]["latency_us"][k] for k in ("p50", "p99", "p999")] for side in ("raw", "zmqbus")}
            title, ylabel, log = f"one-way latency at {lat['offered_rate']:,.0f} msg/s", "us", False
        else:
            r = s["reqrep"]
            labels = ["1 in flight p50", "p99", "100 in flight p50", "p99"]
            keys = ("p50_us", "p99_us", "many_p50_us", "many_p99_us")
            groups = {"raw asyncio": [r["raw"][k] for k in keys], "zmqbus": [r["zmqbus"][k] for k in keys]}
            nats = s.get("peers", {}).get("nats", {}).get("reqrep")
            if nats:
                groups["nats-py"] = [nats[k] for k in keys]
            title, ylabel, log = "request/reply round trip", "us (log)", True
        width = 0.8 / len(groups)
        for i, (label, values) in enumerate(groups.items()):
            ax.bar([x + i * width for x in range(len(labels))], values, width, label=label)
        ax.set_xticks([x + width * (len(groups) - 1) / 2 for x in range(len(labels))], labels)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(report: dict[str, Any], out_dir: str) -> list[str]:
    """Write ``report.json``, ``report.md`` and (with matplotlib) ``report.png`` into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    path = os.path.join(out_dir, "report.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    written.append(path)
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write(to_markdown(report) + "\n")
    written.append(path)
    path = os.path.join(out_dir, "report.png")
    if plot(report, path):
        written.append(path)
    return written


def format_pubsub(result: dict[str, Any], size: int) -> str:
    """``zmqbus bench pubsub``'s text report."""
    z = result["zmqbus"]
    return "\n".join(
        [
            f"pub/sub through a forwarder, {result['count']:,} messages of ~{size} B content, "
            f"{result['transport']}, median of {result['rounds']} rounds:",
            f"  raw pyzmq + msgpack : {result['raw_msgs_per_s']:>10,} msg/s",
            f"  zmqbus              : {result['zmqbus_msgs_per_s']:>10,} msg/s"
            f"  (lost {z['lost']}, gaps counted {z['gaps_counted']})",
            f"  ratio zmqbus/raw    : {result['ratio']:.2f}",
            *(
                [
                    f"  zmqbus, batching on : {result['batching_msgs_per_s']:>10,} msg/s"
                    f"  (lost {result['batching']['lost']}, gaps counted {result['batching']['gaps_counted']})",
                    f"  ratio batching/raw  : {result['batching_ratio']:.2f}",
                ]
                if "batching_ratio" in result
                else []
            ),
        ]
    )


def format_pubsub_secure(result: dict[str, Any], size: int) -> str:
    """``zmqbus bench pubsub --secure``'s text report."""
    return (
        f"pub/sub with CURVE, {result['count']:,} messages of ~{size} B, median of {result['rounds']} round(s):\n"
        f"  raw pyzmq + CURVE   {result['raw_curve_msgs_per_s']:>9,} msg/s\n"
        f"  zmqbus + CURVE      {result['zmqbus_curve_msgs_per_s']:>9,} msg/s  (ratio {result['ratio']:.2f})\n"
        f"  zmqbus in clear     {result['zmqbus_clear_msgs_per_s']:>9,} msg/s  "
        f"(CURVE keeps {result['curve_cost']:.0%} of it)\n"
        f"  zmqbus + policy     {result['zmqbus_policy_msgs_per_s']:>9,} msg/s  "
        f"(a publish policy keeps {result['policy_cost']:.0%} of CURVE alone)\n"
        f"  lost: {result['lost']}"
    )


def format_pubsub_traced(result: dict[str, Any], size: int) -> str:
    """``zmqbus bench pubsub --trace``'s text report."""
    return (
        f"pub/sub, {result['count']:,} messages of ~{size} B, median of {result['rounds']} round(s):\n"
        f"  raw pyzmq + msgpack      {result['raw_msgs_per_s']:>9,} msg/s\n"
        f"  zmqbus, tracing off      {result['zmqbus_msgs_per_s']:>9,} msg/s  (ratio {result['ratio']:.2f})\n"
        f"  zmqbus, tracing on       {result['zmqbus_traced_msgs_per_s']:>9,} msg/s  "
        f"(keeps {result['trace_cost']:.0%} of off)\n"
        f"  lost: {result['lost']}"
    )


def format_reqrep(r: dict[str, Any]) -> str:
    """``zmqbus bench reqrep``'s text report."""
    lines = [
        f"request/reply, {r['transport']}, best of {r['rounds']} rounds:",
        f"  {'':28} {'p50 us':>9} {'p99 us':>9} {'req/s (100 in flight)':>22}",
    ]
    for label, key in (("raw sync echo (limit)", "sync_"), ("raw asyncio echo", "raw_"), ("zmqbus", "")):
        lines.append(
            f"  {label:28} {r[key + 'p50_us']:>9.0f} {r[key + 'p99_us']:>9.0f} {r[key + 'throughput_req_s']:>22,}"
        )
    lines.append(
        f"  p50 zmqbus/raw asyncio: {r['p50_ratio']:.2f}x   throughput zmqbus/raw asyncio: {r['throughput_ratio']:.2f}"
    )
    return "\n".join(lines)


def format_reqrep_secure(out: dict[str, Any]) -> str:
    """``bench reqrep --secure``: raw and zmqbus with CURVE, zmqbus in clear, and what CURVE costs."""
    lines = [f"request/reply with CURVE, best of {out['rounds']} round(s):"]
    for name in ("raw_curve", "zmqbus_curve", "zmqbus_clear"):
        side = out[name]
        lines.append(
            f"  {name:<13} p50 {side['p50_us']:>7,.0f} us   100 in flight {side['throughput_req_s']:>8,.0f} req/s"
        )
    lines.append(
        f"  zmqbus/raw with CURVE: p50 {out['p50_ratio']:.2f}x, throughput {out['throughput_ratio']:.2f}; "
        f"CURVE costs zmqbus {out['curve_p50_cost']:.2f}x p50 and keeps "
        f"{out['curve_throughput_kept']:.0%} of its throughput"
    )
    return "\n".join(lines)
