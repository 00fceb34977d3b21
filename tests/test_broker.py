"""MessageBroker against a real forwarder (a thread of this process, tcp loopback)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from zmqbus import (
    BusTimeout,
    ClosedError,
    Forwarder,
    MessageBroker,
    MessageMetadata,
    MessageTooLarge,
    ProcessingMessage,
    TopicError,
    TransportError,
)
from zmqbus.testing import Recorder, wait_until


def broker_for(fwd: Forwarder, **kw: object) -> MessageBroker:
    return MessageBroker(fwd.pub_endpoint, fwd.sub_endpoint, **kw)  # type: ignore[arg-type]


def msg(topic: str, content: object = None, **md: object) -> ProcessingMessage:
    return ProcessingMessage(topic, content if content is not None else {}, MessageMetadata(**md))  # type: ignore[arg-type]


async def test_publish_subscribe_wildcards(forwarder: Forwarder) -> None:
    async with broker_for(forwarder, name="sub") as sub, broker_for(forwarder, name="pub") as pub:
        exact, hashes, star = Recorder(), Recorder(), Recorder()
        sub.subscribe("c", "order.start.request", exact)
        sub.subscribe("c", "order.#", hashes)
        sub.subscribe("c", "*.error", star)
        await sub.ready()
        for topic in (
            "order.start.request",
            "order.start.request.eu",
            "order",
            "payment.error",
            "a.payment.error",
            "orders.x",
        ):
            await pub.publish(msg(topic, {"t": topic}))
        await hashes.wait_for(count=3)
        await star.wait_for(count=1)
        await exact.wait_for(count=1)
        # a marker published last proves nothing else is still on its way
        await pub.publish(msg("order.end"))
        await hashes.wait_for(count=4)
        assert [m.topic for m in exact.messages] == ["order.start.request"]
        assert [m.topic for m in hashes.messages] == [
            "order.start.request",
            "order.start.request.eu",
            "order",
            "order.end",
        ]
        assert [m.topic for m in star.messages] == ["payment.error"]
        stats = sub.statistics()
        # '*.error' is a tail pattern (PROTOCOL.md section 2.3): it does not receive all traffic, only the
        # publisher's tail copies of topics ending in "error" ('a.payment.error' arrives and is matched out);
        # 'orders.x' passes the prefix of 'order.#' and is matched out; the publisher's probes never arrive
        assert stats.receives_all == 0
        assert stats.unmatched == 2
        assert pub.statistics().tails == {"sent": 2, "skipped": 0, "dropped": 0, "words": 1}
        assert stats.gaps == 0 and stats.handler_errors == 0


async def test_sync_and_async_handlers_and_order(forwarder: Forwarder) -> None:
    seen: list[int] = []
    async with broker_for(forwarder) as b:
        b.subscribe("c", "n.#", lambda m: seen.append(m.content["i"]))
        coll = Recorder()
        b.subscribe("c", "n.#", coll)
        await b.ready()
        for i in range(500):
            await b.publish(msg("n.x", {"i": i}))
        await coll.wait_for(count=500)
        assert seen == list(range(500))
        assert [m.metadata.sequence for m in coll.messages] == list(range(1, 501))


async def test_subscribe_before_start_as_in_the_guide(forwarder: Forwarder) -> None:
    b = broker_for(forwarder)
    coll = Recorder()
    b.subscribe("manager", "x.start.request.#", coll)  # plain call, no loop needed yet
    await b.ready()  # starts the broker
    await b.publish(msg("x.start.request", {"k": 1}))
    assert (await coll.wait_for()).content == {"k": 1}
    await b.close()
    await b.close()  # idempotent
    assert b.closed
    with pytest.raises(ClosedError):
        await b.publish(msg("x.y"))
    with pytest.raises(ClosedError):
        b.subscribe("m", "a", coll)


async def test_unsubscribe(forwarder: Forwarder) -> None:
    async with broker_for(forwarder) as b:
        a, c = Recorder(), Recorder()
        sub_a = b.subscribe("one", "u.#", a)
        b.subscribe("two", "u.#", c)
        await b.ready()
        await b.publish(msg("u.1"))
        await a.wait_for(count=1)
        await c.wait_for(count=1)
        assert b.unsubscribe(sub_a) == 1
        assert b.unsubscribe("nobody") == 0
        await b.publish(msg("u.2"))
        await c.wait_for(count=2)
        assert len(a.messages) == 1
        assert b.unsubscribe("two", "u.#") == 1
        assert b.statistics().subscriptions == 0


async def test_handler_errors_are_counted_and_dispatch_goes_on(
    forwarder: Forwarder, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(m: ProcessingMessage) -> None:
        raise RuntimeError(f"boom {m.content['i']}")

    async with broker_for(forwarder) as b:
        coll = Recorder()
        b.subscribe("bad", "h.#", boom)
        b.subscribe("good", "h.#", coll)
        await b.ready()
        with caplog.at_level(logging.ERROR, logger="zmqbus.bus.broker"):
            for i in range(50):
                await b.publish(msg("h.x", {"i": i}))
            await coll.wait_for(count=50)
        assert b.statistics().handler_errors == 50
        # logged once, not 50 times
        assert len([r for r in caplog.records if "boom" in r.getMessage()]) == 1


async def test_invalid_input_is_refused_locally(forwarder: Forwarder) -> None:
    async with broker_for(forwarder, max_message_size=2000) as b:
        with pytest.raises(TopicError):
            b.subscribe("c", "a..b", Recorder())
        with pytest.raises(TopicError):
            await b.publish(msg("a.*"))
        with pytest.raises(MessageTooLarge):
            await b.publish(msg("a.b", {"blob": b"x" * 5000}))
        assert b.statistics().published == 0


async def test_ready_times_out_without_forwarder(tcp_pair: tuple[str, str]) -> None:
    async with MessageBroker(*tcp_pair) as b:
        with pytest.raises(BusTimeout, match="no answer from the forwarder"):
            await b.ready(timeout=0.3)
    # publish waits for the bus once, bounded by publish_timeout
    async with MessageBroker(*tcp_pair, publish_timeout=0.2) as b:
        with pytest.raises(BusTimeout):
            await b.publish(msg("a.b"))


async def test_concurrent_ready_calls_share_one_probe(forwarder: Forwarder) -> None:
    # A burst of first requests or publishes used to send one probe each (and subscribe and unsubscribe a
    # private topic each): 300 workflows at once sent 300 probes through the forwarder.
    async with broker_for(forwarder, name="burst") as b:
        await b.start()
        readiness = b._readiness
        await asyncio.gather(*(b.ready() for _ in range(200)))
        first = readiness._count
        assert 1 <= first <= 2, first  # one, or one more for calls that came after the first had started
        b.subscribe("c", "x.y", lambda m: None)  # a new subscription: the next calls need a newer probe
        await asyncio.gather(*(b.ready() for _ in range(200)))
        assert readiness.live and readiness._count - first <= 2


async def test_a_call_cancelled_as_the_shared_probe_ends_stays_cancelled(forwarder: Forwarder) -> None:
    # asyncio.wait_for (3.11) returns the inner result when the cancellation and the result come in the same
    # loop turn, losing the cancellation: a responder's heartbeat task cancelled at close then ran forever.
    async with broker_for(forwarder) as b:
        await b.start()
        waiters = [asyncio.ensure_future(b.ready()) for _ in range(5)]
        await asyncio.sleep(0)  # they start the shared probe
        running = b._readiness._running
        assert running is not None
        running.add_done_callback(lambda _: [w.cancel() for w in waiters])
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results


async def test_shared_probe_keeps_each_callers_timeout(tcp_pair: tuple[str, str]) -> None:
    async with MessageBroker(*tcp_pair) as b:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        short = asyncio.ensure_future(b.ready(timeout=0.2))
        long = asyncio.ensure_future(b.ready(timeout=0.6))
        with pytest.raises(BusTimeout):
            await short
        assert loop.time() - t0 < 0.45
        with pytest.raises(BusTimeout):  # outlived the shared probe that timed out at 0.2 s
            await long
        assert loop.time() - t0 >= 0.55


async def test_publish_waits_at_the_high_water_mark_instead_of_dropping(tcp_pair: tuple[str, str]) -> None:
    """With the forwarder's proxy unable to keep up, publish blocks, then times out; nothing is dropped."""
    fwd = Forwarder(*tcp_pair, stats_interval=None).start()
    try:
        async with (
            MessageBroker(*tcp_pair, hwm=10, publish_timeout=0.5) as pub,
            MessageBroker(*tcp_pair, hwm=10) as sub,
        ):
            gate = asyncio.Event()
            got: list[int] = []

            async def slow(m: ProcessingMessage) -> None:
                await gate.wait()
                got.append(m.content["i"])

            sub.subscribe("s", "w.#", slow)
            await sub.ready()
            await pub.ready()
            fwd.stop()  # nothing drains the publisher any more
            sent = 0
            with pytest.raises(BusTimeout, match="high-water mark"):
                for i in range(100_000):
                    await pub.publish(msg("w.x", {"i": i}))
                    sent += 1
            assert pub.statistics().publish_waits >= 1
            assert sent < 100_000
    finally:
        fwd.stop()


