"""The subscriber's dispatch starts handlers in runs of one topic (one call a run, not one a message): what
that must not change. Arrival order across topics and batch frames, an unsubscribe inside a handler taking
effect at the next message, the pending-handler bound, and a stream journal recorded before each message's
handlers and after the previous message's. A Receiver fed frames directly: no sockets."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from zmqbus.bus.receiver import Receiver
from zmqbus.core.codec import Codec, batch_frame
from zmqbus.core.message import MessageMetadata, ProcessingMessage
from zmqbus.core.ratelog import RateLimitedLog
from zmqbus.core.recovery import Recovery
from zmqbus.core.subscriptions import SubscriptionTable

pytestmark = pytest.mark.timeout(30)

CODEC = Codec()
_seqs: dict[str, int] = {}


def payloads(topic: str, count: int) -> tuple[bytes, list[bytes]]:
    """The frame head of ``topic`` and ``count`` payloads numbered on from the last call's (publisher p-1)."""
    msg = ProcessingMessage(topic, {}, MessageMetadata())
    head = CODEC.frame_head(msg)
    out = []
    for _ in range(count):
        seq = _seqs[topic] = _seqs.get(topic, 0) + 1
        one = ProcessingMessage(topic, {"topic": topic, "n": seq}, MessageMetadata())
        out.append(CODEC.encode(one, head, "p-1", seq, "pub"))
    return head, out


def frames(topic: str, count: int) -> list[bytes]:
    head, ps = payloads(topic, count)
    return [head + p for p in ps]


def batch(topic: str, count: int) -> bytes:
    return batch_frame(*payloads(topic, count))


def receiver(max_pending: int = 1000, recovery: bool = True) -> Receiver:
    _seqs.clear()
    rec = Receiver(SubscriptionTable(), CODEC, max_pending, RateLimitedLog(logging.getLogger("test")))
    if recovery:
        rec.recovery = Recovery(1.0)
    return rec


def key(m: ProcessingMessage) -> str:
    return f"{m.content['topic']}{m.content['n']}"


@pytest.mark.parametrize("recovery", [True, False])
async def test_handlers_start_in_arrival_order_across_topics_and_batch_frames(recovery: bool) -> None:
    rec = receiver(recovery=recovery)
    got: list[str] = []

    async def on_any(m: ProcessingMessage) -> None:
        got.append(key(m))

    rec.table.add("c", "a", on_any, is_async=True)
    rec.table.add("c", "b", on_any, is_async=True)
    wire = frames("a", 2) + frames("b", 1) + frames("a", 1) + [batch("a", 3)] + frames("b", 2) + [batch("b", 2)]
    wire += frames("x", 2)  # nobody subscribes: counted unmatched, one by one
    await rec.dispatch(wire)
    assert got == ["a1", "a2", "b1", "a3", "a4", "a5", "a6", "b2", "b3", "b4", "b5"]
    assert rec.received == 13 and rec.dispatched == 11 and rec.unmatched == 2


async def test_an_unsubscribe_in_a_handler_takes_effect_at_the_next_message_of_the_run() -> None:
    rec = receiver()
    got: list[str] = []
    kept: list[str] = []

    def on_a(m: ProcessingMessage) -> None:
        got.append(key(m))
        if m.content["n"] == 2:
            rec.table.remove([sub])

    sub, _ = rec.table.add("c", "a", on_a, is_async=False)
    rec.table.add("c", "a", lambda m: kept.append(key(m)), is_async=False)
    await rec.dispatch(frames("a", 3) + [batch("a", 3)])
    assert got == ["a1", "a2"]
    assert kept == ["a1", "a2", "a3", "a4", "a5", "a6"]


async def test_the_pending_bound_holds_within_a_run_and_order_is_kept() -> None:
    rec = receiver(max_pending=2)
    release = asyncio.Event()
    started: list[str] = []
    running = [0]
    most = [0]

    async def slow(m: ProcessingMessage) -> None:
        started.append(key(m))
        running[0] += 1
        most[0] = max(most[0], running[0])
        await release.wait()
        running[0] -= 1

    rec.table.add("c", "a", slow, is_async=True)
    dispatch = asyncio.ensure_future(rec.dispatch(frames("a", 3) + [batch("a", 4)]))
    for _ in range(20):  # loop turns, no I/O: the dispatch goes as far as it can
        await asyncio.sleep(0)
    assert started == ["a1", "a2"] and not dispatch.done()  # the rest waits for a running handler to end
    release.set()
    await asyncio.wait_for(dispatch, 5)
    assert await rec.handlers.drain(5)
    assert started == [f"a{i}" for i in range(1, 8)]
    assert most[0] <= 2


async def test_a_journal_records_each_message_after_the_previous_ones_handlers_and_before_its_own() -> None:
    rec = receiver()
    log: list[str] = []

    class Journal:
        def record(self, publisher: str, topic: str, seq: int) -> None:
            log.append(f"record {topic}{seq}")

    rec.journal = Journal()  # type: ignore[assignment]
    rec.table.add("c", "#", lambda m: log.append(f"start {key(m)}"), is_async=False)
    await rec.dispatch(frames("a", 2) + [batch("a", 2)] + frames("b", 1))
    expected: list[Any] = []
    for k in ("a1", "a2", "a3", "a4", "b1"):
        expected += [f"record {k}", f"start {k}"]
    assert log == expected
