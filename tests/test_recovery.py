"""Recovery on a real bus (PROTOCOL.md section 14): what a forwarder restart dropped is fetched back from the
publisher's history, delivered once and in order, and nothing is lost silently, the first message of a
stream and the last ones before a publisher goes quiet included."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from zmqbus import MessageBroker, ProcessingMessage
from zmqbus.framework.procs import tcp_endpoints
from zmqbus.testing import TestBus, wait_until


async def test_what_a_killed_forwarder_held_is_recovered_once_and_in_order(spawn_forwarder: Any) -> None:
    """The forwarder is frozen (SIGSTOP) while 200 messages are published, so they sit in its socket
    buffers, then killed (SIGKILL): they are gone from the bus for certain. A new forwarder comes up on
    the same ports; the subscriber fetches the lost ones from the publisher's history."""
    pub_ep, sub_ep = tcp_endpoints()
    first = spawn_forwarder(pub_ep, sub_ep, stats_interval=None)
    async with MessageBroker(pub_ep, sub_ep, name="sub") as sub, MessageBroker(pub_ep, sub_ep, name="pub") as pub:
        got: list[int] = []
        sub.subscribe("sub", "work.item", lambda m: got.append(m.content["i"]))
        await sub.ready(10)
        await pub.ready(10)
        n = 0

        async def send(count: int) -> None:
            nonlocal n
            for _ in range(count):
                await pub.publish(ProcessingMessage("work.item", {"i": n}))
                n += 1

        await send(100)
        await wait_until(lambda: len(got) == 100, timeout=10, what="the first hundred")
        os.kill(first.pid, signal.SIGSTOP)
        await asyncio.sleep(0.1)  # stopped for sure: it reads nothing more
        await send(200)  # into the frozen forwarder's buffers
        await asyncio.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)
        first.join(5)
        spawn_forwarder(pub_ep, sub_ep, stats_interval=None)
        await sub.ready(10)
        await pub.ready(10)
        await send(100)
        await wait_until(lambda: len(got) >= n, timeout=15, what="every message, the lost ones recovered")
        stats = sub.statistics()
    assert got == list(range(n)), "each message once, in order"
    assert stats.gaps == 0 and stats.recovery["lost"] == 0
    assert stats.recovery["recovered"] >= 100, stats.recovery  # most of the 200 died with the forwarder


async def test_the_first_and_the_last_messages_of_a_stream_are_recovered(spawn_forwarder: Any) -> None:
    """Lost with the forwarder, with no later message to show them missing: the first message of a new
    stream and the last one of another. The publisher's heartbeat (its presence) names both streams'
    last numbers; the subscriber fetches them."""
    pub_ep, sub_ep = tcp_endpoints()
    first = spawn_forwarder(pub_ep, sub_ep, stats_interval=None)
    async with MessageBroker(pub_ep, sub_ep, name="sub") as sub, MessageBroker(pub_ep, sub_ep, name="pub") as pub:
        got: list[ProcessingMessage] = []
        sub.subscribe("sub", "loan.#", got.append)
        await sub.ready(10)
        await pub.publish(ProcessingMessage("loan.request", {"n": 1}))
        await wait_until(lambda: len(got) == 1, what="the first request")
        os.kill(first.pid, signal.SIGSTOP)
        await asyncio.sleep(0.1)  # stopped for sure: it reads nothing more
        await pub.publish(ProcessingMessage("loan.complete", {"n": 1}))  # a new stream
        await pub.publish(ProcessingMessage("loan.request", {"n": 2}))  # the last of its stream
        await asyncio.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)
        first.join(5)
        spawn_forwarder(pub_ep, sub_ep, stats_interval=None)
        await wait_until(lambda: len(got) == 3, timeout=10, what="the two lost messages, recovered")
        await asyncio.sleep(1.5)  # another heartbeat or two: nothing comes twice
        stats = sub.statistics()
    assert [(m.type_name, m.content["n"]) for m in got[1:]] in (
        [("loan.complete", 1), ("loan.request", 2)],
        [("loan.request", 2), ("loan.complete", 1)],  # two streams: no order between them
    )
    assert len(got) == 3 and stats.gaps == 0
    assert stats.recovery["recovered"] == 2, stats.recovery


async def test_a_component_killed_and_restarted_misses_nothing_and_handles_nothing_twice(
    bus: TestBus, tmp_path: Any, monkeypatch: Any
) -> None:
    """SIGKILL, then the same component (same name and replica) again: it resumes from the positions it
    recorded before each message was handled, and fetches what was published while it was down."""
    tally = tmp_path / "tally"
    monkeypatch.setenv("TALLY_FILE", str(tally))
    first = await bus.spawn("tally_components:Tally")
    pub = bus.broker("producer")
    await pub.ready()
    n = 0

    async def send(count: int) -> None:
        nonlocal n
        for _ in range(count):
            await pub.publish(ProcessingMessage("work.item", {"i": n}))
            n += 1
            await asyncio.sleep(0.005)

    def handled() -> list[int]:
        return [int(line) for line in tally.read_text().split()] if tally.exists() else []

    await send(100)
    await wait_until(lambda: len(handled()) >= 50, timeout=10, what="the component at work")
    await bus.kill(first)
    await send(100)  # published while it is down
    await bus.spawn("tally_components:Tally")
    await send(100)
    await wait_until(lambda: len(handled()) >= n, timeout=15, what="every item, handled")
    await asyncio.sleep(0.5)  # nothing more comes
    got = handled()
    assert got == list(range(n)), f"{len(got)} handled of {n}: each once, in order"


