"""The component framework in this process, on a real forwarder: styles, retries, errors, ids."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from zmqbus import Forwarder, MessageBroker, MessageMetadata, ProcessingMessage, RetryableError
from zmqbus.core.workflow import ComponentState
from zmqbus.framework.component import Component, Manager, on, service
from zmqbus.testing import Recorder, wait_until


def bus(fwd: Forwarder, **kw: Any) -> MessageBroker:
    return MessageBroker(fwd.pub_endpoint, fwd.sub_endpoint, heartbeat=0.2, **kw)


class Kind(str, Enum):
    START = "thing.start.request"
    DONE = "thing.complete"


class GuideStyle(Manager):
    """Subscribes the guide's way, by message type."""

    message_types = (Kind,)

    def _setup_message_handlers(self) -> None:
        for message_type, handler in {Kind.START: self._handle_start}.items():
            self.subscribe(f"{message_type.value}.#", handler)

    async def _handle_start(self, message: ProcessingMessage) -> None:
        ctx = await self.begin_process(message)
        await self.update_state(ctx, ComponentState.WAITING)
        answer = await self.request("thing.double", {"n": message.content["n"]})
        await self.complete_process(ctx, Kind.DONE, {"answer": answer}, target=message.metadata.source_component)


class Decorated(Component):
    flaky_left = 2

    @service("thing.double")
    async def double(self, message: ProcessingMessage) -> int:
        return int(message.content["n"]) * 2

    @on("thing.flaky.#")
    async def flaky(self, message: ProcessingMessage) -> None:
        if self.flaky_left > 0:
            self.flaky_left -= 1
            raise RetryableError("not yet")
        await self.publish_message("thing.flaky_done", {"attempt": message.metadata.attempt})

    @on("thing.broken.#")
    async def broken(self, message: ProcessingMessage) -> None:
        raise KeyError("no such thing")


async def test_guide_and_decorator_styles_with_state_ids_retries_and_errors(forwarder: Forwarder) -> None:
    manager = GuideStyle(bus(forwarder), name="manager")
    worker = Decorated(bus(forwarder), name="worker")
    await manager.start()
    await worker.start()
    try:
        async with bus(forwarder, name="client") as client:
            done, states, errors, dead, flaky = Recorder(), Recorder(), Recorder(), Recorder(), Recorder()
            client.subscribe("client", "thing.complete", done)
            client.subscribe("client", "status.#", states)
            client.subscribe("client", "error.#", errors)
            client.subscribe("client", "deadletter.#", dead)
            client.subscribe("client", "thing.flaky_done", flaky)
            await client.ready()
            start = ProcessingMessage(
                Kind.START, {"n": 21}, MessageMetadata(correlation_id="wf-1", source_component="client")
            )
            await client.publish(start)
            result = await done.wait_for()
            assert result.content == {"answer": 42} and result.metadata.target_component == "client"
            # ids followed by themselves: same conversation, caused by the start request's handling
            assert result.metadata.correlation_id == "wf-1"
            await states.wait_for(count=3)
            assert [m.content["state"] for m in states.messages] == ["processing", "waiting", "completed"]
            assert all(
                m.metadata.correlation_id == "wf-1" and m.metadata.target_component == "state_tracker"
                for m in states.messages
            )
            assert states.messages[0].metadata.causation_id == start.metadata.message_id
            assert len(manager.active_processes) == 0 and manager.metrics.completed == 1

            # retryable errors in subscribed work are retried with the component's policy
            await client.publish(ProcessingMessage("thing.flaky", {}))
            assert (await flaky.wait_for()).content == {"attempt": 3}
            assert worker.metrics.retried == 2

            # fatal errors go to the error handler and the dead-letter topic, with context
            await client.publish(ProcessingMessage("thing.broken", {"x": 1}, MessageMetadata(correlation_id="wf-9")))
            err = await errors.wait_for()
            assert err.topic == "error.worker" and err.metadata.target_component == "error_handler"
            assert err.content["error_type"] == "KeyError" and err.content["correlation_id"] == "wf-9"
            assert err.content["retryable"] is False and err.content["message_type"] == "thing.broken"
            letter = await dead.wait_for()
            assert letter.topic == "deadletter.worker" and letter.content["content"] == {"x": 1}
            # every component answers <name>.status
            status = (await client.request("worker.status", ProcessingMessage("worker.status", {}))).content
            assert status["component"] == "worker" and status["failed"] == 1 and status["retried"] == 2
    finally:
        await manager.stop(grace=2)
        await worker.stop(grace=2)


