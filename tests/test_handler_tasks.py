"""Handlers started eagerly have a task of their own from their first line: ``asyncio.timeout`` and
``asyncio.TaskGroup`` work in service and subscription handlers, and a timeout that fires cancels the
handler, never the client's reading (before: a service's timeout cancelled the responder's reading task,
which then answered nothing, silently; in the FD-callback reader a timeout or TaskGroup raised)."""

from __future__ import annotations

import asyncio

import pytest

from zmqbus import Forwarder, MessageBroker, ProcessingMessage
from zmqbus.io import aio
from zmqbus.io.aio import EagerTask, start_eagerly
from zmqbus.testing import wait_until

pytestmark = pytest.mark.timeout(60)


def ep(fwd: Forwarder) -> tuple[str, str]:
    return fwd.pub_endpoint, fwd.sub_endpoint


async def timed_out(message: ProcessingMessage) -> str:
    try:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(2)
    except TimeoutError:
        return "timed out in the handler"
    return "the timeout did not fire"


async def grouped(message: ProcessingMessage) -> list[int]:
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(asyncio.sleep(0.01, result=i)) for i in range(3)]
    return [t.result() for t in tasks]


async def own_task(message: ProcessingMessage) -> bool:
    return asyncio.current_task() is not None


async def test_service_handlers_use_timeouts_and_task_groups_and_the_responder_goes_on(forwarder: Forwarder) -> None:
    srv = MessageBroker(*ep(forwarder), name="srv", heartbeat=0.2)
    srv.serve("t.timeout", timed_out)
    srv.serve("t.group", grouped)
    srv.serve("t.task", own_task)
    async with srv, MessageBroker(*ep(forwarder), name="cli") as cli:
        for service in ("t.timeout", "t.group", "t.task"):
            await cli.wait_for_service(service, timeout=10)
        for _ in range(3):  # the responder still answers after a timeout fired in one of its handlers
            reply = await cli.request("t.timeout", ProcessingMessage("t.timeout", {}), timeout=5)
            assert reply.content == "timed out in the handler"
            assert (await cli.request("t.group", ProcessingMessage("t.group", {}), timeout=5)).content == [0, 1, 2]
            assert (await cli.request("t.task", ProcessingMessage("t.task", {}), timeout=5)).content is True


async def test_subscription_handlers_use_timeouts_and_the_client_keeps_receiving(forwarder: Forwarder) -> None:
    outcomes: list[object] = []

    async def on_event(message: ProcessingMessage) -> None:
        if message.content["kind"] == "timeout":
            outcomes.append(await timed_out(message))
        elif message.content["kind"] == "group":
            outcomes.append(await grouped(message))
        else:
            outcomes.append(message.content["kind"])

    async with MessageBroker(*ep(forwarder), name="sub") as sub, MessageBroker(*ep(forwarder), name="pub") as pub:
        sub.subscribe("sub", "events.#", on_event)
        await sub.ready()
        for kind in ("timeout", "group", "plain", "timeout", "plain"):
            await pub.publish(ProcessingMessage("events.one", {"kind": kind}))
        await wait_until(lambda: len(outcomes) == 5, timeout=10)
        assert sorted(map(str, outcomes)) == sorted(
            map(str, ["timed out in the handler", [0, 1, 2], "plain", "timed out in the handler", "plain"])
        )


@pytest.fixture(params=["table", "functions", "none"])
def task_hooks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way the first step can be made its own task: asyncio's table of current tasks (CPython 3.11-3.13),
    its _enter_task/_leave_task (when the table cannot be used), neither (the step runs in the caller's task)."""
    if request.param == "table" and aio._current_tasks is None:
        pytest.skip("this Python's asyncio has no usable table of current tasks")
    if request.param != "table":
        monkeypatch.setattr(aio, "_current_tasks", None)
    if request.param == "none":
        monkeypatch.setattr(aio, "_enter_task", None)
    return str(request.param)


async def test_the_first_step_is_its_own_task_and_the_callers_is_current_again(task_hooks: str) -> None:
    me = asyncio.current_task()
    seen: list[object] = []

    async def step(fail: bool) -> None:
        seen.append(asyncio.current_task())
        if fail:
            raise ValueError("in the first step")

    assert start_eagerly(step(False))[0]
    with pytest.raises(ValueError):
        start_eagerly(step(True))
    assert asyncio.current_task() is me  # restored, after a return and after a raise
    if task_hooks == "none":
        assert seen == [me, me]
    else:
        assert all(isinstance(t, EagerTask) for t in seen) and seen[0] is not seen[1]

    # from a plain callback (the FD-callback readers): no task before, none after
    loop = asyncio.get_running_loop()
    after: list[object] = []
    done = loop.create_future()

    def callback() -> None:
        start_eagerly(step(False))
        after.append(asyncio.current_task())
        done.set_result(None)

    loop.call_soon(callback)
    await done
    assert after == [None]
    assert (seen[-1] is None) if task_hooks == "none" else isinstance(seen[-1], EagerTask)


async def test_a_timeout_in_an_eager_first_step_cancels_the_bound_task_not_the_current_one(task_hooks: str) -> None:
    if task_hooks == "none":
        pytest.skip("without asyncio's hooks the first step runs in the caller's task (as before EagerTask)")
    finished, rest, eager = start_eagerly(timed_out(ProcessingMessage("t.timeout", {})))  # inside this test's task
    assert not finished
    task = asyncio.ensure_future(rest)
    eager.bind(task)
    assert await asyncio.wait_for(task, 5) == "timed out in the handler"
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]  # the test's task: untouched


async def test_a_cancel_asked_in_the_first_step_reaches_the_task_bound_later() -> None:
    async def cancels_itself() -> str:
        asyncio.current_task().cancel()  # type: ignore[union-attr]  # before any task of its own exists
        try:
            await asyncio.sleep(2)
        except asyncio.CancelledError:
            return "cancelled at its first await"
        return "not cancelled"

    finished, rest, eager = start_eagerly(cancels_itself())
    assert not finished
    task = asyncio.ensure_future(rest)
    eager.bind(task)
    assert await asyncio.wait_for(task, 5) == "cancelled at its first await"
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]
