"""The guard every handler of a component runs in: timed, counted, retried, reported.

Subscribed handlers (:meth:`HandlerGuard.subscribed`) run on a message; one
that raises a retryable error is tried again with the component's
``retry_policy`` (a copy of the message, ``attempt`` + 1), and fatal or
exhausted work is reported to the error handler and dead-lettered. Served
handlers (:meth:`HandlerGuard.served`) answer a request; what they raise goes
back to the caller (who retries a retryable error), and a fatal error is
reported once. Both are timed and counted by one :meth:`HandlerGuard._timed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..core.errors import is_retryable
from ..core.message import ProcessingMessage
from ..io.aio import to_thread

if TYPE_CHECKING:
    from .component import Component

__all__ = ["HandlerGuard"]

log = logging.getLogger("zmqbus.framework.component")

Handler = Callable[[ProcessingMessage], Any]


class HandlerGuard:
    """Wraps the handlers of one component (its ``message_broker.guard`` and its ``@service`` methods)."""

    def __init__(self, component: Component) -> None:
        self.component = component
        self._wrapped: dict[Any, Callable[[ProcessingMessage], Awaitable[None]]] = {}

    def subscribed(self, handler: Handler) -> Callable[[ProcessingMessage], Awaitable[None]]:
        """The guarded form of a subscribed handler; the same one for the same handler (subscribing it
        twice is then a no-op), and a guarded handler is returned as it is."""
        if getattr(handler, "_zmqbus_guarded", None) is self:
            return handler
        with contextlib.suppress(TypeError):  # unhashable: a new guard each time
            cached = self._wrapped.get(handler)
            if cached is not None:
                return cached

        @functools.wraps(handler)
        async def guarded(message: ProcessingMessage) -> None:
            if self.component._stopping:
                return
            await self._run(handler, message)

        guarded._zmqbus_guarded = self  # type: ignore[attr-defined]
        with contextlib.suppress(TypeError):
            self._wrapped[handler] = guarded
        return guarded

    def served(self, handler: Handler) -> Callable[[ProcessingMessage], Awaitable[Any]]:
        """The guarded form of a service handler: sync ones (the CPU-heavy kind) run off the loop."""
        is_async = inspect.iscoroutinefunction(handler)

        @functools.wraps(handler)
        async def served(message: ProcessingMessage) -> Any:
            try:
                return await self._timed(handler, message, is_async)
            except Exception as exc:
                self.component.metrics.failed += 1
                if not is_retryable(exc):
                    await self.component.report_error(message, exc, retryable=False)
                raise  # the caller gets it as RemoteError, or retries when retryable

        served._zmqbus_served = (self, handler)  # type: ignore[attr-defined]  # what the test kit wraps
        return served

    async def _timed(self, handler: Handler, message: ProcessingMessage, in_thread: bool | None = None) -> Any:
        """Run ``handler`` (awaited if it returns an awaitable; in a thread when ``in_thread`` is False),
        counted and timed."""
        metrics = self.component.metrics
        started = time.perf_counter()
        metrics.handled += 1
        try:
            if in_thread is False:
                return await to_thread(handler, message)  # the ids are carried along
            result = handler(message)
            return await result if inspect.isawaitable(result) else result
        finally:
            metrics.record_duration(time.perf_counter() - started)

    async def _run(self, handler: Handler, message: ProcessingMessage) -> None:
        try:
            await self._timed(handler, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._on_error(handler, message, exc)

    async def _on_error(self, handler: Handler, message: ProcessingMessage, exc: Exception) -> None:
        component = self.component
        retryable, attempt, policy = is_retryable(exc), message.metadata.attempt, component.retry_policy
        if retryable and attempt < policy.attempts and not component._stopping:
            component.metrics.retried += 1
            delay = policy.delay(attempt)
            log.info(
                "%s: %s on %s (attempt %d), retrying in %.3f s",
                component.component_name,
                type(exc).__name__,
                message.type_name,
                attempt,
                delay,
            )
            component.spawn(self._retry_later(handler, message, delay))
            return
        component.metrics.failed += 1
        await component.report_error(message, exc, retryable=retryable)
        reason = f"{type(exc).__name__}: {exc}" + (" (retries exhausted)" if retryable else "")
        await component.dead_letter(message, reason)

    async def _retry_later(self, handler: Handler, message: ProcessingMessage, delay: float) -> None:
        await asyncio.sleep(delay)
        md = message.metadata
        again = dataclasses.replace(
            message, metadata=dataclasses.replace(md, attempt=md.attempt + 1, headers=dict(md.headers))
        )
        await self._run(handler, again)
