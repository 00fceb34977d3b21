"""The pytest plugin zmqbus registers (``pytest11`` entry point ``zmqbus``).

* the ``bus`` fixture: a :class:`~zmqbus.testing.TestBus` (a real forwarder on
  ipc in a temporary folder), closed after the test;
* ``async def`` tests run on a fresh event loop (``asyncio.run``) when no
  other plugin runs them, and every TestBus the test used is closed in that
  loop before it ends.

It imports nothing of zmqbus until a test uses it, so installing zmqbus costs
other test suites nothing.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .bus import TestBus


@pytest.fixture
def bus() -> Iterator[TestBus]:
    """A real zmqbus bus for this test (see :class:`zmqbus.testing.TestBus`)."""
    from .bus import TestBus

    test_bus = TestBus()
    try:
        yield test_bus
    finally:
        test_bus.close()


@pytest.hookimpl()
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``async def`` test that no other plugin ran, then close its buses in the same loop."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(_run(pyfuncitem.obj, args, list(pyfuncitem.funcargs.values())))
    return True


async def _run(test: Callable[..., Coroutine[Any, Any, Any]], args: dict[str, Any], fixtures: list[Any]) -> None:
    from .bus import TestBus

    try:
        await test(**args)
    finally:
        for value in fixtures:
            if isinstance(value, TestBus):
                await value.aclose()