@pytest.mark.parametrize("batching", [False, True])
@pytest.mark.timeout(30, method="thread")  # a spin would starve the signal method's exception too: end the worker
async def test_a_publish_held_at_the_high_water_mark_lets_the_loop_run(
    tcp_pair: tuple[str, str], batching: bool
) -> None:
    """libzmq reports POLLOUT on an XPUB at all times (libzmq issue 1597): a wait on readiness returns at
    once, and a retry loop on it spun without yielding: other tasks stalled for the whole publish
    timeout, and a held batch never timed out at all. The wait is a paused retry now."""
    fwd = Forwarder(*tcp_pair, stats_interval=None).start()
    try:
        async with (
            MessageBroker(*tcp_pair, hwm=10, publish_timeout=0.5, batching=batching) as pub,
            MessageBroker(*tcp_pair, hwm=10) as sub,
        ):
            sub.subscribe("s", "w.#", lambda m: None)
            await sub.ready()
            await pub.ready()
            fwd.stop()  # nothing drains the publisher any more
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            task = asyncio.get_running_loop().create_task(ticker())
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(BusTimeout, match="high-water mark"):
                for i in range(100_000):
                    await pub.publish(msg("w.x", {"i": i}))
            waited = loop.time() - start
            task.cancel()
            assert waited < 5, "the publish timeout holds"
            assert ticks >= 10, f"the event loop ran {ticks} times in {waited:.2f} s of waiting"
    finally:
        fwd.stop()


