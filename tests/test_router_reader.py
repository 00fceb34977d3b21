"""serve_router: a ROUTER read from its FD callback (no task between the FD and the handler), in order,
bounded when an FD edge is lost, and ended by a failure or a cancel."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest
import zmq

from zmqbus.bus.port import _RouterReader, serve_router
from zmqbus.io.sockets import get_context
from zmqbus.io.transport import RouterLink, SocketConfig


def _link() -> tuple[RouterLink, zmq.Socket[bytes]]:
    router = RouterLink(SocketConfig(linger=0))
    endpoint = router.bind("tcp://127.0.0.1:*")
    dealer = get_context().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    return router, dealer


@contextlib.asynccontextmanager
async def _served(
    on_frames: Callable[[list[bytes], str], None], after_batch: Callable[[], None] | None = None
) -> AsyncIterator[tuple[RouterLink, zmq.Socket[bytes], asyncio.Task[None]]]:
    """A ROUTER served by serve_router and a DEALER connected to it; the task ended and both closed after."""
    router, dealer = _link()
    task = asyncio.ensure_future(serve_router(router, on_frames, after_batch))
    try:
        yield router, dealer, task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        router.close(0)
        dealer.close(0)


async def _until(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_every_message_arrives_in_order_with_a_flush_after_each_batch() -> None:
    got: list[bytes] = []
    batches: list[int] = []
    async with _served(lambda f, u: got.append(f[1]), lambda: batches.append(len(got))) as (_, dealer, _task):
        for i in range(1000):
            dealer.send(b"%d" % i)
            if i % 100 == 0:
                await asyncio.sleep(0)  # some arrive while the reader is idle, some in bursts
        await _until(lambda: len(got) == 1000)
        assert got == [b"%d" % i for i in range(1000)]
        assert batches and batches[-1] == 1000 and batches == sorted(batches)


async def test_a_lost_fd_edge_delays_a_message_by_the_watchdog_at_most() -> None:
    """With the FD callback gone (what a lost edge looks like), the watchdog still reads within a second."""
    got: list[bytes] = []
    async with _served(lambda f, u: got.append(f[1])) as (router, dealer, _task):
        dealer.send(b"first")
        await _until(lambda: got == [b"first"])
        asyncio.get_running_loop().remove_reader(router.channel._fd)  # no FD callback any more
        started = time.monotonic()
        dealer.send(b"second")
        await _until(lambda: got == [b"first", b"second"], timeout=5.0)
        assert time.monotonic() - started <= _RouterReader.WATCHDOG + 1.0  # slack for a loaded machine


async def test_a_failing_handler_ends_the_reading_with_its_error() -> None:
    """The task fails (its owner makes that fatal: a responder that no longer reads must not look alive)
    and the FD callback no longer reads."""

    def boom(frames: list[bytes], user: str) -> None:
        raise RuntimeError(f"cannot handle {frames[1]!r}")

    async with _served(boom) as (router, dealer, task):
        dealer.send(b"bad")
        with pytest.raises(RuntimeError, match="cannot handle b'bad'"):
            await asyncio.wait_for(asyncio.shield(task), 5.0)
        assert router.channel._reader is None


async def test_a_cancelled_reader_reads_nothing_more() -> None:
    got: list[bytes] = []
    async with _served(lambda f, u: got.append(f[1])) as (router, dealer, task):
        dealer.send(b"one")
        await _until(lambda: got == [b"one"])
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert router.channel._reader is None
        dealer.send(b"two")
        await _until(lambda: router.channel.readable())  # it arrived; nobody reads it
        assert got == [b"one"]
        assert router.recv_batch(10)[0][1] == b"two"
