"""zmqbus.io.sockets' Channel: every wait is bounded by its own timeout, with one timer per channel."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator

import zmq

from zmqbus.io.sockets import Channel, get_context


@contextlib.contextmanager
def _channel() -> Iterator[tuple[Channel, zmq.Socket[bytes]]]:
    """A Channel on one end of an inproc PAIR and the other end; both closed after."""
    address = f"inproc://channel-{uuid.uuid4().hex}"
    a, b = get_context().socket(zmq.PAIR), get_context().socket(zmq.PAIR)
    a.bind(address)
    b.connect(address)
    channel = Channel(a)
    try:
        yield channel, b
    finally:
        channel.close(0)
        b.close(0)


async def test_each_waiter_times_out_at_its_own_deadline_whatever_the_order() -> None:
    with _channel() as (channel, _):
        started = time.monotonic()

        async def timed(timeout: float, delay: float = 0.0) -> tuple[bool, float]:
            await asyncio.sleep(delay)
            ok = await channel.wait_readable(timeout)
            return ok, time.monotonic() - started

        # a long wait first, then a shorter one that must not wait for the long one's timer
        results = await asyncio.gather(timed(0.6), timed(0.1, delay=0.05), timed(0.3))
        (long_ok, long_t), (short_ok, short_t), (mid_ok, mid_t) = results
        assert (long_ok, short_ok, mid_ok) == (False, False, False)
        assert 0.15 <= short_t < 0.45, short_t
        assert 0.3 <= mid_t < 0.55, mid_t
        assert 0.6 <= long_t < 1.5, long_t


async def test_a_message_wakes_every_reader_before_its_timeout() -> None:
    with _channel() as (channel, b):
        waiters = [asyncio.ensure_future(channel.wait_readable(5.0)) for _ in range(2)]
        await asyncio.sleep(0.05)  # nothing to read: neither wakes meanwhile
        assert not any(w.done() for w in waiters)
        started = time.monotonic()
        b.send(b"hello")
        assert await asyncio.gather(*waiters) == [True, True]
        assert time.monotonic() - started < 1.0
        assert channel.sock.recv(zmq.NOBLOCK) == b"hello"
        assert await channel.wait_writable(0.01) is True  # PAIR with a peer: writable at once


async def test_close_wakes_a_waiter_and_cancels_the_channel_timer() -> None:
    with _channel() as (channel, _):
        waiter = asyncio.ensure_future(channel.wait_readable(30.0))
        await asyncio.sleep(0)  # the waiter registers
        assert channel._timer is not None
        channel.close(0)
        assert await asyncio.wait_for(waiter, 1.0) is True  # woken to find out (its next call raises ClosedError)
        assert channel._timer is None