async def test_stop_lets_running_work_finish_and_kill_does_not(forwarder: Forwarder) -> None:
    finished: list[str] = []

    class Slow(Component):
        @on("slow.#")
        async def slow(self, message: ProcessingMessage) -> None:
            self.spawn(self._work(message.content))

        async def _work(self, name: str) -> None:
            await asyncio.sleep(0.3)
            finished.append(name)

    async def busy_component(work: str) -> Slow:
        comp = Slow(bus(forwarder))
        await comp.start()
        async with bus(forwarder) as client:
            await client.publish(ProcessingMessage("slow.x", work))
        await wait_until(lambda: len(comp._zmqbus_tasks) > 0, what="work running")
        return comp

    graceful = await busy_component("graceful")
    await graceful.stop(grace=5)
    assert finished == ["graceful"]
    killed = await busy_component("killed")
    killed.kill()
    await asyncio.sleep(0.4)  # longer than the work takes: had it survived the kill, it would be done
    assert finished == ["graceful"]
    await killed.stop(grace=0)


async def test_stale_processes_are_cancelled_and_reported(forwarder: Forwarder) -> None:
    now = [1000.0]
    manager = GuideStyle(bus(forwarder), name="ttl_manager")
    manager.active_processes.clock = lambda: now[0]  # injected time: no sleeping for a TTL
    manager.active_processes.ttl = 60.0
    await manager.start()
    try:
        async with bus(forwarder) as client:
            states = Recorder()
            client.subscribe("client", "status.ttl_manager", states)
            await client.ready()
            ctx = manager.active_processes.create("wf-stale", "r-1")
            ctx.transition(ComponentState.PROCESSING, datetime.fromtimestamp(now[0], UTC))
            assert await manager.expire_stale() == 0
            now[0] = 1000.0 + 3600
            assert await manager.expire_stale() == 1
            update = (await states.wait_for()).content
            assert (update["state"], update["old_state"], update["reason"]) == ("cancelled", "processing", "expired")
            assert "wf-stale" not in manager.active_processes and manager.metrics.expired == 1
    finally:
        await manager.stop(grace=1)


async def test_state_tracker_rebuilds_its_view_from_its_journal(forwarder: Forwarder, tmp_path: Any) -> None:
    from zmqbus.components.state_tracker import StateTracker

    journal = str(tmp_path / "state.jsonl")

    async def query(client: MessageBroker, content: dict[str, Any]) -> Any:
        return (await client.request("state.query", ProcessingMessage("state.query", content))).content

    first = StateTracker(bus(forwarder), journal=journal)
    await first.start()
    async with bus(forwarder) as client:
        for cid, state in (("wf-1", "processing"), ("wf-1", "completed"), ("wf-2", "failed")):
            await client.publish(
                ProcessingMessage("status.manager", {"correlation_id": cid, "component": "manager", "state": state})
            )
        await wait_until(lambda: first.updates == 3, what="three status updates")
        before = await query(client, {})
    await first.stop(grace=1)
    assert before == {"processes": 2, "updates": 3, "by_state": {"completed": 1, "failed": 1}}

    second = StateTracker(bus(forwarder), journal=journal)  # a restart
    await second.start()
    try:
        async with bus(forwarder) as client:
            assert await query(client, {}) == before
            assert (await query(client, {"correlation_id": "wf-1"}))["manager"]["state"] == "completed"
            assert await query(client, {"component": "manager"}) == {"wf-1": "completed", "wf-2": "failed"}
    finally:
        await second.stop(grace=1)


