"""Pub/sub throughput: zmqbus next to raw pyzmq + msgpack, in the same run.

Both sides move the same guide-shaped message (type, correlation id, source,
target, about 180 bytes of content) from a publisher process through a
forwarder process (tcp loopback) to a subscriber process. The raw side is the
machine's practical limit for Python: a sync ``PUB`` publishing
``[topic, msgpack(dict)]`` through ``zmq.proxy`` to an asyncio subscriber that
drains its socket with non-blocking receives and unpacks each message.

Throughput is measured at the subscriber, from the first message received to
the last; messages not received within the idle timeout are reported as lost.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import time
from typing import Any, Callable

from ..procs import forwarder_process, spawn, stop_process, tcp_endpoints

__all__ = ["run_pubsub", "guide_content"]

_DATA_TOPIC = "bench.component.process.request"


def guide_content(size: int = 180) -> dict[str, Any]:
    """A guide-shaped content dict of roughly ``size`` encoded bytes."""
    filler = max(0, size - 90)
    return {"document_id": "doc-000123", "chunk_index": 7, "text": "x" * filler,
            "options": {"lang": "en", "normalize": True}}


# -- raw pyzmq ----------------------------------------------------------------

def _raw_forwarder(pub: str, sub: str) -> None:
    import zmq

    ctx = zmq.Context()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    for s in (xsub, xpub):
        s.sndhwm = s.rcvhwm = 100_000
    xsub.bind(pub)
    xpub.bind(sub)
    zmq.proxy(xsub, xpub)


def _raw_publisher(pub: str, count: int, size: int, go: Any) -> None:
    import msgpack
    import zmq

    sock = zmq.Context().socket(zmq.PUB)
    sock.sndhwm = 100_000
    sock.connect(pub)
    topic = _DATA_TOPIC.encode()
    payload = {"message_type": _DATA_TOPIC, "content": guide_content(size),
               "metadata": {"correlation_id": "c-1", "source_component": "manager",
                            "target_component": "processor", "message_id": "m-1", "timestamp": time.time()}}
    while not go.is_set():  # probes until the subscriber has seen one
        sock.send_multipart([b"bench.probe", b"\x90"])
        time.sleep(0.01)
    pack, send = msgpack.Packer().pack, sock.send
    for i in range(count):
        payload["metadata"]["message_id"] = i  # type: ignore[index]
        send(topic, zmq.SNDMORE)
        send(pack(payload))
    sock.close(linger=5000)


async def _raw_subscribe(sub: str, count: int, go: Any, idle: float) -> tuple[int, float]:
    import msgpack
    import zmq

    sock = zmq.Context().socket(zmq.SUB)
    sock.rcvhwm = 100_000
    sock.connect(sub)
    sock.subscribe(b"bench")
    loop = asyncio.get_running_loop()
    woke = asyncio.Event()
    loop.add_reader(int(sock.getsockopt(zmq.FD)), woke.set)
    recv, unpack = sock.recv, msgpack.unpackb
    n, first, last = 0, 0.0, 0.0
    while n < count:
        try:
            topic = recv(zmq.NOBLOCK)
            body = recv(zmq.NOBLOCK)
        except zmq.Again:
            woke.clear()
            if int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                continue
            try:
                await asyncio.wait_for(woke.wait(), idle)
            except asyncio.TimeoutError:
                break
            continue
        unpack(body)
        if topic == b"bench.probe":
            go.set()
            continue
        if n == 0:
            first = time.perf_counter()
        n += 1
        last = time.perf_counter()
    return n, last - first


def _raw_subscriber(sub: str, count: int, go: Any, results: Any, idle: float) -> None:
    results.put(asyncio.run(_raw_subscribe(sub, count, go, idle)))


# -- zmqbus -------------------------------------------------------------------

async def _zb_publish(pub: str, sub: str, count: int, size: int, go: Any) -> None:
    from ..broker import MessageBroker
    from ..message import MessageMetadata, ProcessingMessage

    async with MessageBroker(pub, sub, name="manager", linger=5.0) as broker:
        go.wait(30)
        content = guide_content(size)
        publish = broker.publish
        for _ in range(count):
            await publish(ProcessingMessage(_DATA_TOPIC, content, MessageMetadata(
                correlation_id="c-1", source_component="manager", target_component="processor")))


def _zb_publisher(pub: str, sub: str, count: int, size: int, go: Any) -> None:
    asyncio.run(_zb_publish(pub, sub, count, size, go))


async def _zb_subscribe(pub: str, sub: str, count: int, go: Any, idle: float) -> tuple[int, float, int]:
    from ..broker import MessageBroker
    from ..message import ProcessingMessage

    state: dict[str, float] = {"n": 0, "first": 0.0, "last": 0.0}
    done = asyncio.Event()
    clock = time.perf_counter

    async def handle(msg: ProcessingMessage) -> None:
        n = int(state["n"])
        now = clock()
        if n == 0:
            state["first"] = now
        state["last"] = now
        state["n"] = n + 1
        if n + 1 >= count:
            done.set()

    async with MessageBroker(pub, sub, name="processor") as broker:
        broker.subscribe("processor", "bench.component.process.request.#", handle)
        await broker.ready()
        go.set()
        seen = -1.0
        while not done.is_set() and seen != state["n"]:  # stop when idle for `idle` seconds
            seen = state["n"]
            try:
                await asyncio.wait_for(done.wait(), idle)
            except asyncio.TimeoutError:
                pass
        gaps = broker.statistics().gaps
    return int(state["n"]), state["last"] - state["first"], gaps


def _zb_subscriber(pub: str, sub: str, count: int, go: Any, results: Any, idle: float) -> None:
    results.put(asyncio.run(_zb_subscribe(pub, sub, count, go, idle)))


# -- driver -------------------------------------------------------------------

def _one_run(kind: str, count: int, size: int, timeout: float) -> dict[str, Any]:
    mp = multiprocessing.get_context("spawn")
    pub, sub = tcp_endpoints()
    go, results = mp.Event(), mp.Queue()
    idle = 2.0
    if kind == "raw":
        procs = [spawn(_raw_forwarder, pub, sub, name="raw-forwarder"),
                 spawn(_raw_subscriber, sub, count, go, results, idle, name="raw-sub"),
                 spawn(_raw_publisher, pub, count, size, go, name="raw-pub")]
    else:
        procs = [forwarder_process(pub, sub, stats_interval=None),
                 spawn(_zb_subscriber, pub, sub, count, go, results, idle, name="zmqbus-sub"),
                 spawn(_zb_publisher, pub, sub, count, size, go, name="zmqbus-pub")]
    try:
        got = results.get(timeout=timeout)
    finally:
        for proc in reversed(procs):
            stop_process(proc, timeout=3.0)
    received, seconds = got[0], got[1]
    rate = (received - 1) / seconds if received > 1 and seconds > 0 else 0.0
    out = {"received": received, "lost": count - received, "seconds": round(seconds, 4), "msgs_per_s": round(rate)}
    if kind == "zmqbus":
        out["gaps_counted"] = got[2]
    return out


def run_pubsub(quick: bool = False, count: int | None = None, size: int = 180, rounds: int | None = None,
               progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Measure both sides, alternating, and keep each side's best round."""
    count = count or (20_000 if quick else 200_000)
    rounds = rounds or (1 if quick else 3)
    timeout = 30 + count / 5_000
    best: dict[str, dict[str, Any]] = {}
    for r in range(rounds):
        for kind in ("raw", "zmqbus"):
            progress(f"round {r + 1}/{rounds}: {kind} ...")
            res = _one_run(kind, count, size, timeout)
            progress(f"round {r + 1}/{rounds}: {kind} {res['msgs_per_s']:,} msg/s ({res['lost']} lost)")
            if kind not in best or res["msgs_per_s"] > best[kind]["msgs_per_s"]:
                best[kind] = res
    zb, raw = best["zmqbus"]["msgs_per_s"], best["raw"]["msgs_per_s"]
    return {
        "benchmark": "pubsub", "count": count, "content_bytes": size, "rounds": rounds, "transport": "tcp loopback",
        "zmqbus_msgs_per_s": zb, "raw_msgs_per_s": raw, "ratio": round(zb / raw, 3) if raw else 0.0,
        "zmqbus": best["zmqbus"], "raw": best["raw"],
    }
