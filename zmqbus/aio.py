"""Small asyncio helpers shared by the dispatcher and the responder (no sockets)."""
from __future__ import annotations

import asyncio
import inspect
import types
from typing import Any

__all__ = ["start_eagerly", "resume", "is_async_callable", "wait_event"]


def is_async_callable(fn: Any) -> bool:
    """True for a coroutine function, a bound async method or an object whose ``__call__`` is async."""
    # not callable(): the question is whether __call__ is a coroutine function
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


def start_eagerly(coro: Any) -> tuple[bool, Any]:
    """Run ``coro`` up to its first suspension.

    Returns ``(True, result)`` if it finished without suspending (no Task is
    needed), or ``(False, rest)`` where ``rest`` is an awaitable that finishes
    it (give it to a Task). Exceptions raised before the first suspension
    propagate to the caller. Call it with the context the coroutine should see.
    """
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, resume(coro, yielded)


@types.coroutine
def resume(coro: Any, yielded: Any) -> Any:
    """Go on driving a coroutine that was started by hand and suspended at ``yielded``.

    Starting a handler's coroutine with ``coro.send(None)`` answers the common
    case (it completes without suspending) with no Task at all; when it does
    suspend, a Task runs ``resume(coro, yielded)``, which hands the Task what
    the coroutine waits on and forwards results and exceptions back, exactly
    as ``yield from`` would have from the start (Python 3.12's eager tasks do
    this natively).
    """
    while True:
        try:
            value = yield yielded
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(value)
            except StopIteration as stop:
                return stop.value


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for ``event`` up to ``timeout`` seconds; True if it is set.

    Not ``asyncio.wait_for``: on Python 3.11 it can swallow a cancellation
    that arrives just as the awaited thing completes, leaving the cancelled
    task running (seen here: a responder's heartbeat task that close() then
    waited for forever). ``asyncio.wait`` never swallows one.
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
        return bool(done)
    finally:
        waiter.cancel()
