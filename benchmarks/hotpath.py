"""Where each microsecond of a publish, a dispatch and a request goes, next to the raw baseline's steps.

    python3 benchmarks/hotpath.py            # a markdown table on stdout (about 20 s)
    python3 benchmarks/hotpath.py --quick    # checks that it runs (rough figures)

Each step is timed by itself in this process (timeit, best of 5 repeats, so a busy machine shows the
least disturbed figure), with the same objects the hot path uses: the guide-shaped message of `zmqbus
bench pubsub`, a real XPUB/SUB pair on inproc for the socket calls. Steps that touch sockets include
libzmq's own work; the rest is Python. What a step costs here is what it costs in the processes of
`zmqbus bench`, less the wake-ups and the other processes on the same two cores (benchmarks/profiles/
has py-spy flame graphs of the whole runs). No sockets but inproc; nothing is asserted.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from zmqbus.bench.common import DATA_TOPIC
from zmqbus.bench.pubsub import _content
from zmqbus.core.codec import Codec, request_head
from zmqbus.core.history import HistoryCache
from zmqbus.core.message import MessageMetadata, ProcessingMessage
from zmqbus.core.recovery import Recovery
from zmqbus.core.sequence import GapDetector, Sequencer
from zmqbus.core.subscriptions import SubscriptionTable

Row = tuple[str, str, float]  # path, step, microseconds


QUICK = "--quick" in sys.argv


def us(fn: Callable[[], Any]) -> float:
    number, repeat = (500, 1) if QUICK else (20_000, 5)
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def measure() -> list[Row]:
    rows: list[Row] = []
    codec = Codec()
    content = _content(180, "guide")

    def message() -> ProcessingMessage:
        return ProcessingMessage(
            DATA_TOPIC,
            content,
            MessageMetadata(correlation_id="c-1", source_component="manager", target_component="processor"),
        )

    msg = message()
    head = codec.frame_head(msg)
    seqs = Sequencer()
    payload = codec.encode(msg, head, "pub-1", 1, "manager")
    frame = head + payload
    history = HistoryCache()
    counter = iter(range(1, 10**9))

    ctx = zmq.Context.instance()
    xpub, sub = ctx.socket(zmq.XPUB), ctx.socket(zmq.SUB)
    for s in (xpub, sub):
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
    xpub.setsockopt(zmq.XPUB_NODROP, 1)
    xpub.bind("inproc://hotpath")
    sub.connect("inproc://hotpath")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    xpub.recv()  # the subscription
    send, recv = xpub.send, sub.recv

    def send_and_drain() -> None:
        send(frame, zmq.NOBLOCK)
        recv(zmq.NOBLOCK)

    raw_dict = {"type": DATA_TOPIC, "correlation_id": "c-1", "source": "manager", "target": "processor", **content}
    raw_payload = msgpack.packb(raw_dict)
    rows += [
        ("publish", "build ProcessingMessage + MessageMetadata (new id, clock, current message)", us(message)),
        ("publish", "sequence number (per topic)", us(lambda: seqs.next(head))),
        ("publish", "encode the envelope (msgspec)", us(lambda: codec.encode(msg, head, "pub-1", 7, "manager"))),
        ("publish", "frame = head + payload", us(lambda: head + payload)),
        (
            "publish",
            "history: keep the frame (recovery on)",
            us(lambda: history.record(head, next(counter), frame, 0.0)),
        ),
        ("publish + receive", "XPUB send + SUB receive, inproc (libzmq)", us(send_and_drain)),
        ("publish (raw)", "msgpack.packb of the same fields as a dict", us(lambda: msgpack.packb(raw_dict))),
    ]

    gaps = GapDetector()
    recovery: Recovery[Any] = Recovery()
    seq_iter = iter(range(1, 10**9))
    rec_iter = iter(range(1, 10**9))
    table = SubscriptionTable()
    table.add("processor", DATA_TOPIC + ".#", lambda m: None, is_async=False)
    table.match(DATA_TOPIC)
    decoded = codec.decode_frame(frame)
    rows += [
        (
            "dispatch",
            "decode the frame into a ProcessingMessage (msgspec + objects)",
            us(lambda: codec.decode_frame(frame)),
        ),
        ("dispatch", "gap detection (recovery off)", us(lambda: gaps.observe("pub-1", DATA_TOPIC, next(seq_iter)))),
        (
            "dispatch",
            "recovery: deliver in order, once (recovery on)",
            us(lambda: recovery.observe("pub-1", DATA_TOPIC, next(rec_iter), decoded, 0.0)),
        ),
        ("dispatch", "find the handlers (cached match)", us(lambda: table.cache.get(DATA_TOPIC))),
        ("dispatch (raw)", "msgpack.unpackb", us(lambda: msgpack.unpackb(raw_payload))),
    ]

    req = ProcessingMessage("bench.echo", {"n": 1}, MessageMetadata(source_component="client"))
    rhead = request_head("bench.echo")
    rpayload = codec.encode(req, rhead, "client-1", 0, "client")
    reply = codec.encode_reply(codec.decode(b"bench.echo", rpayload).metadata, "bench.echo", {"n": 1}, "srv", "s-1")
    rows += [
        ("request", "caller: encode the request", us(lambda: codec.encode(req, rhead, "client-1", 0, "client"))),
        ("request", "responder: decode the request", us(lambda: codec.decode(b"bench.echo", rpayload))),
        (
            "request",
            "responder: encode the reply",
            us(lambda: codec.encode_reply(req.metadata, "bench.echo", {"n": 1}, "srv", "s-1")),
        ),
        ("request", "caller: decode the reply", us(lambda: codec.decode(b"REP", reply))),
        (
            "request (raw)",
            "msgpack pack + unpack, each side",
            us(lambda: msgpack.unpackb(msgpack.packb([1, {"n": 1}]))),
        ),
    ]
    xpub.close(0)
    sub.close(0)
    return rows


def main() -> None:
    rows = measure()
    print(f"Python {sys.version.split()[0]}, pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}\n")
    print("| path | step | us |")
    print("|---|---|---|")
    for path, step, t in rows:
        print(f"| {path} | {step} | {t:.2f} |")


if __name__ == "__main__":
    main()
