"""The same benchmarks on what users would use instead: Redis pub/sub and NATS.

Optional. Each peer needs its server binary (Debian: ``redis-server``,
``nats-server``) and its Python client (``pip install 'zmqbus[peers]'``:
redis-py with hiredis, nats-py). The suite starts each server itself on a free
loopback port, with its limits raised so a slow subscriber is not cut off,
and stops it by pid afterwards. A missing piece is reported as a skip with
the reason, never as a failure.

The message is the one the raw pyzmq baseline sends: ``msgpack(dict)`` of a
guide-shaped message, unpacked by every subscriber.
"""

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..framework.procs import free_port, spawn
from .common import DATA_TOPIC, Progress, collect, guide_content, keep_best, rounded, wait_idle

__all__ = ["run_peers", "peer_status"]

_SERVERS = {"redis": "redis-server", "nats": "nats-server"}
_CLIENTS = {"redis": ("redis", "redis-py"), "nats": ("nats", "nats-py")}


def _message() -> dict[str, Any]:
    return {
        "message_type": DATA_TOPIC,
        "content": guide_content(),
        "metadata": {
            "correlation_id": "c-1",
            "source_component": "manager",
            "target_component": "processor",
            "message_id": 0,
            "timestamp": time.time(),
        },
    }


def peer_status(name: str) -> str | None:
    """None if peer ``name`` can run here, else why not (a sentence)."""
    binary = _SERVERS[name]
    if _binary(name) is None:
        return f"{binary} not found (Debian: apt-get install {binary})"
    module, dist = _CLIENTS[name]
    if importlib.util.find_spec(module) is None:
        return f"{dist} is not installed (pip install 'zmqbus[peers]')"
    return None


def _binary(name: str) -> str | None:
    """The server's path: on PATH, or in an sbin folder (Debian puts nats-server there)."""
    binary = _SERVERS[name]
    return shutil.which(binary) or next(
        (f"{d}/{binary}" for d in ("/usr/sbin", "/usr/local/sbin") if os.path.exists(f"{d}/{binary}")), None
    )


