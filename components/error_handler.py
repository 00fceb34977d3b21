"""The error handler: collects every component's errors and dead letters.

Subscribes to ``error.#`` (what zmqbus components report) and ``deadletter.#``,
and to ``#.error``: the guide's own error messages (``component.error``,
``order.error``: ``{"correlation_id", "error_type", "error_message"}``, the
component taken from the message's source). That pattern starts with a
wildcard, so this process receives all pub/sub traffic and filters it; on a
busy bus whose components report errors zmqbus's way, pass
``guide_topics=False``. Answers ``errors.stats``
(counts by error type and by component, the latest errors, dead letters held)
and ``errors.replay`` (publish a dead-lettered message again, by message id,
so an operator can retry it).
"""
from __future__ import annotations

import collections
from typing import Any

from zmqbus import MessageMetadata, ProcessingMessage
from zmqbus.framework.component import Component, on, service


class ErrorHandler(Component):
    component_name = "error_handler"

    #: Also take the guide's ``<domain>.error`` messages (see the module docstring).
    guide_topics = True

    def __init__(self, *args: Any, guide_topics: bool | None = None, **kwargs: Any) -> None:
        if guide_topics is not None:
            self.guide_topics = guide_topics
        self.by_type: collections.Counter[str] = collections.Counter()
        self.by_component: collections.Counter[str] = collections.Counter()
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self.dead_letters: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.total = 0
        super().__init__(*args, **kwargs)

    def _setup_message_handlers(self) -> None:
        if self.guide_topics:
            self.subscribe("#.error", self._handle_guide_error)

    async def _handle_guide_error(self, message: ProcessingMessage) -> None:
        if message.topic.startswith("error."):
            return  # zmqbus's own topic: _handle_error_report has it
        await self._handle_error_report(message)

    @on("error.#")
    async def _handle_error_report(self, message: ProcessingMessage) -> None:
        c = dict(message.content) if isinstance(message.content, dict) else {"error_type": "?"}
        c.setdefault("component", message.metadata.source_component or "?")
        c.setdefault("correlation_id", message.metadata.correlation_id)
        self.total += 1
        self.by_type[str(c.get("error_type"))] += 1
        self.by_component[str(c.get("component"))] += 1
        self.recent.append(dict(c))

    @on("deadletter.#")
    async def _handle_dead_letter(self, message: ProcessingMessage) -> None:
        c = message.content
        if isinstance(c, dict):
            key = str(c.get("metadata", {}).get("message_id") or message.metadata.message_id)
            self.dead_letters[key] = c
            while len(self.dead_letters) > 1000:
                self.dead_letters.popitem(last=False)

    @service("errors.stats")
    async def stats(self, message: ProcessingMessage) -> dict[str, Any]:
        return {"total": self.total, "by_type": dict(self.by_type), "by_component": dict(self.by_component),
                "recent": list(self.recent)[-10:], "dead_letters": len(self.dead_letters)}

    @service("errors.replay")
    async def replay(self, message: ProcessingMessage) -> dict[str, Any]:
        key = str(message.content.get("message_id")) if isinstance(message.content, dict) else ""
        letter = self.dead_letters.pop(key, None)
        if letter is None:
            return {"replayed": False, "reason": f"no dead letter {key!r}"}
        md = letter.get("metadata", {})
        await self.message_broker.publish(ProcessingMessage(letter["message_type"], letter["content"], MessageMetadata(
            correlation_id=md.get("correlation_id", ""), source_component=md.get("source", self.component_name),
            target_component=md.get("target"))), topic=letter.get("topic"))
        return {"replayed": True, "message_id": key}
