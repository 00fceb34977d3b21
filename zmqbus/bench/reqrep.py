"""Request/reply: zmqbus next to raw pyzmq DEALER/ROUTER echoes, in the same run.

Each side has a responder process and a caller process on tcp loopback, and
moves the same guide-shaped content. Measured per side: round-trip latency
(p50, p99) with one request in flight, and throughput with 100 in flight.

* raw asyncio: an asyncio ROUTER echo that drains its socket and decodes and
  re-encodes each request with msgpack, and an asyncio DEALER client with a
  reader task and a future per request (what a careful user would write by
  hand).
* raw sync: the same echo and client as blocking tight loops (the machine's
  limit; no event loop at all).
* zmqbus: ``serve`` / ``request`` through a forwarder (used only for presence),
  with ids, deadlines, retries armed, the reply cache and structured errors.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

from ..core.stats import percentiles
from ..framework.procs import forwarder_process, free_port, spawn, stop_process, tcp_endpoints
from .common import (
    RAW_CURVE_ENV,
    Progress,
    bench_keys,
    guide_content,
    keep_best,
    raw_curve,
    rounded,
    wait_readable,
)

__all__ = ["run_reqrep", "run_reqrep_secure", "measure"]


def _figures(lat: list[float], tput: float, many_lat: list[float]) -> dict[str, Any]:
    """The flat figures the reports use: 1 in flight (``p50_us`` ...) and 100 in flight (``many_*``)."""
    one, many = percentiles(lat), percentiles(many_lat)
    return {
        "p50_us": one["p50"],
        "p99_us": one["p99"],
        "p999_us": one["p999"],
        "one_req_s": round(len(lat) / sum(lat)) if lat else 0,
        "throughput_req_s": tput,
        "many_p50_us": many["p50"],
        "many_p99_us": many["p99"],
        "many_p999_us": many["p999"],
    }


# -- raw ------------------------------------------------------------------------


def _raw_echo(endpoint: str) -> None:
    """The sync side's server: a blocking loop that decodes and re-encodes each request."""
    import msgpack
    import zmq

    sock = zmq.Context().socket(zmq.ROUTER)
    raw_curve(sock, server=True)
    sock.bind(endpoint)
    pack, unpack = msgpack.packb, msgpack.unpackb
    while True:
        peer, body = sock.recv_multipart()
        sock.send_multipart([peer, pack(unpack(body))])


def _raw_async_echo(endpoint: str) -> None:
    """The asyncio side's server: drains its ROUTER, decodes and re-encodes each request."""
    import msgpack
    import zmq

    async def main() -> None:
        sock = zmq.Context().socket(zmq.ROUTER)
        raw_curve(sock, server=True)
        sock.bind(endpoint)
        loop = asyncio.get_running_loop()
        woke = asyncio.Event()
        loop.add_reader(int(sock.getsockopt(zmq.FD)), woke.set)
        pack, unpack = msgpack.packb, msgpack.unpackb
        while True:
            try:
                peer = sock.recv(zmq.NOBLOCK)
                body = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                await wait_readable(sock, woke)
                continue
            sock.send(peer, zmq.SNDMORE)
            sock.send(pack(unpack(body)))

    asyncio.run(main())


