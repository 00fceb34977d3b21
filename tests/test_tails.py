"""Tail routing (PROTOCOL.md section 2.3): a pattern that starts with a wildcard and ends with a word
(`#.error`, `*.status.update`) receives tail copies of the topics ending with that word, not the whole bus."""

from __future__ import annotations

import asyncio
import time

import zmq

from zmqbus import Forwarder, MessageBroker, MessageMetadata, ProcessingMessage
from zmqbus.core.guard import PolicyGuard, publication_topic
from zmqbus.core.policy import Policy, SubscriptionLimits
from zmqbus.core.subscriptions import SubscriptionTable
from zmqbus.core.topics import tail_prefix
from zmqbus.testing import Recorder, wait_until


def broker_for(fwd: Forwarder, name: str) -> MessageBroker:
    return MessageBroker(fwd.pub_endpoint, fwd.sub_endpoint, name=name)


def msg(topic: str, i: int = 0) -> ProcessingMessage:
    return ProcessingMessage(topic, {"i": i}, MessageMetadata())


TOPICS = ["order.created", "order.error", "payment.error", "a.b.c", "error", "order.x.error", "errors.x"]


async def test_a_tail_pattern_receives_only_its_tail(forwarder: Forwarder) -> None:
    async with broker_for(forwarder, "errors") as sub, broker_for(forwarder, "pub") as pub:
        errors = Recorder()
        sub.subscribe("c", "#.error", errors)
        await sub.ready()
        await pub.ready()
        for _ in range(20):
            for topic in TOPICS:
                await pub.publish(msg(topic))
        await errors.wait_for(count=80)
        await pub.publish(msg("end.error"))  # a marker: nothing else is on its way
        await errors.wait_for(count=81)
        assert {m.topic for m in errors.messages} == {
            "order.error",
            "payment.error",
            "error",
            "order.x.error",
            "end.error",
        }
        stats = sub.statistics()
        assert stats.receives_all == 0 and stats.unmatched == 0 and stats.gaps == 0
        # only the tail copies (and its own ready() probe), none of the 60 other publications, reached it
        assert 81 <= stats.received <= 83
        assert pub.statistics().tails["sent"] == 81


async def test_a_client_with_both_kinds_gets_each_message_once(forwarder: Forwarder) -> None:
    async with broker_for(forwarder, "both") as sub, broker_for(forwarder, "pub") as pub:
        orders, errors = Recorder(), Recorder()
        sub.subscribe("c", "order.#", orders)
        sub.subscribe("c", "#.error", errors)
        await sub.ready()
        await pub.ready()
        for i in range(50):
            for topic in TOPICS:
                await pub.publish(msg(topic, i))
        await errors.wait_for(count=200)
        await orders.wait_for(count=150)
        await pub.publish(msg("order.end"))
        await orders.wait_for(count=151)
        # order.error and order.x.error come as ordinary frames and as tail copies: each handled once
        assert [m.content["i"] for m in errors.messages if m.topic == "order.error"] == list(range(50))
        assert [m.content["i"] for m in orders.messages if m.topic == "order.x.error"] == list(range(50))
        stats = sub.statistics()
        assert stats.tails["dropped"] == 100 and stats.gaps == 0 and stats.duplicates == 0


async def test_publishers_stop_copying_when_the_last_tail_subscriber_leaves(forwarder: Forwarder) -> None:
    async with broker_for(forwarder, "pub") as pub:
        await pub.ready()
        async with broker_for(forwarder, "errors") as sub:
            errors = Recorder()
            sub.subscribe("c", "*.error", errors)
            await sub.ready()
            await wait_until(lambda: pub.statistics().tails["words"] == 1, what="the publisher sees the tail")
            await pub.publish(msg("x.error"))
            await errors.wait_for(count=1)
            sub.unsubscribe("c", "*.error")
            await wait_until(lambda: pub.statistics().tails["words"] == 0, what="the publisher forgets it")
        sent = pub.statistics().tails["sent"]
        await pub.publish(msg("x.error"))
        assert pub.statistics().tails["sent"] == sent


