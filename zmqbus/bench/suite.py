"""The whole benchmark suite: every section next to its raw pyzmq baseline, one report.

Sections (``SECTIONS``), each run in its own processes on tcp loopback:

* ``pubsub``: the guide-shaped message, one subscriber: the headline ratio;
* ``sizes``: pub/sub throughput with 64 B, 1 KiB, 16 KiB and 64 KiB of content;
* ``fanout``: one publisher to 1, 2 and 4 subscriber processes;
* ``latency``: one-way latency percentiles at a fixed offered rate;
* ``reqrep``: request/reply with 1 and 100 requests in flight;
* ``workflow``: the demo workflow end to end (no raw equivalent exists);
* ``ha``: a redundant bus (two forwarders) against one, and a forwarder killed mid-run (:mod:`.ha`);
* ``recovery``: pub/sub with history on and off, the time until a killed forwarder's messages are
  recovered, a full history's memory (:mod:`.recovery`);
* ``peers`` (only with ``peers=True``): Redis and NATS, see :mod:`.peers`;
* ``secure_pubsub`` and ``secure_reqrep`` (only with ``secure=True``): what CURVE and a publish
  policy cost, raw and zmqbus both encrypted, next to zmqbus in clear.

``quick`` makes every section small enough for the whole suite to run in well
under a minute: it checks that the benchmarks work, its figures are rough.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from collections.abc import Callable
from typing import Any

from .common import Progress

__all__ = ["SECTIONS", "SIZES", "FANOUT", "run_suite", "check_targets"]

SECTIONS = ("pubsub", "sizes", "fanout", "latency", "reqrep", "workflow", "ha", "recovery")
SIZES = (64, 1024, 16 * 1024, 64 * 1024)
FANOUT = (1, 2, 4)

# Targets of the hot-path issue, as ratios measured in one run.
PUBSUB_TARGET = 0.8
BATCHING_TARGET = 1.5
REQREP_P50_TARGET = 1.2
REQREP_THROUGHPUT_TARGET = 0.75  # requests/s with 100 in flight, over the raw asyncio echo's


def _count(size: int, quick: bool) -> int:
    """Messages per run for a content size: about the same wall time for every size."""
    if quick:
        return 10_000 if size <= 1024 else 3_000 if size <= 16 * 1024 else 1_000
    return 200_000 if size <= 1024 else 40_000 if size <= 16 * 1024 else 12_000


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import msgpack
    import zmq

    from .. import __version__
    from ..core.codec import PROTOCOL_VERSION

    return {
        "zmqbus": __version__,
        "protocol": PROTOCOL_VERSION,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def run_suite(
    quick: bool = False,
    peers: bool = False,
    only: tuple[str, ...] = (),
    rate: float = 10_000.0,
    progress: Progress = lambda s: None,
    secure: bool = False,
) -> dict[str, Any]:
    """Run the selected sections (all by default) and return the report as a dict.

    A section that fails is reported as ``{"error": ...}`` and named in
    ``report["failed"]``; the others still run.
    """
    wanted = [s for s in SECTIONS if not only or s in only]
    if peers and (not only or "peers" in only):
        wanted.append("peers")
    if secure:
        wanted += [s for s in ("secure_pubsub", "secure_reqrep") if not only or s in only or s[7:] in only]
    t0 = time.monotonic()
    report: dict[str, Any] = {
        "suite": "zmqbus bench",
        "quick": quick,
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "sections": {},
    }
    sections: dict[str, Any] = report["sections"]

    def step(name: str, n: int, total: int) -> Callable[[str], None]:
        def say(text: str) -> None:
            progress(f"[{time.monotonic() - t0:6.1f} s] {name} ({n}/{total}) {text}")

        return say

    for n, name in enumerate(wanted, 1):
        say = step(name, n, len(wanted))
        say("...")
        try:
            sections[name] = _section(name, quick, rate, say)
        except Exception as exc:  # one broken section must not cost the others' figures
            sections[name] = {"error": f"{type(exc).__name__}: {exc}"}
            say(f"FAILED: {sections[name]['error']}")
    report["seconds"] = round(time.monotonic() - t0, 1)
    report["failed"] = [k for k, v in sections.items() if isinstance(v, dict) and "error" in v]
    report["targets"] = check_targets({k: v for k, v in sections.items() if k not in report["failed"]})
    return report


def _section(name: str, quick: bool, rate: float, say: Progress) -> Any:
    """Run one section and return its part of the report."""
    from .peers import run_peers
    from .pubsub import run_latency, run_pubsub, run_pubsub_secure
    from .reqrep import run_reqrep, run_reqrep_secure

    rounds = 1 if quick else 3
    if name == "pubsub":
        return run_pubsub(quick=quick, progress=say, batching=True)
    if name == "sizes":
        return [
            run_pubsub(
                count=_count(size, quick), size=size, shape="sized", rounds=rounds, progress=say, label=f"{size:,} B: "
            )
            for size in SIZES
        ]
    if name == "fanout":
        return [
            run_pubsub(
                count=10_000 if quick else 100_000,
                subscribers=k,
                rounds=rounds,
                progress=say,
                label=f"{k} subscriber(s): ",
            )
            for k in FANOUT
        ]
    if name == "latency":
        return run_latency(rate, 1.0 if quick else 4.0, progress=say, label=f"{rate:,.0f} msg/s: ")
    if name == "reqrep":
        return run_reqrep(quick=quick, progress=say)
    if name == "workflow":
        return _workflow(30 if quick else 300, say, rounds)
    if name == "peers":
        return run_peers(quick=quick, progress=say)
    if name == "ha":
        from .ha import run_ha

        return run_ha(quick=quick, progress=say)
    if name == "recovery":
        from .recovery import run_recovery

        return run_recovery(quick=quick, progress=say)
    if name == "secure_pubsub":
        return run_pubsub_secure(quick=quick, progress=say)
    if name == "secure_reqrep":
        return run_reqrep_secure(quick=quick, progress=say)
    raise ValueError(f"unknown section {name!r}")


def _workflow(workflows: int, say: Progress, rounds: int = 1) -> dict[str, Any]:
    """The demo, ``rounds`` times; the median round by workflows/s, with every round's figure."""
    from ..framework.demo import run_demo

    keep = (
        "workflows",
        "completed",
        "failed",
        "missing",
        "seconds",
        "workflows_per_s",
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_max_ms",
    )
    runs = []
    for r in range(rounds):
        summary = run_demo(workflows=workflows, echo=lambda s: None)
        out = {k: summary[k] for k in keep}
        say(
            f"round {r + 1}/{rounds}: {out['completed']}/{workflows} completed, {out['workflows_per_s']} "
            f"workflows/s, p50 {out['latency_p50_ms']} ms, p99 {out['latency_p99_ms']} ms"
        )
        runs.append(out)
    mid = dict(sorted(runs, key=lambda x: x["workflows_per_s"])[(len(runs) - 1) // 2])
    mid["rounds"] = rounds
    mid["workflows_per_s_rounds"] = [x["workflows_per_s"] for x in runs]
    return mid


def check_targets(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """The hot-path targets that the measured sections can decide: what, measured, target, met."""
    out: list[dict[str, Any]] = []

    def add(what: str, measured: float, target: str, met: bool) -> None:
        out.append({"target": what, "measured": measured, "goal": target, "met": met})

    ps, rr, peers = sections.get("pubsub"), sections.get("reqrep"), sections.get("peers", {})
    if ps:
        add("pub/sub throughput / raw pyzmq", ps["ratio"], f">= {PUBSUB_TARGET}", ps["ratio"] >= PUBSUB_TARGET)
        if "batching_ratio" in ps:
            add(
                "pub/sub with batching / raw pyzmq (one message per frame)",
                ps["batching_ratio"],
                f">= {BATCHING_TARGET}",
                ps["batching_ratio"] >= BATCHING_TARGET,
            )
        for peer in ("nats", "redis"):
            theirs = peers.get(peer, {}).get("pubsub", {}).get("msgs_per_s")
            if theirs:
                add(
                    f"pub/sub throughput / {peer}",
                    round(ps["zmqbus_msgs_per_s"] / theirs, 2),
                    "> 1",
                    ps["zmqbus_msgs_per_s"] > theirs,
                )
    if rr:
        add(
            "request/reply p50 / raw asyncio echo",
            rr["p50_ratio"],
            f"<= {REQREP_P50_TARGET}",
            rr["p50_ratio"] <= REQREP_P50_TARGET,
        )
        add(
            "requests/s with 100 in flight / raw asyncio echo",
            rr["throughput_ratio"],
            f">= {REQREP_THROUGHPUT_TARGET}",
            rr["throughput_ratio"] >= REQREP_THROUGHPUT_TARGET,
        )
        nats = peers.get("nats", {}).get("reqrep")
        if nats:
            add(
                "request/reply p50 / nats",
                round(rr["p50_us"] / nats["p50_us"], 2),
                "< 1",
                rr["p50_us"] < nats["p50_us"],
            )
            add(
                "requests/s, 100 in flight / nats",
                round(rr["throughput_req_s"] / nats["throughput_req_s"], 2),
                "> 1",
                rr["throughput_req_s"] > nats["throughput_req_s"],
            )
    return out