async def _raw_async_client(endpoint: str, latency_n: int, throughput_n: int) -> dict[str, Any]:
    import msgpack
    import zmq

    sock = zmq.Context().socket(zmq.DEALER)
    raw_curve(sock, server=False)
    sock.connect(endpoint)
    loop = asyncio.get_running_loop()
    pending: dict[int, asyncio.Future[Any]] = {}
    woke = asyncio.Event()
    loop.add_reader(int(sock.getsockopt(zmq.FD)), woke.set)
    content = guide_content()

    async def reader() -> None:
        while True:
            try:
                data = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                await wait_readable(sock, woke)
                continue
            reply = msgpack.unpackb(data)
            fut = pending.pop(reply["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(reply)

    task = loop.create_task(reader())
    counter = iter(range(1, 1 << 60))

    async def call() -> Any:
        i = next(counter)
        fut = loop.create_future()
        pending[i] = fut
        sock.send(msgpack.packb({"id": i, "type": "echo", "content": content, "correlation_id": "c-1"}))
        woke.set()  # a send may have eaten the FD edge: let the reader re-check
        return await fut

    try:
        return await measure(call, latency_n, throughput_n)
    finally:
        task.cancel()


def _raw_sync_client(endpoint: str, latency_n: int, throughput_n: int) -> dict[str, Any]:
    import msgpack
    import zmq

    sock = zmq.Context().socket(zmq.DEALER)
    raw_curve(sock, server=False)
    sock.connect(endpoint)
    msg = {"id": 0, "type": "echo", "content": guide_content(), "correlation_id": "c-1"}
    pack, unpack = msgpack.packb, msgpack.unpackb
    for _ in range(200):
        sock.send(pack(msg))
        unpack(sock.recv())
    lat = []
    for _ in range(latency_n):
        t = time.perf_counter()
        sock.send(pack(msg))
        unpack(sock.recv())
        lat.append(time.perf_counter() - t)
    # 100 in flight: the send time of each request is queued so its reply gives its round trip
    clock = time.perf_counter
    sent: collections.deque[float] = collections.deque()
    many: list[float] = []
    t = clock()
    for _ in range(100):
        sent.append(clock())
        sock.send(pack(msg))
    for _ in range(throughput_n - 100):
        unpack(sock.recv())
        many.append(clock() - sent.popleft())
        sent.append(clock())
        sock.send(pack(msg))
    for _ in range(100):
        unpack(sock.recv())
        many.append(clock() - sent.popleft())
    tput = throughput_n / (clock() - t)
    return _figures(lat, tput, many)


async def measure(call: Callable[[], Any], latency_n: int, throughput_n: int) -> dict[str, Any]:
    """Warm up, then round trips one at a time (latency), then 100 in flight (throughput and latency)."""
    for _ in range(200):
        await call()
    lat = []
    for _ in range(latency_n):
        t = time.perf_counter()
        await call()
        lat.append(time.perf_counter() - t)
    many: list[float] = []
    tput = await _throughput(call, throughput_n, many)
    return _figures(lat, tput, many)


async def _throughput(call: Callable[[], Any], n: int, lat: list[float], in_flight: int = 100) -> float:
    remaining = [n]
    clock = time.perf_counter

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            t = clock()
            await call()
            lat.append(clock() - t)

    t = clock()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return n / (clock() - t)


def _raw_client_main(kind: str, endpoint: str, latency_n: int, throughput_n: int, out: Any) -> None:
    if kind == "sync":
        out.put(_raw_sync_client(endpoint, latency_n, throughput_n))
    else:
        out.put(asyncio.run(_raw_async_client(endpoint, latency_n, throughput_n)))


# -- zmqbus ---------------------------------------------------------------------


def _zb_responder(pub: str, sub: str) -> None:
    from ..bus.broker import MessageBroker

    async def main() -> None:
        broker = MessageBroker(pub, sub, name="echo")

        async def echo(msg: Any) -> Any:
            return msg.content

        broker.serve("bench.echo", echo)
        async with broker:
            await asyncio.Event().wait()

    asyncio.run(main())


async def _zb_client(pub: str, sub: str, latency_n: int, throughput_n: int) -> dict[str, Any]:
    from ..bus.broker import MessageBroker
    from ..core.message import MessageMetadata, ProcessingMessage

    content = guide_content()
    async with MessageBroker(pub, sub, name="bench") as broker:
        deadline = time.monotonic() + 30
        while True:  # wait for the responder to be up
            try:
                await broker.request("bench.echo", ProcessingMessage("bench.echo", content), timeout=5)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

        async def call() -> Any:
            return await broker.request(
                "bench.echo",
                ProcessingMessage(
                    "bench.echo",
                    content,
                    MessageMetadata(correlation_id="c-1", source_component="bench", target_component="echo"),
                ),
            )

        return await measure(call, latency_n, throughput_n)


def _zb_client_main(pub: str, sub: str, latency_n: int, throughput_n: int, out: Any) -> None:
    out.put(asyncio.run(_zb_client(pub, sub, latency_n, throughput_n)))


# -- driver -----------------------------------------------------------------------


def _one(kind: str, latency_n: int, throughput_n: int) -> dict[str, Any]:
    out = multiprocessing.get_context("spawn").Queue()
    if kind == "zmqbus":
        pub, sub = tcp_endpoints()
        procs = [
            forwarder_process(pub, sub, stats_interval=None),
            spawn(_zb_responder, pub, sub),
            spawn(_zb_client_main, pub, sub, latency_n, throughput_n, out),
        ]
    else:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        server = _raw_echo if kind == "sync" else _raw_async_echo
        procs = [spawn(server, endpoint), spawn(_raw_client_main, kind, endpoint, latency_n, throughput_n, out)]
    try:
        result: dict[str, Any] = out.get(timeout=120)
    finally:
        for proc in reversed(procs):
            stop_process(proc, timeout=3.0)
    return result


def run_reqrep(
    quick: bool = False, rounds: int | None = None, progress: Progress = lambda s: None, label: str = ""
) -> dict[str, Any]:
    """Run every side ``rounds`` times, alternating, and keep each side's best figures."""
    latency_n, throughput_n = (500, 5_000) if quick else (3_000, 30_000)
    rounds = rounds or (1 if quick else 3)
    best: dict[str, dict[str, Any]] = {}
    ratios: dict[str, list[float]] = {"p50": [], "throughput": []}  # zmqbus over raw asyncio, per round
    for r in range(rounds):
        this: dict[str, dict[str, Any]] = {}
        for kind in ("async", "sync", "zmqbus"):
            res = this[kind] = _one(kind, latency_n, throughput_n)
            progress(
                f"{label}round {r + 1}/{rounds}: {kind} p50 {res['p50_us']:.0f} us, p99 {res['p99_us']:.0f} us, "
                f"{res['throughput_req_s']:,.0f} req/s with 100 in flight"
            )
            keep_best(best.setdefault(kind, dict(res)), res)  # best of each figure
        ratios["p50"].append(round(this["zmqbus"]["p50_us"] / this["async"]["p50_us"], 3))
        ratios["throughput"].append(round(this["zmqbus"]["throughput_req_s"] / this["async"]["throughput_req_s"], 3))
    zb, raw, sync = best["zmqbus"], best["async"], best["sync"]
    out: dict[str, Any] = {
        "benchmark": "reqrep",
        "rounds": rounds,
        "latency_requests": latency_n,
        "throughput_requests": throughput_n,
        "in_flight": 100,
        "transport": "tcp loopback",
        "zmqbus": rounded(zb),
        "raw": rounded(raw),
        "sync": rounded(sync),
        "p50_ratio": round(zb["p50_us"] / raw["p50_us"], 2),
        "throughput_ratio": round(zb["throughput_req_s"] / raw["throughput_req_s"], 2),
        "p50_ratio_rounds": ratios["p50"],
        "throughput_ratio_rounds": ratios["throughput"],
    }
    for prefix, side in (("", zb), ("raw_", raw), ("sync_", sync)):  # the flat keys of earlier versions
        for key in ("p50_us", "p99_us", "throughput_req_s"):
            out[prefix + key] = round(side[key]) if key.endswith("req_s") else round(side[key], 1)
    return out


def run_reqrep_secure(
    quick: bool = False, rounds: int | None = None, progress: Progress = lambda s: None, label: str = ""
) -> dict[str, Any]:
    """What CURVE costs request/reply: the raw asyncio echo with CURVE, zmqbus with CURVE and zmqbus in
    clear, alternating, best of each figure (as :func:`run_reqrep`)."""
    import tempfile

    from ..framework.procs import environment

    latency_n, throughput_n = (500, 5_000) if quick else (3_000, 30_000)
    rounds = rounds or (1 if quick else 3)
    best: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="zmqbus-bench-keys-") as tmp:
        keys = bench_keys(f"{tmp}/keys")
        sides = {
            "raw_curve": ("async", {RAW_CURVE_ENV: keys}),
            "zmqbus_curve": ("zmqbus", {"ZMQBUS_KEYS": keys, "ZMQBUS_KEY_NAME": "client"}),
            "zmqbus_clear": ("zmqbus", {}),
        }
        for r in range(rounds):
            for name, (kind, env) in sides.items():
                with environment(env):  # the spawned processes read it
                    res = _one(kind, latency_n, throughput_n)
                progress(
                    f"{label}round {r + 1}/{rounds}: {name} p50 {res['p50_us']:.0f} us, "
                    f"{res['throughput_req_s']:,.0f} req/s with 100 in flight"
                )
                keep_best(best.setdefault(name, dict(res)), res)
    raw, zb, clear = best["raw_curve"], best["zmqbus_curve"], best["zmqbus_clear"]
    return {
        "benchmark": "reqrep_secure",
        "rounds": rounds,
        "transport": "tcp loopback, CURVE",
        "raw_curve": rounded(raw),
        "zmqbus_curve": rounded(zb),
        "zmqbus_clear": rounded(clear),
        "p50_ratio": round(zb["p50_us"] / raw["p50_us"], 2),
        "throughput_ratio": round(zb["throughput_req_s"] / raw["throughput_req_s"], 2),
        "curve_p50_cost": round(zb["p50_us"] / clear["p50_us"], 2),
        "curve_throughput_kept": round(zb["throughput_req_s"] / clear["throughput_req_s"], 2),
    }
