"""The guide's code inside zmqbus Components: its subscriptions guarded, its topics, state Enum and helper names.

Each test runs on the test kit's ``bus`` fixture (a real forwarder), with the
bundled error handler and state tracker, as a guide reader's system would.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import pytest
from test_guide import MessageType  # the guide's Step 2, as written

from zmqbus import Component, Manager, ProcessingMessage, UnknownState, ZmqbusError
from zmqbus.components.error_handler import ErrorHandler
from zmqbus.components.state_tracker import StateTracker
from zmqbus.testing import TestBus, wait_until


class ComponentState(Enum):  # a reader's own state Enum, with the guide's (and zmqbus's) values
    CREATED = "created"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class GuideComponent(Component):
    """Step 3 as the guide writes it, on Component: its own __init__ lines, subscriptions by hand."""

    component_name = "component"

    def __init__(self, message_broker: Any) -> None:
        super().__init__(message_broker)
        self.active_processes = {}  # type: ignore[assignment]  # the guide's dict
        self._setup_message_handlers()  # the guide calls it again: the same subscriptions, delivered once
        self.started: list[str] = []

    def _setup_message_handlers(self) -> None:
        handlers = {
            MessageType.COMPONENT_START_REQUEST: self._handle_start_request,
            MessageType.COMPONENT_PROCESS_REQUEST: self._handle_process_request,
        }
        for message_type, handler in handlers.items():
            self.message_broker.subscribe(self.component_name, f"{message_type.value}.#", handler)

    async def _handle_start_request(self, message: ProcessingMessage) -> None:
        self.started.append(message.metadata.correlation_id)
        await self._publish_message(MessageType.COMPONENT_COMPLETE, {"ok": True}, message.metadata.source_component)

    async def _handle_process_request(self, message: ProcessingMessage) -> None:
        if message.content.get("value", 0) < 0:
            raise ValueError("negative value")  # no try/except: the guard reports it
        try:
            if message.content.get("value") == 0:
                raise KeyError("zero")
        except Exception as e:
            await self._handle_error(message, e)  # the guide's name


async def test_guide_style_subscriptions_run_guarded_and_reach_the_error_handler(bus: TestBus) -> None:
    comp = await bus.start(GuideComponent)
    errors = await bus.start(ErrorHandler)
    done = await bus.record("component.complete")
    dead = await bus.record("deadletter.#")

    await bus.publish(MessageType.COMPONENT_START_REQUEST, {}, correlation_id="wf-1")
    assert (await done.wait_for(correlation_id="wf-1")).metadata.source_component == "component"
    await done.assert_none(within=0.2, correlation_id="wf-1", predicate=lambda m: m is not done.messages[0])
    assert comp.started == ["wf-1"], "subscribed twice by the guide's __init__, delivered once"

    await bus.publish(MessageType.COMPONENT_PROCESS_REQUEST, {"value": -1}, correlation_id="wf-2")
    letter = await dead.wait_for(correlation_id="wf-2")
    assert letter.content["reason"] == "ValueError: negative value"
    await bus.publish(MessageType.COMPONENT_PROCESS_REQUEST, {"value": 0}, correlation_id="wf-3")
    await wait_until(lambda: errors.total == 2, what="both errors at the error handler")
    assert errors.by_component == {"component": 2}
    assert errors.by_type == {"ValueError": 1, "KeyError": 1}
    assert comp.metrics.failed == 1 and comp.message_broker.statistics().handler_errors == 0


class GuideReporter(Component):
    """The guide's own _handle_error and _update_state bodies: topics component.error and
    component.status.update, which the bundled infrastructure takes too."""

    component_name = "component"

    async def _handle_error(self, message: ProcessingMessage, error: BaseException) -> None:
        error_context = {
            "correlation_id": message.metadata.correlation_id,
            "error_type": type(error).__name__,
            "error_message": str(error),
        }
        await self.publish_message(MessageType.COMPONENT_ERROR, error_context, "error_handler")

    async def _update_state(self, new_state: Any, ctx: Any = None, **info: Any) -> None:
        await self.publish_message(MessageType.COMPONENT_STATUS_UPDATE, {"new_state": new_state.value}, "state_tracker")

    def _setup_message_handlers(self) -> None:
        self.message_broker.subscribe(self.component_name, "component.process.request.#", self._handle)

    async def _handle(self, message: ProcessingMessage) -> None:
        await self._update_state(ComponentState.PROCESSING)
        try:
            raise TimeoutError("the database did not answer")
        except Exception as e:
            await self._handle_error(message, e)
            await self._update_state(ComponentState.FAILED)


async def test_the_guides_error_and_status_topics_reach_the_infrastructure(bus: TestBus) -> None:
    _, errors, tracker = await bus.start_all(GuideReporter, ErrorHandler, StateTracker)
    await bus.publish(MessageType.COMPONENT_PROCESS_REQUEST, {}, correlation_id="wf-9")
    await wait_until(lambda: errors.total == 1, what="the guide's component.error at the error handler")  # type: ignore[attr-defined]
    await wait_until(
        lambda: (
            tracker.by_correlation.get("wf-9", {}).get("component", {}).get("state")  # type: ignore[attr-defined]
            == "failed"
        ),
        what="the guide's component.status.update at the state tracker",
    )
    stats = await bus.request("errors.stats")
    assert stats["by_type"] == {"TimeoutError": 1} and stats["by_component"] == {"component": 1}
    assert stats["recent"][0]["error_message"] == "the database did not answer"
    assert (await bus.request("state.query", {"correlation_id": "wf-9"}))["component"]["old_state"] is None


async def test_infrastructure_can_leave_the_guides_topics_alone(bus: TestBus) -> None:
    """guide_topics=False: no wildcard-first subscription, so no receiving of all traffic."""
    errors = await bus.start(ErrorHandler, guide_topics=False)
    tracker = await bus.start(StateTracker, guide_topics=False)
    assert errors.message_broker.statistics().receives_all == 0
    assert tracker.message_broker.statistics().receives_all == 0
    await bus.publish("component.error", {"error_type": "X"})
    await bus.publish("error.someone", {"error_type": "Y", "component": "someone"})
    await wait_until(lambda: errors.total == 1)
    assert errors.by_type == {"Y": 1}


class Orders(Manager):
    """zmqbus's workflow helpers with a reader's own state Enum and the guide's _update_state(state)."""

    def _setup_message_handlers(self) -> None:
        self.message_broker.subscribe(self.component_name, "order.start.#", self._start)

    async def _start(self, message: ProcessingMessage) -> None:
        await self.begin_process(message)
        await self._update_state(ComponentState.COMPLETED)  # the process of the message being handled


async def test_a_readers_state_enum_and_the_guides_update_state(bus: TestBus) -> None:
    orders = await bus.start(Orders)
    tracker = await bus.start(StateTracker)
    await bus.publish("order.start", {}, correlation_id="o-1")
    await wait_until(
        lambda: tracker.by_correlation.get("o-1", {}).get("orders", {}).get("state") == "completed",
        what="the state tracker sees the workflow completed",
    )
    assert orders.metrics.completed == 1 and len(orders.active_processes) == 0

    ctx = orders.active_processes.create("o-2", "r-2")
    await orders.update_state(ctx, ComponentState.PROCESSING)
    with pytest.raises(UnknownState, match="created, processing, waiting"):
        await orders.update_state(ctx, _Done.DONE)
    with pytest.raises(ZmqbusError, match=r"self.update_state\(ctx, state\)"):
        await orders._update_state(ComponentState.COMPLETED)  # no message being handled, no self.context


class _Done(Enum):
    DONE = "done"
