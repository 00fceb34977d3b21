"""Pub/sub through a forwarder: zmqbus next to raw pyzmq + msgpack, in the same run.

Both sides move the same content from one publisher process through a
forwarder process (tcp loopback) to one or more subscriber processes:

* raw: a sync ``PUB`` sending ``[topic, msgpack(dict)]`` in a tight loop
  through ``zmq.proxy`` (XSUB/XPUB) to asyncio subscribers that drain their
  ``SUB`` with non-blocking receives and unpack each message: the practical
  limit of Python on the machine.
* zmqbus: ``await broker.publish(ProcessingMessage(...))``, the zmqbus
  forwarder, and ``MessageBroker`` subscribers that decode, validate, track
  sequence numbers and call an async handler.

Two modes. Throughput (``rate=0``): the publisher sends as fast as it can and
each subscriber counts from its first message to its last. Latency
(``rate>0``): the publisher sends at a fixed offered rate, stamping each
message with ``time.perf_counter()`` (CLOCK_MONOTONIC, one clock for every
process on the host) just before sending, and each subscriber records the
one-way latency of every message.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

from ..core.stats import percentiles
from ..framework.procs import environment, forwarder_process, spawn, tcp_endpoints
from .common import (
    DATA_TOPIC,
    RAW_CURVE_ENV,
    TRACE_ENV,
    Progress,
    bench_keys,
    collect,
    guide_content,
    maybe_trace,
    pace,
    raw_curve,
    sized_content,
    wait_idle,
    wait_readable,
)

__all__ = ["run_pubsub", "run_pubsub_secure", "run_pubsub_traced", "pubsub_once", "guide_content"]

_IDLE = 2.0  # a subscriber stops after this long without a message: the rest is lost
_PROBE = "bench.probe"


def _content(size: int, shape: str) -> dict[str, Any]:
    return guide_content(size) if shape == "guide" else sized_content(size)


class _Tally:
    """What one subscriber saw: count, first/last arrival, and latencies when stamped."""

    __slots__ = ("n", "first", "last", "lat", "stamped")

    def __init__(self, stamped: bool) -> None:
        self.n, self.first, self.last, self.stamped = 0, 0.0, 0.0, stamped
        self.lat: list[float] = []

    def result(self, warmup: float = 0.05) -> dict[str, Any]:
        out: dict[str, Any] = {"received": self.n, "seconds": self.last - self.first}
        if self.stamped:
            out["latency_us"] = percentiles(self.lat[int(len(self.lat) * warmup) :])
        return out


# -- raw pyzmq ----------------------------------------------------------------


def _raw_forwarder(pub: str, sub: str) -> None:
    import zmq

    ctx = zmq.Context()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    for s in (xsub, xpub):
        s.sndhwm = s.rcvhwm = 100_000
        raw_curve(s, server=True)
    xsub.bind(pub)
    xpub.bind(sub)
    zmq.proxy(xsub, xpub)


def _raw_publisher(pub: str, count: int, size: int, shape: str, rate: float, gos: list[Any]) -> None:
    import msgpack
    import zmq

    sock = zmq.Context().socket(zmq.PUB)
    sock.sndhwm = 100_000
    raw_curve(sock, server=False)
    sock.connect(pub)
    topic = DATA_TOPIC.encode()
    content = _content(size, shape)
    payload = {
        "message_type": DATA_TOPIC,
        "content": content,
        "metadata": {
            "correlation_id": "c-1",
            "source_component": "manager",
            "target_component": "processor",
            "message_id": "m-1",
            "timestamp": time.time(),
        },
    }
    while not all(go.is_set() for go in gos):  # probes until every subscriber has seen one
        sock.send_multipart([_PROBE.encode(), b"\x90"])
        time.sleep(0.01)
    pack, send, clock = msgpack.Packer().pack, sock.send, time.perf_counter
    md: dict[str, Any] = payload["metadata"]  # type: ignore[assignment]
    start = clock()
    for i in range(count):
        if rate:
            pace(start, i, rate)
            content["t"] = clock()
        md["message_id"] = i
        send(topic, zmq.SNDMORE)
        send(pack(payload))
    sock.close(linger=5000)


async def _raw_subscribe(sub: str, count: int, go: Any, stamped: bool) -> dict[str, Any]:
    import msgpack
    import zmq

    sock = zmq.Context().socket(zmq.SUB)
    sock.rcvhwm = 100_000
    raw_curve(sock, server=False)
    sock.connect(sub)
    sock.subscribe(b"bench")
    loop = asyncio.get_running_loop()
    woke = asyncio.Event()
    loop.add_reader(int(sock.getsockopt(zmq.FD)), woke.set)
    recv, unpack, clock = sock.recv, msgpack.unpackb, time.perf_counter
    tally = _Tally(stamped)
    lat = tally.lat
    probe = _PROBE.encode()
    while tally.n < count:
        try:
            topic = recv(zmq.NOBLOCK)
            body = recv(zmq.NOBLOCK)
        except zmq.Again:
            if not await wait_readable(sock, woke, _IDLE):
                break
            continue
        obj = unpack(body)
        if topic == probe:
            go.set()
            continue
        now = clock()
        if stamped:
            lat.append(now - obj["content"]["t"])
        if tally.n == 0:
            tally.first = now
        tally.n += 1
        tally.last = now
    return tally.result()


def _raw_subscriber(sub: str, count: int, go: Any, stamped: bool, results: Any) -> None:
    results.put(asyncio.run(_raw_subscribe(sub, count, go, stamped)))


# -- zmqbus -------------------------------------------------------------------


async def _zb_publish(pub: str, sub: str, count: int, size: int, shape: str, rate: float, gos: list[Any]) -> None:
    from ..bus.broker import MessageBroker
    from ..core.message import MessageMetadata, ProcessingMessage

    async with MessageBroker(pub, sub, name="manager", linger=5.0) as broker:
        for go in gos:
            go.wait(30)
        content = _content(size, shape)
        publish, clock = broker.publish, time.perf_counter
        start = clock()
        for i in range(count):
            if rate:
                pace(start, i, rate)
                if i % 64 == 0:
                    await asyncio.sleep(0)  # let the broker's own tasks run between blocking sleeps
                content["t"] = clock()
            await publish(
                ProcessingMessage(
                    DATA_TOPIC,
                    content,
                    MessageMetadata(correlation_id="c-1", source_component="manager", target_component="processor"),
                )
            )


def _zb_publisher(pub: str, sub: str, count: int, size: int, shape: str, rate: float, gos: list[Any]) -> None:
    maybe_trace()
    asyncio.run(_zb_publish(pub, sub, count, size, shape, rate, gos))


async def _zb_subscribe(pub: str, sub: str, count: int, go: Any, stamped: bool) -> dict[str, Any]:
    from ..bus.broker import MessageBroker
    from ..core.message import ProcessingMessage

    tally = _Tally(stamped)
    lat = tally.lat
    done = asyncio.Event()
    clock = time.perf_counter

    async def handle(msg: ProcessingMessage) -> None:
        now = clock()
        if stamped:
            lat.append(now - msg.content["t"])
        if tally.n == 0:
            tally.first = now
        tally.last = now
        tally.n += 1
        if tally.n >= count:
            done.set()

    async with MessageBroker(pub, sub, name="processor") as broker:
        broker.subscribe("processor", DATA_TOPIC + ".#", handle)
        await broker.ready()
        go.set()
        await wait_idle(done, lambda: tally.n, _IDLE)
        out = tally.result()
        out["gaps_counted"] = broker.statistics().gaps
    return out


def _zb_subscriber(pub: str, sub: str, count: int, go: Any, stamped: bool, results: Any) -> None:
    maybe_trace()
    results.put(asyncio.run(_zb_subscribe(pub, sub, count, go, stamped)))


# -- driver -------------------------------------------------------------------


def pubsub_once(
    kind: str,
    count: int,
    size: int = 180,
    shape: str = "guide",
    subscribers: int = 1,
    rate: float = 0.0,
    keys: str | None = None,
    policy: bool = False,
    trace: bool = False,
) -> dict[str, Any]:
    """One run of one side (``"raw"`` or ``"zmqbus"``); see the module docstring.

    ``keys``: a key folder (:func:`bench_keys`): CURVE on every socket of that side; ``policy``: the
    zmqbus side also applies the folder's publish-restricting policy.
    """
    if trace:
        with environment({TRACE_ENV: "1"}):
            return _pubsub_once(kind, count, size, shape, subscribers, rate)
    if keys is None:
        return _pubsub_once(kind, count, size, shape, subscribers, rate)
    env = {RAW_CURVE_ENV: keys} if kind == "raw" else {"ZMQBUS_KEYS": keys, "ZMQBUS_KEY_NAME": "client"}
    if policy and kind != "raw":
        env["ZMQBUS_POLICY"] = f"{keys}/policy.toml"
    with environment(env):  # every process of that side reads it
        return _pubsub_once(kind, count, size, shape, subscribers, rate)


def _pubsub_once(kind: str, count: int, size: int, shape: str, subscribers: int, rate: float) -> dict[str, Any]:
    mp = multiprocessing.get_context("spawn")
    pub, sub = tcp_endpoints()
    gos = [mp.Event() for _ in range(subscribers)]
    results = mp.Queue()
    stamped = rate > 0
    if kind == "raw":
        procs = [spawn(_raw_forwarder, pub, sub, name="raw-forwarder")]
        procs += [
            spawn(_raw_subscriber, sub, count, go, stamped, results, name=f"raw-sub-{i}") for i, go in enumerate(gos)
        ]
        procs.append(spawn(_raw_publisher, pub, count, size, shape, rate, gos, name="raw-pub"))
    else:
        procs = [forwarder_process(pub, sub, stats_interval=None)]
        procs += [
            spawn(_zb_subscriber, pub, sub, count, go, stamped, results, name=f"zmqbus-sub-{i}")
            for i, go in enumerate(gos)
        ]
        procs.append(spawn(_zb_publisher, pub, sub, count, size, shape, rate, gos, name="zmqbus-pub"))
    timeout = 40 + count / 2_000 + (count / rate if rate else 0)
    subs = collect(procs, results, subscribers, timeout)
    rates = [(s["received"] - 1) / s["seconds"] if s["received"] > 1 and s["seconds"] > 0 else 0.0 for s in subs]
    received = sum(s["received"] for s in subs)
    out: dict[str, Any] = {
        "msgs_per_s": round(min(rates)),  # the slowest subscriber's rate
        "deliveries_per_s": round(sum(rates)),
        "received": received,
        "lost": count * subscribers - received,
        "seconds": round(max(s["seconds"] for s in subs), 4),
    }
    if kind == "zmqbus":
        out["gaps_counted"] = sum(s["gaps_counted"] for s in subs)
    if stamped:
        # the worst subscriber's percentiles (one subscriber in the latency section)
        out["latency_us"] = max((s["latency_us"] for s in subs), key=lambda p: p["p99"])
        out["offered_rate"] = rate
    return out


def run_pubsub(
    quick: bool = False,
    count: int | None = None,
    size: int = 180,
    rounds: int | None = None,
    shape: str = "guide",
    subscribers: int = 1,
    progress: Progress = lambda s: None,
    label: str = "",
    batching: bool = False,
) -> dict[str, Any]:
    """Throughput of both sides in alternating rounds; each side's median round is reported. ``batching``:
    a third side, zmqbus with publisher batching on (PROTOCOL.md section 2.4), in the same rounds.

    The median, not the best: the raw side's figure swings by up to 20% from
    round to round on a 2-core machine, and a best-of would reward whichever
    side swings more. Every round's figure is kept in ``*_rounds``.
    """
    count = count or (20_000 if quick else 200_000)
    rounds = rounds or (1 if quick else 3)
    kinds = ("raw", "zmqbus", "zmqbus_batching") if batching else ("raw", "zmqbus")
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for r in range(rounds):
        for kind in kinds:
            if kind == "zmqbus_batching":
                with environment({"ZMQBUS_BATCHING": "1"}):
                    res = pubsub_once("zmqbus", count, size, shape, subscribers)
            else:
                res = pubsub_once(kind, count, size, shape, subscribers)
            progress(f"{label}round {r + 1}/{rounds}: {kind} {res['msgs_per_s']:,} msg/s ({res['lost']} lost)")
            runs[kind].append(res)
    mid = {kind: sorted(rs, key=lambda x: x["msgs_per_s"])[(len(rs) - 1) // 2] for kind, rs in runs.items()}
    zb, raw = mid["zmqbus"]["msgs_per_s"], mid["raw"]["msgs_per_s"]
    extra: dict[str, Any] = {}
    if batching:
        b = mid["zmqbus_batching"]
        extra = {
            "batching_msgs_per_s": b["msgs_per_s"],
            "batching_ratio": round(b["msgs_per_s"] / raw, 3) if raw else 0.0,
            "batching": b,
            "batching_rounds": [x["msgs_per_s"] for x in runs["zmqbus_batching"]],
        }
    return {
        "benchmark": "pubsub",
        "count": count,
        "content_bytes": size,
        "shape": shape,
        "subscribers": subscribers,
        "rounds": rounds,
        "transport": "tcp loopback",
        "zmqbus_msgs_per_s": zb,
        "raw_msgs_per_s": raw,
        "ratio": round(zb / raw, 3) if raw else 0.0,
        "zmqbus": mid["zmqbus"],
        "raw": mid["raw"],
        "zmqbus_rounds": [x["msgs_per_s"] for x in runs["zmqbus"]],
        "raw_rounds": [x["msgs_per_s"] for x in runs["raw"]],
        **extra,
    }


def run_latency(
    rate: float, seconds: float, size: int = 180, progress: Progress = lambda s: None, label: str = ""
) -> dict[str, Any]:
    """One-way latency percentiles of both sides at a fixed offered ``rate`` (msg/s)."""
    count = max(200, int(rate * seconds))
    out: dict[str, Any] = {
        "benchmark": "latency",
        "offered_rate": rate,
        "count": count,
        "content_bytes": size,
        "transport": "tcp loopback",
    }
    for kind in ("raw", "zmqbus"):
        res = pubsub_once(kind, count, size, "guide", 1, rate)
        p = res["latency_us"]
        progress(
            f"{label}{kind} p50 {p['p50']:.0f} us, p99 {p['p99']:.0f} us, p99.9 {p['p999']:.0f} us ({res['lost']} lost)"
        )
        out[kind] = res
    return out


def _alternate(
    sides: dict[str, Callable[[], dict[str, Any]]], rounds: int, progress: Progress, label: str
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]], dict[str, int]]:
    """Run each side once per round, alternating; return every round, each side's median round, its rate."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for r in range(rounds):
        for name, side in sides.items():
            res = side()
            progress(f"{label}round {r + 1}/{rounds}: {name} {res['msgs_per_s']:,} msg/s ({res['lost']} lost)")
            runs[name].append(res)
    mid = {name: sorted(rs, key=lambda x: x["msgs_per_s"])[(len(rs) - 1) // 2] for name, rs in runs.items()}
    return runs, mid, {name: m["msgs_per_s"] for name, m in mid.items()}


def run_pubsub_traced(
    quick: bool = False,
    count: int | None = None,
    size: int = 180,
    rounds: int | None = None,
    progress: Progress = lambda s: None,
    label: str = "",
) -> dict[str, Any]:
    """What tracing costs: raw pyzmq, zmqbus with tracing off (the default) and zmqbus with
    OpenTelemetry tracing on (SDK tracer, every span batched to an exporter that drops them), in
    alternating rounds of one run; ``trace_cost`` is on over off."""
    count = count or (20_000 if quick else 200_000)
    rounds = rounds or (1 if quick else 3)
    runs, mid, rate = _alternate(
        {
            "raw": lambda: pubsub_once("raw", count, size, "guide", 1),
            "zmqbus": lambda: pubsub_once("zmqbus", count, size, "guide", 1),
            "zmqbus_traced": lambda: pubsub_once("zmqbus", count, size, "guide", 1, trace=True),
        },
        rounds,
        progress,
        label,
    )
    return {
        "benchmark": "pubsub_traced",
        "count": count,
        "content_bytes": size,
        "rounds": rounds,
        "transport": "tcp loopback",
        "raw_msgs_per_s": rate["raw"],
        "zmqbus_msgs_per_s": rate["zmqbus"],
        "zmqbus_traced_msgs_per_s": rate["zmqbus_traced"],
        "ratio": round(rate["zmqbus"] / rate["raw"], 3) if rate["raw"] else 0.0,
        "trace_cost": round(rate["zmqbus_traced"] / rate["zmqbus"], 3) if rate["zmqbus"] else 0.0,
        "lost": {name: m["lost"] for name, m in mid.items()},
        "rounds_msgs_per_s": {name: [x["msgs_per_s"] for x in rs] for name, rs in runs.items()},
    }


def run_pubsub_secure(
    quick: bool = False,
    count: int | None = None,
    size: int = 180,
    rounds: int | None = None,
    progress: Progress = lambda s: None,
    label: str = "",
) -> dict[str, Any]:
    """What CURVE costs: raw pyzmq with CURVE, zmqbus with CURVE, zmqbus in clear and zmqbus with CURVE
    and a publish policy, in alternating rounds of the same run (median round of each). ``ratio``
    compares the two CURVE sides; ``curve_cost`` is zmqbus with CURVE over zmqbus in clear;
    ``policy_cost`` zmqbus with a policy over zmqbus with CURVE alone."""
    import tempfile

    count = count or (20_000 if quick else 200_000)
    rounds = rounds or (1 if quick else 3)
    with tempfile.TemporaryDirectory(prefix="zmqbus-bench-keys-") as tmp:
        keys = bench_keys(f"{tmp}/keys")
        runs, mid, rate = _alternate(
            {
                "raw_curve": lambda: pubsub_once("raw", count, size, "guide", 1, keys=keys),
                "zmqbus_curve": lambda: pubsub_once("zmqbus", count, size, "guide", 1, keys=keys),
                "zmqbus_clear": lambda: pubsub_once("zmqbus", count, size, "guide", 1),
                "zmqbus_policy": lambda: pubsub_once("zmqbus", count, size, "guide", 1, keys=keys, policy=True),
            },
            rounds,
            progress,
            label,
        )
    return {
        "benchmark": "pubsub_secure",
        "count": count,
        "content_bytes": size,
        "rounds": rounds,
        "transport": "tcp loopback, CURVE",
        "raw_curve_msgs_per_s": rate["raw_curve"],
        "zmqbus_curve_msgs_per_s": rate["zmqbus_curve"],
        "zmqbus_clear_msgs_per_s": rate["zmqbus_clear"],
        "zmqbus_policy_msgs_per_s": rate["zmqbus_policy"],
        "policy_cost": round(rate["zmqbus_policy"] / rate["zmqbus_curve"], 3) if rate["zmqbus_curve"] else 0.0,
        "ratio": round(rate["zmqbus_curve"] / rate["raw_curve"], 3) if rate["raw_curve"] else 0.0,
        "curve_cost": round(rate["zmqbus_curve"] / rate["zmqbus_clear"], 3) if rate["zmqbus_clear"] else 0.0,
        "lost": {name: m["lost"] for name, m in mid.items()},
        "rounds_msgs_per_s": {name: [x["msgs_per_s"] for x in rs] for name, rs in runs.items()},
    }
