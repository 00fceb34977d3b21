"""Recorders: what was published (or requested), awaited and asserted; :func:`wait_until`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from enum import Enum
from typing import Any

from ..core.message import ProcessingMessage

__all__ = ["Recorder", "Predicate", "wait_until"]

Predicate = Callable[[ProcessingMessage], bool]

#: What a Recorder matches a keyword against.
_FIELDS: dict[str, Callable[[ProcessingMessage], Any]] = {
    "message_type": lambda m: m.type_name,
    "topic": lambda m: m.topic,
    "content": lambda m: m.content,
    "correlation_id": lambda m: m.metadata.correlation_id,
    "source": lambda m: m.metadata.source_component,
    "target": lambda m: m.metadata.target_component,
}


def _matcher(predicate: Predicate | None, fields: dict[str, Any]) -> Predicate:
    unknown = fields.keys() - _FIELDS.keys()
    if unknown:
        raise TypeError(f"cannot match on {sorted(unknown)}: use {sorted(_FIELDS)} or a predicate")
    wanted = {k: (v.value if isinstance(v, Enum) and k == "message_type" else v) for k, v in fields.items()}

    def match(m: ProcessingMessage) -> bool:
        return all(_FIELDS[k](m) == v for k, v in wanted.items()) and (predicate is None or predicate(m))

    return match


def _describe(predicate: Predicate | None, fields: dict[str, Any]) -> str:
    parts = [f"{k}={v!r}" for k, v in fields.items()] + (["a predicate"] if predicate is not None else [])
    return " with " + ", ".join(parts) if parts else ""


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Check ``predicate`` on the event loop (every 5 ms) until it is true; AssertionError after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.005)


class Recorder:
    """The messages that matched one pattern, in arrival order: what was published
    (:meth:`TestBus.record`), requested (:meth:`TestBus.requests`) or served by a stand-in
    (:meth:`TestBus.mock_service`)."""

    def __init__(self, pattern: str = "#") -> None:
        self.pattern = pattern  # what it was subscribed to (for messages); subscribe it yourself, or use record()
        self.messages: list[ProcessingMessage] = []
        self._arrived = asyncio.Event()

    async def __call__(self, message: ProcessingMessage) -> None:
        self.add(message)

    def add(self, message: ProcessingMessage) -> None:
        """Record ``message`` (what a subscription, a stand-in service or a request hook calls)."""
        self.messages.append(message)
        self._arrived.set()

    def matching(self, predicate: Predicate | None = None, **fields: Any) -> list[ProcessingMessage]:
        """The recorded messages that match (fields: message_type, topic, content, correlation_id, source, target)."""
        match = _matcher(predicate, fields)
        return [m for m in self.messages if match(m)]

    async def wait_for(
        self, predicate: Predicate | None = None, *, count: int = 1, timeout: float = 5.0, **fields: Any
    ) -> ProcessingMessage:
        """Wait until ``count`` matching messages were recorded; return the ``count``-th.

        Raises AssertionError after ``timeout`` seconds, listing what was recorded.
        """
        match = _matcher(predicate, fields)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = [m for m in self.messages if match(m)]
            if len(found) >= count:
                return found[count - 1]
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"waited {timeout:g} s for {count} message(s) on {self.pattern!r}"
                    f"{_describe(predicate, fields)}: {len(found)} matched; {self._summary()}"
                )
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    def assert_published(self, predicate: Predicate | None = None, **fields: Any) -> ProcessingMessage:
        """The first recorded message that matches; AssertionError (listing what was recorded) if none."""
        found = self.matching(predicate, **fields)
        if not found:
            raise AssertionError(f"no message on {self.pattern!r}{_describe(predicate, fields)}; {self._summary()}")
        return found[0]

    async def assert_none(self, predicate: Predicate | None = None, *, within: float = 0.2, **fields: Any) -> None:
        """Wait ``within`` seconds and assert that no matching message was recorded (by then)."""
        await asyncio.sleep(within)
        found = self.matching(predicate, **fields)
        if found:
            raise AssertionError(
                f"{len(found)} unexpected message(s) on {self.pattern!r}"
                f"{_describe(predicate, fields)}: {self._summary(found)}"
            )

    def clear(self) -> None:
        self.messages.clear()

    def _summary(self, messages: list[ProcessingMessage] | None = None) -> str:
        msgs = self.messages if messages is None else messages
        shown = ", ".join(
            f"{m.type_name}(correlation_id={m.metadata.correlation_id!r}, content={m.content!r:.60})" for m in msgs[:10]
        )
        return f"recorded {len(msgs)}: [{shown}{', ...' if len(msgs) > 10 else ''}]"