async def test_error_handler_counts_and_replays_dead_letters(forwarder: Forwarder) -> None:
    from zmqbus.components.error_handler import ErrorHandler

    seen: list[int] = []

    class Picky(Component):
        @on("picky.#")
        async def picky(self, message: ProcessingMessage) -> None:
            seen.append(message.content["n"])
            if len(seen) == 1:
                raise ValueError("not the first time")

    handler = ErrorHandler(bus(forwarder))
    picky = Picky(bus(forwarder), name="picky")
    await handler.start()
    await picky.start()
    try:
        async with bus(forwarder) as client:
            bad = ProcessingMessage("picky.thing", {"n": 7}, MessageMetadata(correlation_id="wf-p"))
            await client.publish(bad)

            async def stats() -> dict[str, Any]:
                return (await client.request("errors.stats", ProcessingMessage("errors.stats", {}))).content

            deadline = asyncio.get_running_loop().time() + 10
            while (await stats())["dead_letters"] < 1:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.02)
            s = await stats()
            assert s["by_type"] == {"ValueError": 1} and s["by_component"] == {"picky": 1}
            assert s["recent"][0]["correlation_id"] == "wf-p"
            replay = await client.request(
                "errors.replay", ProcessingMessage("errors.replay", {"message_id": bad.metadata.message_id})
            )
            assert replay.content == {"replayed": True, "message_id": bad.metadata.message_id}
            while len(seen) < 2:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.02)
            assert seen == [7, 7] and (await stats())["dead_letters"] == 0
            again = await client.request("errors.replay", ProcessingMessage("errors.replay", {"message_id": "x"}))
            assert again.content["replayed"] is False
    finally:
        await picky.stop(grace=1)
        await handler.stop(grace=1)


async def test_a_processor_runs_cpu_work_in_a_thread_with_the_handled_message() -> None:
    """``Processor.run_cpu`` (GUIDE.md): the loop's thread stays free, and the function sees the message
    being handled, so what it publishes or requests keeps the ids."""
    import threading

    from zmqbus import Processor
    from zmqbus.core.message import current_message

    proc = Processor(MessageBroker("tcp://127.0.0.1:1", "tcp://127.0.0.1:2"), name="cpu")
    msg = ProcessingMessage("work.item", {}, MessageMetadata(correlation_id="c-1"))
    token = current_message.set(msg)
    try:
        thread, seen = await proc.run_cpu(lambda: (threading.get_ident(), current_message.get()))
    finally:
        current_message.reset(token)
    assert thread != threading.get_ident() and seen is msg


async def test_managers_and_handlers_discover_at_start_processors_do_not(forwarder: Forwarder) -> None:
    from zmqbus.framework.component import Handler, Processor

    class Calc(Processor):
        @service("calc.double")
        def double(self, message: ProcessingMessage) -> int:
            return int(message.content) * 2

    class Boss(Manager):
        pass

    class Worker(Handler):
        pass

    calc = Calc(MessageBroker(forwarder.pub_endpoint, forwarder.sub_endpoint))
    boss = Boss(MessageBroker(forwarder.pub_endpoint, forwarder.sub_endpoint))
    worker = Worker(MessageBroker(forwarder.pub_endpoint, forwarder.sub_endpoint))
    await calc.start()
    try:
        await boss.start()
        await worker.start()
        # the callers knew the service before any request: no first request waits for discovery
        for c in (boss, worker):
            await wait_until(lambda c=c: c.message_broker.live_instances("calc.double") != [], 5, "discovered")  # type: ignore[misc]
        assert calc.message_broker._requests.caller is None  # a Processor opens no calling side
        assert (await boss.request("calc.double", 21)) == 42
    finally:
        for c in (worker, boss, calc):
            await c.stop(1)
