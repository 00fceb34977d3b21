"""The refactoring guide's snippets, nearly verbatim, running on MessageBroker.

Only what the guide leaves out is filled in (a state enum, a processing step,
a validator); the five methods are the guide's own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from zmqbus import Forwarder, MessageBroker, MessageMetadata, ProcessingMessage, register_message_types
from zmqbus.testing import Recorder

logger = logging.getLogger(__name__)


class MessageType(Enum):
    # Requests
    COMPONENT_START_REQUEST = "component.start.request"
    COMPONENT_PROCESS_REQUEST = "component.process.request"
    # Status Updates
    COMPONENT_STATUS_UPDATE = "component.status.update"
    COMPONENT_COMPLETE = "component.complete"
    # Error Handling
    COMPONENT_ERROR = "component.error"
    COMPONENT_RETRY_REQUEST = "component.retry.request"


class ComponentState(Enum):
    IDLE = "idle"
    PROCESSING = "processing"
    DONE = "done"


@dataclass
class ComponentContext:
    """State tracking for component operations"""

    request_id: str
    correlation_id: str
    state: ComponentState
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=datetime.now)
    updated_at: datetime = field(default_factory=datetime.now)


class ComponentName:
    component_name = "component"

    def __init__(self, message_broker: MessageBroker):
        self.message_broker = message_broker
        self.active_processes: dict[str, ComponentContext] = {}  # Track active processes
        self.context = ComponentContext("r-0", "c-0", ComponentState.IDLE)
        self._setup_message_handlers()

    def _setup_message_handlers(self) -> None:
        handlers = {
            MessageType.COMPONENT_START_REQUEST: self._handle_start_request,
            MessageType.COMPONENT_PROCESS_REQUEST: self._handle_process_request,
        }
        for message_type, handler in handlers.items():
            self.message_broker.subscribe(self.component_name, f"{message_type.value}.#", handler)

    async def _publish_message(self, message_type: MessageType, content: dict[str, Any], target: str) -> None:
        await self.message_broker.publish(
            ProcessingMessage(
                message_type=message_type,
                content=content,
                metadata=MessageMetadata(
                    correlation_id=self.context.correlation_id,
                    source_component=self.component_name,
                    target_component=target,
                ),
            )
        )

    async def _handle_message(self, message: ProcessingMessage) -> None:
        try:
            if not self._validate_message(message):
                logger.error(f"Invalid message received: {message}")
                return
            await self._process_message(message)
        except Exception as e:
            await self._handle_error(message, e)

    async def _handle_error(self, message: ProcessingMessage, error: Exception) -> None:
        error_context = {
            "correlation_id": message.metadata.correlation_id,
            "error_type": type(error).__name__,
            "error_message": str(error),
        }
        await self._publish_message(MessageType.COMPONENT_ERROR, error_context, "error_handler")

    async def _update_state(self, new_state: ComponentState) -> None:
        self.context.state = new_state
        self.context.updated_at = datetime.now()
        await self._publish_message(
            MessageType.COMPONENT_STATUS_UPDATE, {"new_state": new_state.value}, "state_tracker"
        )

    # --- what the guide leaves to the reader ---
    def _validate_message(self, message: ProcessingMessage) -> bool:
        return isinstance(message.content, dict) and "value" in message.content

    async def _process_message(self, message: ProcessingMessage) -> None:
        if message.content["value"] < 0:
            raise ValueError("negative value")
        await self._update_state(ComponentState.PROCESSING)
        await self._publish_message(
            MessageType.COMPONENT_COMPLETE, {"result": message.content["value"] * 2}, message.metadata.source_component
        )
        await self._update_state(ComponentState.DONE)

    async def _handle_start_request(self, message: ProcessingMessage) -> None:
        self.context = ComponentContext(
            message.metadata.message_id, message.metadata.correlation_id, ComponentState.IDLE
        )
        self.active_processes[self.context.correlation_id] = self.context
        await self._handle_message(message)

    async def _handle_process_request(self, message: ProcessingMessage) -> None:
        await self._handle_message(message)


async def test_guide_component_on_zmqbus(forwarder: Forwarder) -> None:
    register_message_types(MessageType)
    component_broker = MessageBroker(forwarder.pub_endpoint, forwarder.sub_endpoint)
    component = ComponentName(component_broker)  # subscribes from __init__, before any loop work
    async with component_broker, MessageBroker(forwarder.pub_endpoint, forwarder.sub_endpoint) as client:
        errors, states, done = Recorder(), Recorder(), Recorder()
        client.subscribe("error_handler", "*.error", errors)
        client.subscribe("state_tracker", "component.status.update", states)
        client.subscribe("caller", "component.complete", done)
        await client.ready()
        await component_broker.ready()
        start = ProcessingMessage(
            MessageType.COMPONENT_START_REQUEST,
            {"value": 21},
            MessageMetadata(correlation_id="wf-1", source_component="caller", target_component="component"),
        )
        await client.publish(start)
        result = await done.wait_for()
        assert result.message_type is MessageType.COMPONENT_COMPLETE
        assert result.content == {"result": 42}
        assert (result.metadata.correlation_id, result.metadata.source_component, result.metadata.target_component) == (
            "wf-1",
            "component",
            "caller",
        )
        await states.wait_for(count=2)
        assert [m.content["new_state"] for m in states.messages] == ["processing", "done"]
        assert all(m.metadata.target_component == "state_tracker" for m in states.messages)
        assert component.active_processes["wf-1"].state is ComponentState.DONE

        # errors go to the error handler, with the guide's error context
        await client.publish(
            ProcessingMessage(
                MessageType.COMPONENT_PROCESS_REQUEST,
                {"value": -1},
                MessageMetadata(correlation_id="wf-2", source_component="caller"),
            )
        )
        err = await errors.wait_for()
        assert err.content == {"correlation_id": "wf-2", "error_type": "ValueError", "error_message": "negative value"}
        assert err.message_type is MessageType.COMPONENT_ERROR
        assert err.metadata.target_component == "error_handler"

        # invalid messages are logged and dropped; the component keeps working
        await client.publish(
            ProcessingMessage(
                MessageType.COMPONENT_PROCESS_REQUEST,
                {"no": "value"},
                MessageMetadata(correlation_id="wf-3", source_component="caller"),
            )
        )
        await client.publish(
            ProcessingMessage(
                MessageType.COMPONENT_PROCESS_REQUEST,
                {"value": 1},
                MessageMetadata(correlation_id="wf-4", source_component="caller"),
            )
        )
        await done.wait_for(count=2)
        assert done.messages[1].content == {"result": 2}
        assert component_broker.statistics().handler_errors == 0  # the guide's code catches its own errors
