"""Instructions per message of each step of the hot path, counted by valgrind: exact, not timed.

    python3 benchmarks/instructions.py                       # a markdown table (about 3 minutes, 2 cores)
    python3 benchmarks/instructions.py --quick               # checks that it runs (fewer units)
    python3 benchmarks/instructions.py --tree /path/to/other/checkout --tree .   # before and after

Timings on a shared 2-core machine swing by 10% from run to run, more than most changes to the hot
path are worth; an instruction count (callgrind, user space) is the same on every run of the same code
and inputs, whatever else the machine does. Each step runs twice in its own process under valgrind,
once with no units and once with N; the difference over N is what one unit costs, set-up and
interpreter start-up cancelled out. No peers: each step is the Python of one side of the hot path, and
what it hands to libzmq is dropped there (a publishing socket with no subscriber; the sockets' own work
is libzmq's, the same for the raw baselines). Needs valgrind (Debian: ``apt-get install valgrind``).
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

STEPS: dict[str, tuple[str, str]] = {
    "build": ("publish", "build the guide's message: ProcessingMessage + MessageMetadata (the benchmark's code)"),
    "encode": ("publish", "encode the envelope (checks + msgspec)"),
    "sequence": ("publish", "number it (per topic)"),
    "history": ("publish", "history: keep the frame (recovery on)"),
    "publish": ("publish", "MessageBroker.publish of a built message, outbox and history included"),
    "publish-batching": ("publish", "the same, batching on (64 messages a frame)"),
    "raw-pack": ("publish (raw)", "msgpack pack of the same fields as a dict"),
    "decode": ("dispatch", "decode a batch frame's messages (msgspec + objects), per message"),
    "dispatch-frames": ("dispatch", "Receiver.dispatch of ordinary frames to an async handler, recovery on"),
    "dispatch-batch": ("dispatch", "Receiver.dispatch of batch frames (64 a frame), the same"),
    "raw-unpack": ("dispatch (raw)", "msgpack.unpackb of the raw side's message"),
    "request": ("request", "a request and its reply, caller and responder (async echo), 1 in flight"),
    "request-100": ("request", "the same, 100 in flight"),
    "raw-request-100": (
        "request (raw)",
        "the raw asyncio client and echo of `bench reqrep`, the same way, 100 in flight",
    ),
}


def _guide() -> tuple[Any, Any]:
    from zmqbus.bench.common import DATA_TOPIC, guide_content
    from zmqbus.core.message import MessageMetadata, ProcessingMessage

    content = guide_content(180)

    def message() -> ProcessingMessage:
        meta = MessageMetadata(correlation_id="c-1", source_component="manager", target_component="processor")
        return ProcessingMessage(DATA_TOPIC, content, meta)

    return content, message


def _frames(count: int, batch: bool) -> list[bytes]:
    from zmqbus.core.codec import Codec, batch_frame

    _, message = _guide()
    codec = Codec()
    head = codec.frame_head(message())
    payloads = [codec.encode(message(), head, "pub-1", i + 1, "manager") for i in range(count)]
    if batch:
        return [batch_frame(head, payloads[i : i + 64]) for i in range(0, count, 64)]
    return [head + p for p in payloads]


async def _publish(n: int, batching: bool) -> None:
    from zmqbus.bus.broker import MessageBroker
    from zmqbus.core.history import HistoryCache
    from zmqbus.io.transport import BusLink, SocketConfig

    _, message = _guide()
    broker = MessageBroker("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", name="manager", batching=batching)
    publisher = broker._publisher
    # the real link, connected to nothing: its XPUB drops what it is given (no subscriber), in libzmq
    link = BusLink(SocketConfig())
    publisher.link, publisher.is_ready = link, True
    if publisher.record is None:  # as a started broker with recovery on (the default)
        publisher.record = HistoryCache().record
    # Under valgrind a publish takes 50 times as long: the outbox would see no burst (its 50 us gap) and
    # send each frame at once. Natively a loop of publishes is one burst, flushed every 64 frames: as here.
    publisher.batcher.burst_gap = publisher.batcher.max_delay = float("inf")
    msg = message()
    for _ in range(n):
        await broker.publish(msg)
    publisher.batcher.flush()
    publisher.link = None
    link.close(0)


async def _dispatch(n: int, total: int, batch: bool) -> None:
    from zmqbus.bus.receiver import Receiver
    from zmqbus.core.codec import Codec
    from zmqbus.core.ratelog import RateLimitedLog
    from zmqbus.core.recovery import Recovery
    from zmqbus.core.subscriptions import SubscriptionTable
    from zmqbus.io.aio import start_eagerly

    async def handle(msg: Any) -> None:
        msg.content["chunk_index"]  # reads the content, as the raw side unpacks all of it

    table = SubscriptionTable()
    table.add("processor", "bench.data.#", handle, is_async=True)
    receiver = Receiver(table, Codec(), 10_000, RateLimitedLog(logging.getLogger("instructions")))
    receiver.recovery = Recovery()
    frames = _frames(total, batch)  # built whatever n is: only the dispatch differs between the two runs
    groups = (
        [frames[i : i + 1] for i in range(len(frames))] if batch else [frames[i : i + 64] for i in range(0, total, 64)]
    )
    for group in groups[: len(groups) * n // total]:
        start_eagerly(receiver.dispatch(group))


class _Wire:
    """Stands in for a ROUTER link: what one side sends is handed to the other side's frame handler at once
    (the caller's requests to the responder, whose replies leave at the end of the batch)."""

    def __init__(self, peer: bytes, deliver: Any) -> None:
        self.peer, self.deliver = peer, deliver
        self.channel = self

    def send(self, peer: bytes, frame: bytes, recheck: bool = True) -> bool:
        self.deliver([self.peer, frame])
        return True

    def connect(self, endpoint: str, peer_id: bytes, server_key: bytes | None = None) -> None:
        pass

    def recheck_now(self) -> None:
        pass


async def _requests(n: int, in_flight: int) -> None:
    """Both sides of request/reply in one process, their Python only: the caller's request path and the
    responder's handling, joined by :class:`_Wire` instead of sockets."""
    from zmqbus.bus.broker import MessageBroker
    from zmqbus.bus.caller import Caller
    from zmqbus.bus.responder import Responder
    from zmqbus.core.control import Presence

    _, message = _guide()
    client = MessageBroker("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", name="client")
    server = MessageBroker("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", name="server")

    async def echo(msg: Any) -> Any:
        return msg.content

    responder = Responder(server._requests.port, server._requests.options)
    responder.add("bench.echo", echo)
    caller = Caller(client._requests.port)
    client._requests.caller = caller
    client._publisher.is_ready = True  # no subscription to prove: requests go at once

    def to_responder(frames: list[bytes]) -> None:
        responder._on_frames(frames)
        responder._flush()  # the batch's end: its replies leave

    caller._router = _Wire(b"1", to_responder)  # type: ignore[assignment]
    responder._router = _Wire(client.client_id.encode(), caller._on_frames)  # type: ignore[assignment]
    now = asyncio.get_running_loop().time()
    announced = Presence(
        instance=server.client_id, endpoint="tcp://wire", services=("bench.echo",), interval=1e6, liveness=3
    )
    caller._act(caller.core.presence(announced, now))

    async def worker(count: int) -> None:
        for _ in range(count):
            await client.request("bench.echo", message(), timeout=10)

    await asyncio.gather(*(worker(256 // in_flight) for _ in range(in_flight)))  # warm
    await asyncio.gather(*(worker(n // in_flight) for _ in range(in_flight)))
    done = responder.core.stats.executed
    assert done == (256 // in_flight + n // in_flight) * in_flight, f"{done} requests executed"


async def _raw_requests(n: int, in_flight: int) -> None:
    """The raw side of ``bench reqrep`` the same way: a client packing a dict with an id, a future per
    request and a reader that unpacks replies; an echo that unpacks and packs; the reply handed back in
    a later loop turn, as its socket's reader would get it."""
    import itertools

    import msgpack

    content, _ = _guide()
    loop = asyncio.get_running_loop()
    pending: dict[int, asyncio.Future[Any]] = {}
    pack, unpack = msgpack.packb, msgpack.unpackb
    counter = itertools.count(1)

    def reader(data: bytes) -> None:
        reply = unpack(data)
        fut = pending.pop(reply["id"], None)
        if fut is not None and not fut.done():
            fut.set_result(reply)

    async def call() -> Any:
        i = next(counter)
        fut = loop.create_future()
        pending[i] = fut
        body = pack({"id": i, "type": "echo", "content": content, "correlation_id": "c-1"})
        loop.call_soon(reader, pack(unpack(body)))  # the echo, and the way back
        return await fut

    async def worker(count: int) -> None:
        for _ in range(count):
            await call()

    await asyncio.gather(*(worker(256 // in_flight) for _ in range(in_flight)))  # warm
    await asyncio.gather(*(worker(n // in_flight) for _ in range(in_flight)))


def run_step(name: str, n: int, total: int) -> None:
    """Set up ``name`` for ``total`` units, then run ``n`` of them (0: the set-up alone; or ``total``)."""
    content, message = _guide()
    if name == "build":
        for _ in range(n):
            message()
    elif name in ("encode", "sequence", "history"):
        from zmqbus.core.codec import Codec
        from zmqbus.core.history import HistoryCache
        from zmqbus.core.sequence import Sequencer

        codec, msg = Codec(), message()
        head = codec.frame_head(msg)
        frame = head + codec.encode(msg, head, "pub-1", 1, "manager")
        seqs, history = Sequencer(), HistoryCache()
        for i in range(1, n + 1):
            if name == "encode":
                codec.encode(msg, head, "pub-1", i, "manager")
            elif name == "sequence":
                seqs.next(head)
            else:
                history.record(head, i, frame, 0.0)
    elif name in ("publish", "publish-batching"):
        asyncio.run(_publish(n, name == "publish-batching"))
    elif name in ("dispatch-frames", "dispatch-batch"):
        asyncio.run(_dispatch(n, total, name == "dispatch-batch"))
    elif name == "decode":
        from zmqbus.core.codec import Codec

        codec, frames = Codec(), _frames(total, True)
        for frame in frames[: len(frames) * n // total]:
            codec.decode_batch(frame)
    elif name in ("request", "request-100"):
        asyncio.run(_requests(n, 100 if name == "request-100" else 1))
    elif name == "raw-request-100":
        asyncio.run(_raw_requests(n, 100))
    elif name in ("raw-pack", "raw-unpack"):
        import msgpack

        md = {"correlation_id": "c-1", "source_component": "manager", "target_component": "processor"}
        payload = {"message_type": "bench.data", "content": content, "metadata": dict(md, message_id=0, timestamp=1.0)}
        pack, body = msgpack.Packer().pack, msgpack.packb(payload)
        for i in range(n):
            if name == "raw-pack":
                payload["metadata"]["message_id"] = i
                pack(payload)
            else:
                msgpack.unpackb(body)
    else:
        raise SystemExit(f"unknown step {name!r}")


def count(name: str, n: int, tree: str, warm: int = 256) -> float:
    """Instructions per unit of ``name``, for the zmqbus found at ``tree``: both runs do ``warm`` units
    first (caches filled, the interpreter's specialisation done), one does ``n`` more."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), PYTHONHASHSEED="0")

    def instructions(units: int) -> int:
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__]
        out = subprocess.run(
            [*cmd, "--step", name, "--n", str(units), "--total", str(warm + n)],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        found = re.search(r"Collected : (\d+)", out.stderr)
        if out.returncode or found is None:
            raise RuntimeError(f"{name}: {out.stderr[-2000:]}")
        return int(found.group(1))

    return (instructions(warm + n) - instructions(warm)) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="fewer units (checks that it runs)")
    parser.add_argument("--tree", action="append", help="a checkout to count (repeatable; default: this one)")
    parser.add_argument("--only", action="append", choices=list(STEPS), help="only these steps (repeatable)")
    args = parser.parse_args()
    if args.step:
        run_step(args.step, args.n, args.total)
        return
    trees = args.tree or [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    n = 256 if args.quick else 4096  # multiples of 64: whole batch frames
    steps = {step: STEPS[step] for step in args.only or STEPS}
    jobs = [(step, tree) for step in steps for tree in trees]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        figures = dict(zip(jobs, pool.map(lambda job: count(job[0], n, job[1]), jobs), strict=True))
    print(f"Instructions per message (callgrind, {n} units, Python {sys.version.split()[0]})\n")
    print("| path | step | " + " | ".join(trees) + " |")
    print("|---|---|" + "---|" * len(trees))
    for step, (path, what) in steps.items():
        print(f"| {path} | {what} | " + " | ".join(f"{figures[(step, t)]:,.0f}" for t in trees) + " |")


if __name__ == "__main__":
    main()
