"""The pytest plugin zmqbus registers (``pytest11`` entry point ``zmqbus``).

* the ``bus`` fixture: a :class:`~zmqbus.testing.TestBus` (a real forwarder on
  ipc in a temporary folder), closed after the test, in the test's event loop;
* the ``async def`` tests it owns run on a fresh event loop per test, their ``async def``
  fixtures (function scope, plain or ``yield``-ing) on the same loop.

It owns only what asks for it: a coroutine test that uses the ``bus`` fixture or is marked
``@pytest.mark.zmqbus`` (ini ``zmqbus_mode = auto``: every coroutine test no other plugin
runs). A test another async plugin runs (marked ``asyncio``, ``anyio`` or ``trio``, or using
``anyio_backend``; pytest-asyncio's auto mode marks every one) is left to it, fixtures
included, so installing zmqbus changes nothing in a suite that does not use it.

It imports nothing of zmqbus until a test uses it, so installing zmqbus costs
other test suites nothing.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .bus import TestBus

_RUNNER = pytest.StashKey[asyncio.Runner]()
#: Markers and fixtures of the other async plugins: a test carrying one is theirs.
_FOREIGN_MARKERS = ("asyncio", "anyio", "trio")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "zmqbus_mode",
        "which async tests zmqbus runs: strict (those using the bus fixture or marked zmqbus) "
        "or auto (every async test no other plugin runs)",
        default="strict",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "zmqbus: run this async test and its async fixtures on a fresh event loop (zmqbus's plugin)"
    )
    mode = config.getini("zmqbus_mode")
    if mode not in ("strict", "auto"):
        raise pytest.UsageError(f"zmqbus_mode is {mode!r}: use strict or auto")


@pytest.fixture
def bus() -> Iterator[TestBus]:
    """A real zmqbus bus for this test (see :class:`zmqbus.testing.TestBus`)."""
    from .bus import TestBus

    test_bus = TestBus()
    try:
        yield test_bus
    finally:
        test_bus.close()  # in the test's event loop, when it has one that is not closed yet


def _ours(item: pytest.Item) -> bool:
    """Whether zmqbus runs this test (and its async fixtures)."""
    if not isinstance(item, pytest.Function) or not inspect.iscoroutinefunction(item.obj):
        return False
    if any(item.get_closest_marker(m) is not None for m in _FOREIGN_MARKERS) or "anyio_backend" in item.fixturenames:
        return False
    return (
        item.get_closest_marker("zmqbus") is not None
        or "bus" in item.fixturenames
        or item.config.getini("zmqbus_mode") == "auto"
    )


def _runner(item: pytest.Item) -> asyncio.Runner:
    runner = item.stash.get(_RUNNER, None)
    if runner is None:
        runner = item.stash[_RUNNER] = asyncio.Runner()
    return runner


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, Any, Any]:
    """Run an ``async def`` fixture of a test zmqbus owns on that test's event loop."""
    func = fixturedef.func
    item = getattr(request, "_pyfuncitem", None)
    if not (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)) or item is None or not _ours(item):
        return (yield)
    if fixturedef.scope != "function":
        pytest.fail(
            f"async fixture {fixturedef.argname!r} is {fixturedef.scope}-scoped: zmqbus runs async fixtures "
            "on each test's own event loop, so they must be function-scoped",
            pytrace=False,
        )
    instance = request.instance
    if instance is not None and hasattr(func, "__func__"):  # a fixture method: bound to this test's instance
        func = func.__func__.__get__(instance)
    original = fixturedef.func
    fixturedef.func = _on_loop(func, _runner(item))  # type: ignore[misc]
    try:
        return (yield)
    finally:
        fixturedef.func = original  # type: ignore[misc]


def _on_loop(func: Callable[..., Any], runner: asyncio.Runner) -> Callable[..., Any]:
    """A sync stand-in for an async fixture: each step runs on ``runner`` (the test's loop and context)."""
    if inspect.isasyncgenfunction(func):

        def generator_fixture(**kwargs: Any) -> Iterator[Any]:
            agen = func(**kwargs)

            async def step() -> Any:
                return await agen.__anext__()

            yield runner.run(step())
            try:
                runner.run(step())
            except StopAsyncIteration:
                return
            runner.run(agen.aclose())
            raise RuntimeError(f"async fixture {func.__name__} yielded more than once")

        return generator_fixture

    def fixture(**kwargs: Any) -> Any:
        return runner.run(func(**kwargs))

    return fixture


@pytest.hookimpl()
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``async def`` test zmqbus owns on its own event loop."""
    if not _ours(pyfuncitem):
        return None
    params = inspect.signature(pyfuncitem.obj).parameters
    args = {name: pyfuncitem.funcargs[name] for name in params if name in pyfuncitem.funcargs}
    _runner(pyfuncitem).run(pyfuncitem.obj(**args))
    return True


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """After every fixture's teardown (async ones on the loop), close the test's loop."""
    try:
        return (yield)
    finally:
        runner = item.stash.get(_RUNNER, None)
        if runner is not None:
            del item.stash[_RUNNER]
            runner.close()
