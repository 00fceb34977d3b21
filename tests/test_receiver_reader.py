"""The subscriber side read from its FD callback (Receiver.run): a lost FD edge costs at most a tick, and
reading paused for a dispatch that waits (the pending-handler bound) neither spins nor reorders."""

from __future__ import annotations

import asyncio
import time

import pytest

from zmqbus import Forwarder, MessageBroker, MessageMetadata, ProcessingMessage
from zmqbus.testing import wait_until

pytestmark = pytest.mark.timeout(60)


def broker_for(fwd: Forwarder, name: str, **kw: object) -> MessageBroker:
    return MessageBroker(fwd.pub_endpoint, fwd.sub_endpoint, name=name, **kw)  # type: ignore[arg-type]


def msg(i: int) -> ProcessingMessage:
    return ProcessingMessage("ev.one", {"i": i}, MessageMetadata())


async def test_a_lost_fd_edge_on_the_subscriber_delays_a_message_by_a_tick_at_most(forwarder: Forwarder) -> None:
    got: list[int] = []

    async def on_event(m: ProcessingMessage) -> None:
        got.append(m.content["i"])

    async with broker_for(forwarder, "sub") as sub, broker_for(forwarder, "pub") as pub:
        sub.subscribe("sub", "ev.#", on_event)
        await sub.ready()
        await pub.ready()
        await pub.publish(msg(0))
        await wait_until(lambda: got == [0], timeout=10)
        asyncio.get_running_loop().remove_reader(sub._link.sub._fd)  # type: ignore[union-attr]  # no FD callback
        started = time.monotonic()
        await pub.publish(msg(1))
        await wait_until(lambda: got == [0, 1], timeout=10)
        assert time.monotonic() - started <= 1.0 + 1.0  # the tick (1 s, 0.25 s with recovery), with slack


async def test_reading_paused_at_the_pending_bound_neither_spins_nor_reorders(forwarder: Forwarder) -> None:
    started: list[int] = []

    async def slow(m: ProcessingMessage) -> None:
        started.append(m.content["i"])
        await asyncio.sleep(0.2)

    async with (
        broker_for(forwarder, "sub", max_pending_handlers=2) as sub,
        broker_for(forwarder, "pub") as pub,
    ):
        sub.subscribe("sub", "ev.#", slow)
        await sub.ready()
        await pub.ready()
        cpu = time.process_time()
        for i in range(10):
            await pub.publish(msg(i))
        await wait_until(lambda: len(started) == 10, timeout=20)
        await asyncio.sleep(0.25)
        # ten 0.2 s handlers, two at a time: about a second, nearly all of it waiting (a spinning FD
        # callback would burn the whole second)
        used = time.process_time() - cpu
        assert used < 0.6, f"{used:.2f} s of CPU while waiting"
    assert started == list(range(10))
