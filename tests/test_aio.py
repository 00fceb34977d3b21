"""zmqbus.io.aio: the task owner and the daemon-thread runner."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

import pytest

from zmqbus.core.errors import BusTimeout, ClosedError
from zmqbus.io.aio import TaskOwner, run_on_loop, to_thread


async def test_drain_waits_for_tasks_started_while_draining() -> None:
    owner = TaskOwner()
    done: list[str] = []

    async def child() -> None:
        await asyncio.sleep(0.02)
        done.append("child")

    async def parent() -> None:
        await asyncio.sleep(0.01)
        owner.spawn(child(), name="child", fatal=False)
        done.append("parent")

    owner.spawn(parent(), name="parent", fatal=False)
    assert await owner.drain(5.0) is True
    assert done == ["parent", "child"] and len(owner) == 0


async def test_drain_times_out_then_cancel_ends_everything() -> None:
    owner = TaskOwner()
    task = owner.spawn(asyncio.sleep(60), name="slow", fatal=False)
    assert await owner.drain(0.05) is False
    await owner.cancel()
    assert task.cancelled() and len(owner) == 0


async def test_a_fatal_failure_is_reported_once_and_a_plain_one_only_logged() -> None:
    failures: list[BaseException] = []
    owner = TaskOwner(failures.append)

    async def boom() -> None:
        raise RuntimeError("boom")

    owner.spawn(boom(), name="plain", fatal=False)
    owner.spawn(boom(), name="fatal")
    await owner.drain(5.0)
    assert [str(e) for e in failures] == ["boom"]


async def test_to_thread_carries_context_and_uses_daemon_threads() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("the caller's")

    def where() -> tuple[bool, str]:
        return threading.current_thread().daemon, var.get()

    assert await to_thread(where) == (True, "the caller's")


async def test_to_thread_results_that_finish_together_wake_the_loop_once() -> None:
    """Every job's result (or exception) reaches its own awaiter; jobs that finish while the loop is busy
    are handed over with one wake-up of the loop (a self-pipe write each cost a third of a sync handler's
    throughput)."""
    loop = asyncio.get_running_loop()
    wakes: list[object] = []
    real = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        wakes.append(callback)
        return real(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
    try:

        def work(i: int) -> int:
            if i % 3 == 0:
                raise ValueError(f"job {i}")
            return i * i

        jobs = [asyncio.ensure_future(to_thread(work, i)) for i in range(60)]
        await asyncio.sleep(0)  # every job is submitted
        time.sleep(0.3)  # the loop is busy while the threads finish them all
        results = await asyncio.gather(*jobs, return_exceptions=True)
    finally:
        del loop.call_soon_threadsafe
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, ValueError) and str(result) == f"job {i}"
        else:
            assert result == i * i
    assert 1 <= len(wakes) <= 3, len(wakes)  # one burst (a job may finish after the loop woke)


def test_run_on_loop_reads_state_on_the_loop_from_another_thread() -> None:
    """What a metrics scrape does: the function runs on the loop's thread, its result comes back; a
    loop that does not answer in time raises BusTimeout, a closed one ClosedError."""
    loop = asyncio.new_event_loop()
    ran_on: list[int] = []
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        assert run_on_loop(loop, lambda: ran_on.append(threading.get_ident()) or 42, 2.0) == 42
        assert ran_on == [thread.ident]
        loop.call_soon_threadsafe(time.sleep, 0.5)  # the loop is busy for half a second
        with pytest.raises(BusTimeout):
            run_on_loop(loop, lambda: 1, 0.1)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    with pytest.raises(ClosedError):
        run_on_loop(loop, lambda: 1, 0.1)