async def test_bad_history_requests_are_refused_and_bounded(bus: TestBus) -> None:
    """A malformed query and a topic-less one are refused (counted), a huge range gets at most 1,000 frames."""
    from zmqbus import RemoteError
    from zmqbus.core.control import HISTORY_SERVICE

    pub, asker = bus.broker("pub"), bus.broker("asker")
    for i in range(1500):
        await pub.publish(ProcessingMessage("big.stream", i))
    await asker.wait_for_service(HISTORY_SERVICE, instance_id=pub.client_id)
    for content in ({"topic": "big.stream", "first": 0}, {"first": 1}, "not a map", {"topic": 3, "first": 1}):
        with pytest.raises(RemoteError) as err:
            await asker.request(HISTORY_SERVICE, ProcessingMessage(HISTORY_SERVICE, content), timeout=5)
        assert err.value.error_type == "DecodeError"
    reply = await asker.request(
        HISTORY_SERVICE, ProcessingMessage(HISTORY_SERVICE, {"topic": "big.stream", "first": 1, "limit": 10**9})
    )
    assert 1 <= len(reply.content["frames"]) <= 1000 and reply.content["last"] == 1500
    stats = pub.statistics().recovery
    assert stats["refused"] == 4 and stats["served"] == 1


async def test_what_a_gone_publisher_held_is_counted_lost_exactly(bus: TestBus) -> None:
    """A publisher with no history (a raw peer) skips numbers: the fetch finds no one, the gap is counted."""

    from test_faults import good_frame, raw_publisher

    sub = bus.broker("sub")
    got: list[int] = []
    sub.subscribe("sub", "raw.#", lambda m: got.append(m.metadata.sequence))
    await sub.ready()
    sock = raw_publisher(bus.pub_endpoint, b"raw")
    try:
        for seq in (1, 2, 6, 7):
            sock.send(good_frame("raw.a", seq, seq))
        await wait_until(lambda: len(got) == 4, timeout=10, what="the four sent, after the fetch gave up")
    finally:
        sock.close(0)
    assert got == [1, 2, 6, 7] and sub.statistics().gaps == 3


async def test_a_late_joiner_starts_with_the_history_it_asks_for(bus: TestBus) -> None:
    """``subscribe(..., history=5)``: each stream starts with up to its last 5 messages the publisher
    still holds, then goes on live, in order, once."""
    pub, late = bus.broker("pub"), bus.broker("late")
    for i in range(20):
        await pub.publish(ProcessingMessage("news.x", {"i": i}))
    await pub.ready()  # past the forwarder: the late joiner can only get them from history
    got: list[int] = []
    late.subscribe("late", "news.#", lambda m: got.append(m.content["i"]), history=5)
    await late.ready()
    await wait_until(lambda: len(got) == 5, timeout=10, what="the last five, from history")
    for i in range(20, 23):
        await pub.publish(ProcessingMessage("news.x", {"i": i}))
    await wait_until(lambda: len(got) == 8, timeout=10, what="then the live ones")
    assert got == list(range(15, 23))
    assert late.statistics().gaps == 0


async def test_history_needs_recovery_on(bus: TestBus) -> None:
    from zmqbus import ZmqbusError

    plain = bus.broker("plain", history=False)
    with pytest.raises(ZmqbusError, match="history= needs recovery"):
        plain.subscribe("plain", "news.#", lambda m: None, history=5)


async def test_a_restart_beyond_the_publishers_history_counts_exactly_what_fell_outside(
    bus: TestBus, tmp_path: Any
) -> None:
    """A subscriber stops; 200 messages are published while the publisher keeps only 50; the subscriber
    started again from its recorded positions gets what is still held, in order, and counts what fell
    outside the window as lost, exactly."""
    resume = str(tmp_path / "streams.jsonl")
    pub = bus.broker("pub", history_messages=50)
    first = bus.broker("sub", resume_file=resume)
    got: list[int] = []
    first.subscribe("sub", "work.item", lambda m: got.append(m.content["i"]))
    await first.ready()
    for i in range(10):
        await pub.publish(ProcessingMessage("work.item", {"i": i}))
    await wait_until(lambda: len(got) == 10, what="the first ten")
    await first.close()
    for i in range(10, 210):
        await pub.publish(ProcessingMessage("work.item", {"i": i}))
    await pub.ready()  # a probe behind them: they have passed the forwarder, where nobody took them
    again = bus.broker("sub", resume_file=resume)
    later: list[int] = []
    again.subscribe("sub", "work.item", lambda m: later.append(m.content["i"]))
    await again.ready()
    await pub.publish(ProcessingMessage("work.item", {"i": 210}))
    await wait_until(lambda: bool(later) and later[-1] == 210, timeout=10, what="the live one, after the rest")
    # the 50 held at the fetch: 49 of the 200 and the live one itself; 11..161 (151 numbers) fell outside
    assert later == list(range(161, 211)), (pub.statistics().recovery, again.statistics().recovery)
    assert again.statistics().gaps == 151