@contextmanager
def _server(name: str) -> Iterator[int]:
    """Start peer ``name``'s server on a free loopback port; stop it by pid on exit."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=f"zmqbus-bench-{name}-") as tmp:
        binary = _binary(name)
        assert binary is not None
        if name == "redis":
            cmd = [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
                "--client-output-buffer-limit",
                "pubsub 0 0 0",
            ]
        else:
            conf = f"{tmp}/nats.conf"
            with open(conf, "w") as f:  # a slow subscriber is buffered, not disconnected
                f.write(f'listen: "127.0.0.1:{port}"\nmax_pending: 1GB\nwrite_deadline: "60s"\n')
            cmd = [binary, "-c", conf]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{name} server did not start (exit code {proc.poll()})") from None
                    time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# -- Redis ------------------------------------------------------------------------


def _redis_publisher(port: int, count: int, go: Any) -> None:
    import msgpack
    import redis

    r = redis.Redis(port=port)
    go.wait(30)
    payload, pack = _message(), msgpack.Packer().pack
    pipe = r.pipeline(transaction=False)
    for i in range(count):
        payload["metadata"]["message_id"] = i
        pipe.publish(DATA_TOPIC, pack(payload))
        if i % 100 == 99:
            pipe.execute()
    pipe.execute()


def _redis_subscriber(port: int, count: int, go: Any, results: Any) -> None:
    import msgpack
    import redis

    p = redis.Redis(port=port).pubsub(ignore_subscribe_messages=True)
    p.subscribe(DATA_TOPIC)
    p.get_message(timeout=5)  # the subscription confirmation
    go.set()
    unpack, clock = msgpack.unpackb, time.perf_counter
    n, first, last = 0, 0.0, 0.0
    while n < count:
        m = p.get_message(timeout=2.0)
        if m is None:
            break
        unpack(m["data"])
        last = clock()
        if n == 0:
            first = last
        n += 1
    results.put({"received": n, "seconds": last - first})


# -- NATS -------------------------------------------------------------------------


def _nats_publisher(port: int, count: int, go: Any) -> None:
    import msgpack
    import nats

    async def main() -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        go.wait(30)
        payload, pack, publish = _message(), msgpack.Packer().pack, nc.publish
        for i in range(count):
            payload["metadata"]["message_id"] = i
            await publish(DATA_TOPIC, pack(payload))
        await nc.flush(timeout=60)
        await nc.drain()

    asyncio.run(main())


def _nats_subscriber(port: int, count: int, go: Any, results: Any) -> None:
    import msgpack
    import nats

    async def main() -> dict[str, Any]:
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        state = {"n": 0, "first": 0.0, "last": 0.0}
        done = asyncio.Event()
        unpack, clock = msgpack.unpackb, time.perf_counter

        async def cb(msg: Any) -> None:
            unpack(msg.data)
            now = clock()
            if state["n"] == 0:
                state["first"] = now
            state["last"] = now
            state["n"] += 1
            if state["n"] >= count:
                done.set()

        await nc.subscribe(DATA_TOPIC, cb=cb, pending_msgs_limit=count + 1000, pending_bytes_limit=1 << 31)
        await nc.flush()
        go.set()
        await wait_idle(done, lambda: int(state["n"]), 2.0)
        await nc.close()
        return {"received": int(state["n"]), "seconds": state["last"] - state["first"]}

    results.put(asyncio.run(main()))


def _nats_echo(port: int) -> None:
    import msgpack
    import nats

    async def main() -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        pack, unpack = msgpack.packb, msgpack.unpackb

        async def echo(msg: Any) -> None:
            await msg.respond(pack(unpack(msg.data)))

        await nc.subscribe("bench.echo", cb=echo)
        await asyncio.Event().wait()

    asyncio.run(main())


def _nats_caller(port: int, latency_n: int, throughput_n: int, results: Any) -> None:
    import msgpack
    import nats

    from .reqrep import measure

    async def main() -> dict[str, Any]:
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        body = {"id": 0, "type": "echo", "content": guide_content(), "correlation_id": "c-1"}
        pack, unpack = msgpack.packb, msgpack.unpackb
        deadline = time.monotonic() + 10
        while True:  # until the responder is subscribed
            try:
                await nc.request("bench.echo", pack(body), timeout=1)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise

        async def call() -> Any:
            return unpack((await nc.request("bench.echo", pack(body), timeout=10)).data)

        try:
            return await measure(call, latency_n, throughput_n)
        finally:
            await nc.close()

    results.put(asyncio.run(main()))


# -- driver -----------------------------------------------------------------------


def _pubsub(name: str, port: int, count: int) -> dict[str, Any]:
    mp = multiprocessing.get_context("spawn")
    go, results = mp.Event(), mp.Queue()
    sub, pub = (_redis_subscriber, _redis_publisher) if name == "redis" else (_nats_subscriber, _nats_publisher)
    procs = [spawn(sub, port, count, go, results, name=f"{name}-sub"), spawn(pub, port, count, go, name=f"{name}-pub")]
    got = collect(procs, results, 1, 60 + count / 2_000)[0]
    rate = (got["received"] - 1) / got["seconds"] if got["received"] > 1 and got["seconds"] > 0 else 0.0
    return {
        "msgs_per_s": round(rate),
        "received": got["received"],
        "lost": count - got["received"],
        "seconds": round(got["seconds"], 4),
    }


def _reqrep(port: int, latency_n: int, throughput_n: int) -> dict[str, Any]:
    results = multiprocessing.get_context("spawn").Queue()
    procs = [
        spawn(_nats_echo, port, name="nats-echo"),
        spawn(_nats_caller, port, latency_n, throughput_n, results, name="nats-caller"),
    ]
    return rounded(collect(procs, results, 1, 120)[0])


def run_peers(
    quick: bool = False,
    count: int | None = None,
    rounds: int | None = None,
    progress: Progress = lambda s: None,
    label: str = "",
) -> dict[str, Any]:
    """Pub/sub throughput (Redis, NATS) and request/reply (NATS), best of ``rounds``."""
    count = count or (20_000 if quick else 200_000)
    rounds = rounds or (1 if quick else 2)
    latency_n, throughput_n = (500, 5_000) if quick else (3_000, 30_000)
    out: dict[str, Any] = {}
    for name in ("redis", "nats"):
        why = peer_status(name)
        if why is not None:
            progress(f"{label}{name}: skipped: {why}")
            out[name] = {"skipped": why}
            continue
        try:
            out[name] = _measure_peer(name, count, rounds, latency_n, throughput_n, progress, label)
        except Exception as exc:  # the peer's server or client failed: report it, go on
            why = f"{type(exc).__name__}: {exc}"
            progress(f"{label}{name}: failed: {why}")
            out[name] = {"failed": why}
    return out


def _measure_peer(
    name: str, count: int, rounds: int, latency_n: int, throughput_n: int, progress: Progress, label: str
) -> dict[str, Any]:
    """Start ``name``'s server, measure pub/sub (and NATS request/reply), stop it."""
    entry: dict[str, Any] = {}
    with _server(name) as port:
        for r in range(rounds):
            res = _pubsub(name, port, count)
            progress(f"{label}{name} pub/sub round {r + 1}/{rounds}: {res['msgs_per_s']:,} msg/s ({res['lost']} lost)")
            if "pubsub" not in entry or res["msgs_per_s"] > entry["pubsub"]["msgs_per_s"]:
                entry["pubsub"] = res
        if name == "nats":
            for r in range(rounds):
                res = _reqrep(port, latency_n, throughput_n)
                progress(
                    f"{label}nats request/reply round {r + 1}/{rounds}: p50 {res['p50_us']:.0f} us, "
                    f"{res['throughput_req_s']:,} req/s with 100 in flight"
                )
                keep_best(entry.setdefault("reqrep", res), res)
    return entry