async def test_a_publish_waiting_at_the_high_water_mark_ends_when_the_broker_closes(tcp_pair: tuple[str, str]) -> None:
    """close() ends a publish held at the high-water mark at once with ClosedError (not after its timeout,
    and never by queueing the message on a closed broker)."""
    fwd = Forwarder(*tcp_pair, stats_interval=None).start()
    try:
        async with MessageBroker(*tcp_pair, hwm=10) as sub:
            sub.subscribe("s", "w.#", lambda m: None)
            await sub.ready()
            pub = MessageBroker(*tcp_pair, hwm=10, publish_timeout=60, linger=0.2)
            await pub.ready()
            fwd.stop()  # nothing drains the publisher any more

            async def flood() -> None:
                for i in range(100_000):
                    await pub.publish(msg("w.x", {"i": i}))

            task = asyncio.get_running_loop().create_task(flood())
            await wait_until(lambda: pub.statistics().publish_waits >= 1 or task.done(), what="a publish waits")
            await pub.close()
            published = pub.statistics().published
            with pytest.raises(ClosedError, match="closed while publishing"):  # the waiting publish itself
                await asyncio.wait_for(task, 5)
            assert pub.statistics().published == published, "nothing was queued on the closed broker"
    finally:
        fwd.stop()


async def test_gaps_are_counted_when_the_forwarder_drops(tcp_pair: tuple[str, str]) -> None:
    """A blocked subscriber behind a tiny HWM loses messages; with recovery off, every loss shows up as a
    gap (tests/test_recovery.py: with it on, they are fetched back)."""
    from zmqbus.io.transport import SocketConfig

    fwd = Forwarder(*tcp_pair, socket_config=SocketConfig(hwm=20), stats_interval=None).start()
    try:
        async with (
            MessageBroker(*tcp_pair, history=False) as pub,
            MessageBroker(*tcp_pair, hwm=20, history=False) as sub,
        ):
            gate = asyncio.Event()
            got: list[int] = []

            async def blocked(m: ProcessingMessage) -> None:
                await gate.wait()
                got.append(m.metadata.sequence)

            sub.subscribe("s", "g.#", blocked)
            await sub.ready()
            # 40 MB: far more than the high-water marks and the kernel's
            # loopback buffers can hold, so drops are certain.
            n = 20_000
            pad = "x" * 2000
            for i in range(n):
                await pub.publish(msg("g.x", {"i": i, "pad": pad}))
            gate.set()
            # Markers until one arrives: the path is FIFO, so once a marker is
            # in, every surviving message is in, and a lost tail shows as a gap.
            marker = n
            while not got or got[-1] <= n:
                await pub.publish(msg("g.x", {"i": marker}))
                marker += 1
                try:
                    await wait_until(lambda: bool(got) and got[-1] > n, timeout=0.05)
                except AssertionError:
                    pass
            stats = sub.statistics()
            assert len(got) < n, "the test needs real drops"
            assert stats.gaps > 0
            assert len(got) + stats.gaps == got[-1], "every sequence number is either delivered or counted lost"
    finally:
        fwd.stop()


