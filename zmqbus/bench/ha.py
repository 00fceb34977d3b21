"""The ``ha`` section: a redundant bus (two forwarders) against one, and a forwarder killed mid-run.

* throughput: zmqbus pub/sub through one forwarder and through two (every
  client connected to both: the publisher sends each message twice and the
  subscriber drops the second copy), alternating rounds; ``ratio`` is two
  over one: what redundancy costs;
* failover: at a fixed rate (10,000 msg/s), one of two forwarders killed
  with SIGKILL a third of the way through: ``lost`` (numbers the subscriber
  never got) and ``duplicated`` (numbers it got twice) are both expected
  to be 0; then the same with one forwarder killed and restarted at once, for
  comparison (its loss is counted, not silent).

Each side runs in its own processes on tcp loopback, as :mod:`.pubsub` does.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from typing import Any

from ..framework.procs import forwarder_process, spawn, stop_process, tcp_endpoints
from .common import Progress, collect

__all__ = ["run_ha", "ha_once"]

_mp = multiprocessing.get_context("spawn")


async def _subscribe(pub: str, sub: str, count: int, ready: Any, idle: float) -> dict[str, Any]:
    from ..bus.broker import MessageBroker

    seen: list[int] = []
    first = last = 0.0
    async with MessageBroker(pub, sub, name="ha-sub") as b:

        def on(msg: Any) -> None:
            nonlocal first, last
            last = time.perf_counter()
            if not seen:
                first = last
            seen.append(msg.content["i"])

        b.subscribe("ha", "ha.data", on)
        await b.ready(30)
        ready.set()
        count_then, quiet_since = -1, time.monotonic()
        while len(seen) < count:  # until every number came, or nothing came for ``idle`` seconds
            await asyncio.sleep(0.05)
            if len(seen) != count_then:
                count_then, quiet_since = len(seen), time.monotonic()
            elif time.monotonic() - quiet_since > idle:
                break
        await asyncio.sleep(2.5)  # a redundant bus counts what is still missing after 2 s
        s = b.statistics()
    unique = len(set(seen))
    return {
        "received": len(seen),
        "unique": unique,
        "lost": count - unique,
        "duplicated": len(seen) - unique,
        "gaps_counted": s.gaps,
        "copies_dropped": s.duplicates,
        "msgs_per_s": round((unique - 1) / (last - first)) if unique > 1 and last > first else 0,
    }


def _subscriber(pub: str, sub: str, count: int, ready: Any, idle: float, results: Any) -> None:
    results.put(asyncio.run(_subscribe(pub, sub, count, ready, idle)))


async def _publish(pub: str, sub: str, count: int, rate: float, go: Any, mark: Any, mark_at: int) -> None:
    from ..bus.broker import MessageBroker
    from ..core.message import MessageMetadata, ProcessingMessage

    async with MessageBroker(pub, sub, name="ha-pub") as b:
        await b.ready(30)
        while not go.is_set():
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        start = loop.time()
        md = MessageMetadata(source_component="ha")
        for i in range(count):
            if i == mark_at:
                mark.set()
            if rate:
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await b.publish(ProcessingMessage("ha.data", {"i": i}, md))
        await b.close(linger=10)


def _publisher(pub: str, sub: str, count: int, rate: float, go: Any, mark: Any, mark_at: int) -> None:
    asyncio.run(_publish(pub, sub, count, rate, go, mark, mark_at))


def ha_once(
    forwarders: int, count: int, rate: float = 0.0, kill_at: float | None = None, restart: bool = False
) -> dict[str, Any]:
    """One run through ``forwarders`` forwarders; ``kill_at``: the fraction of the run's expected
    time at which the first forwarder gets SIGKILL (``restart``: and starts again at once)."""
    pairs = [tcp_endpoints() for _ in range(forwarders)]
    pub, sub = ",".join(p for p, _ in pairs), ",".join(s for _, s in pairs)
    fwds = [forwarder_process(p, s, stats_interval=None) for p, s in pairs]
    ready, go, mark, results = _mp.Event(), _mp.Event(), _mp.Event(), _mp.Queue()
    procs = [*fwds, spawn(_subscriber, pub, sub, count, ready, 5.0, results, name="ha-subscriber")]
    # The kill lands when the publisher has published that fraction (it says so), not after a fixed
    # time: on a loaded machine a late publisher once met a kill near its end, and the tail it sent
    # while the forwarder was down was lost where no later message could show it missing.
    mark_at = int(count * kill_at) if kill_at is not None and rate else -1
    try:
        if not ready.wait(40):
            raise RuntimeError("the ha subscriber did not get ready")
        procs.append(spawn(_publisher, pub, sub, count, rate, go, mark, mark_at, name="ha-publisher"))
        go.set()
        if mark_at >= 0:
            if not mark.wait(40):
                raise RuntimeError("the ha publisher did not reach the kill point")
            os.kill(fwds[0].pid, signal.SIGKILL)  # type: ignore[arg-type]
            fwds[0].join(10)
            if restart:
                fwds[0] = forwarder_process(*pairs[0], stats_interval=None)
                procs.append(fwds[0])
        (res,) = collect(procs[forwarders:], results, 1, 60 + count / 2_000)
    finally:
        for proc in procs:
            stop_process(proc, timeout=3.0)
    return dict(res)


def run_ha(quick: bool = False, progress: Progress = lambda s: None, label: str = "") -> dict[str, Any]:
    """The section: throughput with one forwarder and two, then a forwarder killed at 10,000 msg/s."""
    count = 20_000 if quick else 100_000
    rounds = 1 if quick else 3
    runs: dict[int, list[int]] = {1: [], 2: []}
    for r in range(rounds):
        for n in (1, 2):
            res = ha_once(n, count)
            runs[n].append(res["msgs_per_s"])
            progress(
                f"{label}round {r + 1}/{rounds}: {n} forwarder(s) {res['msgs_per_s']:,} msg/s "
                f"(lost {res['lost']}, duplicated {res['duplicated']})"
            )
    mid = {n: sorted(v)[(len(v) - 1) // 2] for n, v in runs.items()}
    killed_count = 15_000 if quick else 40_000
    killed = ha_once(2, killed_count, rate=10_000.0, kill_at=0.33)
    progress(
        f"{label}two forwarders, one killed at 10,000 msg/s: lost {killed['lost']}, duplicated {killed['duplicated']}"
    )
    single = ha_once(1, killed_count, rate=10_000.0, kill_at=0.33, restart=True)
    progress(
        f"{label}one forwarder killed and restarted at 10,000 msg/s: lost {single['lost']} "
        f"(counted {single['gaps_counted']})"
    )
    return {
        "benchmark": "ha",
        "count": count,
        "rounds": rounds,
        "transport": "tcp loopback",
        "one_forwarder_msgs_per_s": mid[1],
        "two_forwarders_msgs_per_s": mid[2],
        "ratio": round(mid[2] / mid[1], 3) if mid[1] else 0.0,
        "rounds_msgs_per_s": {"one": runs[1], "two": runs[2]},
        "failover": {
            "rate": 10_000,
            "count": killed_count,
            "lost": killed["lost"],
            "duplicated": killed["duplicated"],
            "copies_dropped": killed["copies_dropped"],
            "gaps_counted": killed["gaps_counted"],
        },
        "single_restart": {
            "rate": 10_000,
            "count": killed_count,
            "lost": single["lost"],
            "duplicated": single["duplicated"],
            "gaps_counted": single["gaps_counted"],
        },
    }