async def test_a_raw_zmq_subscriber_joins_by_the_tail_prefix(forwarder: Forwarder) -> None:
    # What PROTOCOL.md section 2.3 tells a peer in another language: subscribe 0x01 word NUL, strip up to the
    # first NUL, and the rest is an ordinary frame.
    # A subscriber of everything gets the tail copies too, each after its ordinary frame, and tells them
    # apart by their first byte (it drops them: it has every ordinary frame already).
    raw = zmq.Context.instance().socket(zmq.SUB)
    everything = zmq.Context.instance().socket(zmq.SUB)
    for sock, prefix in ((raw, tail_prefix("update")), (everything, b"")):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, prefix)
        sock.connect(forwarder.sub_endpoint)
    try:
        async with broker_for(forwarder, "pub") as pub:
            await wait_until(
                lambda: (pub._publisher.poll_notices(), pub._publisher.tails)[1] == {"update"}, what="tail"
            )
            await pub.publish(msg("order.status.update"))
            await pub.publish(msg("order.created"))
            await pub.publish(msg("end.status.update"))  # a marker: one publisher's frames arrive in order
            await asyncio.sleep(0)  # the turn ends: the outbox hands the frames to libzmq (batching.py)
            got = []
            for _ in range(2):
                assert raw.poll(5000)
                header, _, inner = raw.recv().partition(b"\x00")
                assert header == b"\x01update"
                got.append(inner.partition(b"\x00")[0])
            assert got == [b"order.status.update", b"end.status.update"]  # order.created never came
            seen = []
            while len(seen) < 5 and everything.poll(5000):
                frame = everything.recv()
                if not frame.startswith(b"_zmqbus."):
                    seen.append(frame.split(b"\x00")[0])
            assert seen == [
                b"order.status.update",
                b"\x01update",
                b"order.created",
                b"end.status.update",
                b"\x01update",
            ]
    finally:
        raw.close(0)
        everything.close(0)


def test_table_knows_what_its_ordinary_prefixes_let_through() -> None:
    table = SubscriptionTable()
    table.add("c", "#.error", lambda m: None, is_async=False)
    assert not table.ordinary_covers(b"order.error")
    table.add("c", "order.#", lambda m: None, is_async=False)
    assert table.ordinary_covers(b"order.error") and not table.ordinary_covers(b"payment.error")


def test_the_forwarder_checks_the_topic_inside_a_tail_copy() -> None:
    assert publication_topic(b"order.error\x00\x9e") == b"order.error"
    assert publication_topic(b"\x01error\x00order.error\x00\x9e") == b"order.error"
    assert publication_topic(b"\x01error\x00payroll.run\x00\x9e") == b""  # word is not the topic's last
    assert publication_topic(b"\x01\x00x") == b""
    policy = Policy.from_dict(
        {
            "keys": {
                "orders": {"publish": ["order.#"], "subscribe": ["order.#"]},
                "errors": {"publish": ["#"], "subscribe": ["#.error"]},
            }
        }
    )
    guard = PolicyGuard(policy, SubscriptionLimits())
    assert guard.may_publish("orders", publication_topic(b"\x01error\x00order.error\x00\x9e"))
    assert not guard.may_publish("orders", publication_topic(b"\x01error\x00payroll.error\x00\x9e"))
    # a tail subscription is every topic ending in the word: granted by "#" or "#.word" only
    assert policy.grant("errors", tail_prefix("error")) == [tail_prefix("error")]
    assert policy.grant("errors", tail_prefix("update")) == []
    assert policy.grant("orders", tail_prefix("error")) == []


async def test_a_publisher_that_never_yields_sees_a_new_tail_within_256_messages(forwarder: Forwarder) -> None:
    # PROTOCOL.md 2.3's bound for a busy publisher: its notices are read every 256th message of a topic, so a
    # tail subscribed while it publishes without ever yielding (its watcher task cannot run) still gets copies.
    import threading

    got: list[bytes] = []
    async with broker_for(forwarder, "pub") as pub:
        await pub.ready()
        publisher = pub._publisher

        def subscribe_midway() -> None:
            sock = zmq.Context.instance().socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(forwarder.sub_endpoint)
            deadline = time.monotonic() + 20
            while publisher.published < 2_000 and time.monotonic() < deadline:  # the loop below is running
                time.sleep(0.0001)
            sock.setsockopt(zmq.SUBSCRIBE, tail_prefix("error"))
            while sock.poll(2_000):
                got.append(sock.recv())
            sock.close(0)

        thread = threading.Thread(target=subscribe_midway, daemon=True)
        thread.start()
        learnt_at, learnt = 0, set[str]()
        try:
            # Never awaits anything that yields, for as long as the subscription takes to travel (a loaded
            # machine may take longer than any fixed count of messages), then 5,000 more: bounded in count
            # (2 million) and time (30 s).
            deadline, i = time.monotonic() + 30, 0
            while i < 2_000_000 and (not learnt_at or i < learnt_at + 5_000) and time.monotonic() < deadline:
                i += 1
                await pub.publish(msg("x.error", i))
                if not learnt_at and publisher.tails:
                    learnt_at, learnt = i, set(publisher.tails)
        finally:
            await asyncio.to_thread(thread.join, 20)
        # learnt inside publish(), the loop never yielded (read then: once the thread has closed its socket,
        # the watcher may have heard the tail go away while the test waited for the thread)
        assert learnt_at and learnt == {"error"}
        sent = pub.statistics().tails["sent"]
        assert sent > 0 and len(got) == sent and got[-1].startswith(b"\x01error\x00x.error\x00")