async def test_inproc_forwarder_in_the_same_process() -> None:
    fwd = Forwarder("inproc://t-pub", "inproc://t-sub", stats_interval=None).start()
    try:
        async with MessageBroker("inproc://t-pub", "inproc://t-sub") as b:
            coll = Recorder()
            b.subscribe("c", "i.#", coll)
            await b.ready()
            await b.publish(msg("i.x", [1, 2, 3]))
            assert (await coll.wait_for()).content == [1, 2, 3]
    finally:
        fwd.stop()


async def test_forwarder_statistics_and_stats_messages(tcp_pair: tuple[str, str]) -> None:
    from zmqbus.bus.forwarder import STATS_TOPIC

    fwd = Forwarder(*tcp_pair, stats_interval=0.1).start()
    try:
        async with MessageBroker(*tcp_pair) as b:
            coll = Recorder()
            b.subscribe("c", STATS_TOPIC, coll)
            b.subscribe("c", "s.#", Recorder())
            await b.ready()
            for _ in range(10):
                await b.publish(msg("s.x"))
            await wait_until(lambda: fwd.statistics().frames_in >= 20, what="frames counted")
            stats = fwd.statistics()
            assert stats.bytes_in >= stats.frames_in and stats.frames_out >= 20
            assert stats.publisher_connects >= 1 and stats.subscriber_connects >= 1
            report = await coll.wait_for()
            assert report.content["frames_in"] >= 0 and report.metadata.source_component == "forwarder"
    finally:
        fwd.stop()
    with pytest.raises(ClosedError):
        fwd.statistics()


def test_forwarder_bind_errors(tcp_pair: tuple[str, str]) -> None:
    from zmqbus import TransportError

    fwd = Forwarder(*tcp_pair, stats_interval=None).start()
    try:
        with pytest.raises(TransportError, match="bind"):
            Forwarder(*tcp_pair, stats_interval=None).start()
        with pytest.raises(TransportError):
            Forwarder("bogus://x", "tcp://127.0.0.1:1", stats_interval=None).start()
    finally:
        fwd.stop()


async def test_sequence_tables_stay_bounded(forwarder: Forwarder) -> None:
    """The gap detector's tables (recovery off; core.recovery bounds its own streams)."""
    async with MessageBroker(forwarder.pub_endpoint, forwarder.sub_endpoint, history=False) as b:
        b._publisher._sequencer.topics_limit = b._receiver.sequences.topics_limit = 10
        coll = Recorder()
        b.subscribe("c", "many.#", coll)
        await b.ready()
        for i in range(25):
            await b.publish(msg(f"many.t{i}"))
        for i in range(25):
            await b.publish(msg(f"many.t{i}"))  # second round: some tables were reset meanwhile
        await coll.wait_for(count=50)
        assert len(b._publisher._sequencer) <= 10
        assert b._receiver.sequences.tracked()[1] <= 10
        assert b.statistics().gaps == 0  # a reset is not a loss


def test_errors_users_can_see_derive_from_zmqbus_error(tcp_pair: tuple[str, str]) -> None:
    """The error boundary: a forwarder on a taken port, a misused one, a bad workflow transition."""
    from zmqbus import ZmqbusError
    from zmqbus.core.workflow import ComponentContext, ComponentState, InvalidTransition

    with Forwarder(*tcp_pair, stats_interval=None) as fwd:
        with pytest.raises(TransportError, match="bind"):
            Forwarder(*tcp_pair, stats_interval=None).start()
        with pytest.raises(ZmqbusError, match="already started"):
            fwd.start()
    ctx = ComponentContext("wf-1", "m-1")
    with pytest.raises(InvalidTransition) as info:
        ctx.transition(ComponentState.COMPLETED)
    assert isinstance(info.value, ZmqbusError)


def test_settings_come_as_keywords_or_as_one_options_object() -> None:
    """Keywords override an options object field by field; a misspelt setting fails at once."""
    from zmqbus import BrokerOptions

    base = BrokerOptions(name="a", heartbeat=0.5, hwm=10)
    broker = MessageBroker("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", options=base, heartbeat=0.25)
    assert (broker.name, broker.options.heartbeat, broker.options.hwm) == ("a", 0.25, 10)
    assert broker.socket_config.hwm == 10
    with pytest.raises(TypeError, match="hearbeat"):
        MessageBroker(hearbeat=1.0)  # type: ignore[call-arg]
