"""Faults in services and stand-ins for them: what :meth:`TestBus.fail`, :meth:`TestBus.stall`
and :meth:`TestBus.mock_service` install.

A fault is injected *inside* the component's own guard, where the handler's code would run: an
injected failure is then logged, counted, reported to the error handler and answered exactly as
the same exception raised by the handler (the guard cannot tell them apart), and a stall is
cancelled at the request's deadline as a slow async handler is.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections.abc import Callable
from typing import Any

from ..core.message import ProcessingMessage
from ..io.aio import to_thread
from .recorder import Recorder

__all__ = ["failing", "stalled", "MockService", "call_handler"]

Wrap = Callable[[Callable[..., Any]], Callable[[ProcessingMessage], Any]]


async def call_handler(handler: Callable[..., Any], message: ProcessingMessage) -> Any:
    """Run a service handler as the responder would: awaited if async, in a thread if sync."""
    if inspect.iscoroutinefunction(handler):
        return await handler(message)
    result = await to_thread(handler, message)
    return await result if inspect.isawaitable(result) else result


def failing(service: str, error: BaseException | None, times: int | None) -> Wrap:
    """Raise ``error`` (default RuntimeError) instead of running the handler: always, or ``times`` times."""
    left = [times]

    def wrap(original: Callable[..., Any]) -> Callable[[ProcessingMessage], Any]:
        async def injected_failure(message: ProcessingMessage) -> Any:
            if left[0] is None or left[0] > 0:
                if left[0] is not None:
                    left[0] -= 1
                raise error if error is not None else RuntimeError(f"{service}: injected failure")
            return await call_handler(original, message)

        return injected_failure

    return wrap


def stalled(seconds: float) -> Wrap:
    """Wait ``seconds`` before the handler runs (cancelled, as slow work is, when the deadline passes)."""

    def wrap(original: Callable[..., Any]) -> Callable[[ProcessingMessage], Any]:
        async def injected_stall(message: ProcessingMessage) -> Any:
            await asyncio.sleep(seconds)
            return await call_handler(original, message)

        return injected_stall

    return wrap


class MockService(Recorder):
    """A stand-in responder for one service (:meth:`TestBus.mock_service`): it records every request
    it got (``calls``, and the :class:`Recorder` API) and answers with :attr:`reply`.

    ``reply`` is a value (returned as the reply's content), an exception instance (raised: the caller
    gets ``RemoteError``, or retries a :class:`~zmqbus.RetryableError`) or a callable taking the
    request message (sync or async; what it returns is the reply, what it raises is raised).
    Change it at any time.
    """

    def __init__(self, service: str, reply: Any) -> None:
        super().__init__(service)
        self.service = service
        self.reply = reply

    @property
    def calls(self) -> list[ProcessingMessage]:
        """The requests received, in order (retries of one request are one call: the reply is cached)."""
        return self.messages

    async def handle(self, message: ProcessingMessage) -> Any:
        self.add(message)
        reply = self.reply
        if isinstance(reply, BaseException):
            raise copy.copy(reply)  # a fresh one each time: no traceback piled on the test's instance
        if callable(reply):
            result = reply(message)
            return await result if inspect.isawaitable(result) else result
        return reply
