"""Publisher batching (PROTOCOL.md section 2.4): runs of one topic share a frame, nothing else changes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import msgpack
import pytest
import zmq

from zmqbus import DecodeError, Forwarder, MessageBroker, MessageMetadata, ProcessingMessage
from zmqbus.bus.batching import Batcher
from zmqbus.core.codec import BATCH_MARK, Codec, batch_frame
from zmqbus.testing import Recorder


def broker_for(fwd: Forwarder, name: str, **kw: object) -> MessageBroker:
    return MessageBroker(fwd.pub_endpoint, fwd.sub_endpoint, name=name, **kw)  # type: ignore[arg-type]


def msg(topic: str, i: int) -> ProcessingMessage:
    return ProcessingMessage(topic, {"i": i}, MessageMetadata())


@contextlib.contextmanager
def raw_subscriber(fwd: Forwarder, prefix: bytes) -> Iterator[zmq.Socket[bytes]]:
    """A plain zmq SUB of ``prefix`` (a peer that knows nothing of zmqbus), closed on the way out."""
    raw = zmq.Context.instance().socket(zmq.SUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.SUBSCRIBE, prefix)
    raw.connect(fwd.sub_endpoint)
    try:
        yield raw
    finally:
        raw.close(0)


async def until_heard(pub: MessageBroker, raw: zmq.Socket[bytes], topic: str) -> None:
    """Publish ``topic`` until ``raw`` gets one (its subscription has reached the publisher), then drain ``raw``."""
    for _ in range(500):
        await pub.publish(msg(topic, -1))
        await asyncio.sleep(0)  # the loop turns: the outbox hands the frame to ZeroMQ
        if raw.poll(10):
            break
    else:
        raise AssertionError(f"no {topic} message reached the raw subscriber")
    while raw.poll(200):
        raw.recv()


def one_burst(pub: MessageBroker) -> Batcher:
    """What ``pub`` publishes from now on without yielding counts as one burst, however slow this machine is
    today (the outbox sends a publish that follows a 50 us gap at once, and a burst's first frame after 1 ms)."""
    outbox = pub._publisher.batcher
    outbox.max_delay = outbox.burst_gap = 60.0
    return outbox


@contextlib.asynccontextmanager
async def batching_pair(fwd: Forwarder, pattern: str) -> AsyncIterator[tuple[MessageBroker, MessageBroker, Recorder]]:
    """A batching publisher, a subscriber of ``pattern`` whose subscription the publisher has seen, and what
    the subscriber got."""
    async with broker_for(fwd, "sub") as sub, broker_for(fwd, "pub", batching=True) as pub:
        got = Recorder()
        sub.subscribe("c", pattern, got)
        await sub.ready()
        await pub.ready()
        one_burst(pub)
        yield pub, sub, got


def test_a_batch_frame_decodes_to_its_messages_in_order() -> None:
    codec = Codec()
    head = codec.frame_head(msg("a.b", 0))
    payloads = [codec.encode(msg("a.b", i), head, "p", i + 1) for i in range(40)]
    frame = batch_frame(head, payloads)
    assert frame.startswith(b"a.b\x00\xc1\xdc\x00\x28")  # 0xC1, then a msgpack array of 40
    with pytest.raises(DecodeError):  # an ordinary decode refuses it: receivers then try decode_batch
        codec.decode_frame(frame)
    out = codec.decode_batch(frame)
    assert [m.content["i"] for m in out] == list(range(40))
    assert [m.metadata.sequence for m in out] == list(range(1, 41)) and {m.topic for m in out} == {"a.b"}
    assert batch_frame(head, payloads[:1]) == head + payloads[0]  # one message: an ordinary frame
    # what a peer in another language writes by hand: 0xC1 + msgpack array of ordinary payloads
    by_hand = head + BATCH_MARK + msgpack.packb([msgpack.unpackb(p) for p in payloads[:3]])
    assert [m.content["i"] for m in codec.decode_batch(by_hand)] == [0, 1, 2]
    for bad in (head + b"\xc1\x90", head + b"\xc1\x92\x01", head + b"\xc1" + msgpack.packb([[1, 2]]), frame[4:]):
        with pytest.raises(DecodeError):
            codec.decode_batch(bad)


async def test_batched_publishing_keeps_every_message_and_the_order(forwarder: Forwarder) -> None:
    async with batching_pair(forwarder, "data.#") as (pub, sub, got):
        n = 5_000
        for i in range(n):  # runs of one topic, and a second topic between them every 100 messages
            await pub.publish(msg("data.x" if i % 100 else "data.y", i))
        await got.wait_for(count=n, timeout=20)
        assert [m.content["i"] for m in got.messages] == list(range(n))  # across topics too
        batcher = pub._publisher.batcher
        assert batcher is not None and batcher.batches >= n // 64 and batcher.batched >= n * 9 // 10
        stats = sub.statistics()
        assert stats.gaps == 0 and stats.decode_errors == {} and stats.dispatched >= n


async def test_one_message_per_loop_turn_leaves_at_once_unbatched(forwarder: Forwarder) -> None:
    async with batching_pair(forwarder, "tick") as (pub, _sub, got):
        for i in range(5):
            await pub.publish(msg("tick", i))
            await got.wait_for(count=i + 1, timeout=2)  # no timer holds it: it left at the end of the turn
        assert pub._publisher.batcher.batches == 0


async def test_close_sends_what_is_queued(forwarder: Forwarder) -> None:
    async with broker_for(forwarder, "sub") as sub:
        got = Recorder()
        sub.subscribe("c", "last.#", got)
        await sub.ready()
        pub = broker_for(forwarder, "pub", batching=True)
        await pub.ready()
        for i in range(10):
            await pub.publish(msg("last.words", i))  # queued: the loop has not turned yet
        await pub.close()
        await got.wait_for(count=10, timeout=5)
        assert pub.statistics().unconfirmed == 0


async def test_a_receiver_without_batches_counts_them_malformed(forwarder: Forwarder) -> None:
    # The reason batching is opt-in: a peer that does not implement section 2.4 sees 0xC1 where a payload
    # starts, and must count the frame as malformed rather than misread it.
    with raw_subscriber(forwarder, b"old.") as raw:
        async with broker_for(forwarder, "pub", batching=True) as pub:
            await until_heard(pub, raw, "old.warmup")
            one_burst(pub)
            for i in range(3):
                await pub.publish(msg("old.topic", i))
            await asyncio.sleep(0)  # the loop turns: the queue leaves
            assert raw.poll(5000)
            topic, _, payload = raw.recv().partition(b"\x00")
            assert topic == b"old.topic" and payload[:1] == BATCH_MARK
            with pytest.raises(ValueError):
                msgpack.unpackb(payload)


@pytest.mark.parametrize("batching", [False, True])
async def test_a_publisher_that_blocks_between_messages_adds_no_latency(forwarder: Forwarder, batching: bool) -> None:
    """A publisher paced by blocking sleeps (the latency benchmark's, or blocking work between messages)
    never yields: each message must leave at its publish, not with the 64th (3.7 ms at 10,000 msg/s)."""
    with raw_subscriber(forwarder, b"o.p") as raw:
        async with broker_for(forwarder, "pub", batching=batching) as pub:
            await until_heard(pub, raw, "o.p")
            for i in range(5):
                time.sleep(0.002)  # the gap between messages, the loop blocked
                await pub.publish(msg("o.p", i))
                time.sleep(0.05)  # still blocked: only a frame that already left can arrive meanwhile
                assert raw.poll(0), f"message {i} waited in the outbox while the publisher blocked"
                assert Codec().decode_frame(raw.recv()).content == {"i": i}  # an ordinary frame


@pytest.mark.parametrize("batching", [False, True])
async def test_a_burst_that_blocks_leaves_at_its_next_publish_past_max_delay(
    forwarder: Forwarder, batching: bool
) -> None:
    """The other bound of the outbox: frames of a burst wait at most ``max_delay`` (1 ms) after the first,
    counted at the next publish, even when the publisher never yields."""
    with raw_subscriber(forwarder, b"o.d") as raw:
        async with broker_for(forwarder, "pub", batching=batching) as pub:
            await until_heard(pub, raw, "o.d")
            outbox = pub._publisher.batcher
            outbox.burst_gap = 60.0  # every publish from now on belongs to one burst
            await pub.publish(msg("o.d", 0))
            time.sleep(0.05)  # the loop blocked: the burst's first frame is held
            assert not raw.poll(0) and outbox.queued == 1
            await pub.publish(msg("o.d", 1))  # the first has waited 50 ms, past max_delay: both leave now
            time.sleep(0.05)
            got = []
            while raw.poll(0):
                frame = raw.recv()
                got.extend(
                    m.content["i"]
                    for m in ([Codec().decode_frame(frame)] if not batching else Codec().decode_batch(frame))
                )
            assert got == [0, 1] and outbox.queued == 0


async def test_the_outbox_sends_each_message_as_its_own_frame_at_the_end_of_the_turn(forwarder: Forwarder) -> None:
    # Batching off (the default): the outbox only moves the moment a frame reaches ZeroMQ, to the end of the
    # loop turn, or every 64 messages for a publisher that never yields; every message is an ordinary frame.
    with raw_subscriber(forwarder, b"o.x") as raw:
        async with broker_for(forwarder, "pub") as pub:
            await until_heard(pub, raw, "o.x")
            outbox = one_burst(pub)
            # one burst, never yielding: 64 messages leave at the 64th publish, the next 10 wait for the
            # turn's end
            for i in range(74):
                await pub.publish(msg("o.x", i))
            frames = []
            while len(frames) < 64 and raw.poll(5_000):  # blocks the loop: only what left already can come
                frames.append(raw.recv())
            assert not raw.poll(300), "the turn has not ended: the last 10 are still in the outbox"
            assert outbox.queued == 10
            await asyncio.sleep(0)  # the turn ends
            while len(frames) < 74 and raw.poll(5_000):
                frames.append(raw.recv())
            decoded = [Codec().decode_frame(f) for f in frames]  # ordinary frames, never batch frames
            assert [m.content["i"] for m in decoded] == list(range(74))
            assert pub._publisher.batcher.batches == 0
