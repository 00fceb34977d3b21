"""The ``recovery`` section: what history and recovery cost, how fast a gap comes back, a full cache's memory.

* cost: zmqbus pub/sub (the guide-shaped message, as :mod:`.pubsub`) with history on and off
  (``$ZMQBUS_HISTORY``), alternating rounds, medians; ``kept`` is on over off;
* restart: a forwarder process frozen (SIGSTOP) while 200 messages are published into it, then killed;
  the seconds from the new forwarder's start until the subscriber has every message (recovered from
  the publisher's history), and how many were recovered;
* memory: a publisher's cache filled to its default bounds with guide-shaped frames, in this process:
  the resident memory it took.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from typing import Any

from ..framework.procs import environment, forwarder_process, stop_process, tcp_endpoints
from .common import Progress
from .pubsub import pubsub_once

__all__ = ["run_recovery"]


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cache_memory() -> dict[str, Any]:
    """Fill a default-bounded history with 330-byte guide-shaped frames; its resident memory."""
    from ..core.history import HistoryCache

    gc.collect()
    before = _rss_kb()
    cache = HistoryCache()
    frame = b"order.start.request\0" + os.urandom(306)
    for seq in range(1, cache.max_messages + 1):
        cache.record(b"order.start.request\0", seq, frame + seq.to_bytes(4, "big"), 0.0)  # each its own object
    after = _rss_kb()
    out = {"messages": len(cache), "frame_bytes": cache.bytes, "rss_mb": round((after - before) / 1024, 1)}
    del cache
    gc.collect()
    return out


async def _restart_once() -> dict[str, Any]:
    from ..bus.broker import MessageBroker
    from ..core.message import ProcessingMessage

    pub_ep, sub_ep = tcp_endpoints()
    first = forwarder_process(pub_ep, sub_ep, stats_interval=None)
    second = None
    try:
        async with MessageBroker(pub_ep, sub_ep) as sub, MessageBroker(pub_ep, sub_ep) as pub:
            got: list[int] = []
            sub.subscribe("bench", "bench.recovery", lambda m: got.append(m.content))
            await sub.ready(20)
            for i in range(100):
                await pub.publish(ProcessingMessage("bench.recovery", i))
            while len(got) < 100:
                await asyncio.sleep(0.01)
            os.kill(first.pid, signal.SIGSTOP)  # type: ignore[arg-type]
            await asyncio.sleep(0.1)
            for i in range(100, 300):
                await pub.publish(ProcessingMessage("bench.recovery", i))
            await asyncio.sleep(0.2)
            os.kill(first.pid, signal.SIGKILL)  # type: ignore[arg-type]
            first.join(5)
            started = time.monotonic()
            second = forwarder_process(pub_ep, sub_ep, stats_interval=None)
            deadline = started + 20
            while len(got) < 300 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            took = time.monotonic() - started
            stats = sub.statistics()
            return {
                "seconds_to_recovered": round(took, 3),
                "delivered": len(got),
                "in_order_once": got == list(range(len(got))),
                "recovered": stats.recovery.get("recovered", 0),
                "lost": stats.gaps,
            }
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_process(proc, timeout=3.0)


def run_recovery(quick: bool = False, progress: Progress = lambda s: None, label: str = "") -> dict[str, Any]:
    """The section (see the module docstring)."""
    count = 20_000 if quick else 200_000
    rounds = 1 if quick else 3
    runs: dict[str, list[int]] = {"on": [], "off": []}
    for r in range(rounds):
        for side, value in (("on", "1"), ("off", "0")):
            with environment({"ZMQBUS_HISTORY": value}):
                res = pubsub_once("zmqbus", count, 180, "guide", 1)
            runs[side].append(res["msgs_per_s"])
            progress(f"{label}round {r + 1}/{rounds}: history {side} {res['msgs_per_s']:,} msg/s")
    mid = {k: sorted(v)[(len(v) - 1) // 2] for k, v in runs.items()}
    restarts = [asyncio.run(_restart_once()) for _ in range(1 if quick else 3)]
    for res in restarts:
        progress(f"{label}forwarder killed with 200 messages in it: all back in {res['seconds_to_recovered']} s")
    memory = cache_memory()
    progress(f"{label}a full history ({memory['messages']:,} messages): {memory['rss_mb']} MB resident")
    times = sorted(r["seconds_to_recovered"] for r in restarts)
    return {
        "history_on_msgs_per_s": mid["on"],
        "history_off_msgs_per_s": mid["off"],
        "kept": round(mid["on"] / mid["off"], 3) if mid["off"] else 0.0,
        "rounds_msgs_per_s": runs,
        "restart": {"median_seconds_to_recovered": times[(len(times) - 1) // 2], "runs": restarts},
        "cache_memory": memory,
    }
