"""Testing your own components on a real bus: :class:`TestBus`, :class:`Recorder` and a pytest plugin.

Installing zmqbus (``pip install 'zmqbus[testing]'`` brings pytest too) registers the plugin
(``pytest11`` entry point), so a test gets a real forwarder with no conftest::

    async def test_an_order_is_priced(bus):
        await bus.start_all(OrderManager, PricingProcessor, ErrorHandler)
        done = await bus.record("order.complete")
        await bus.publish("order.start.request", {"qty": 3}, correlation_id="o-1")
        reply = await done.wait_for(correlation_id="o-1")
        assert reply.content == {"price": 28.5}

Everything is real ZeroMQ: a forwarder (a thread of the test process, on ipc
in a temporary folder), one :class:`~zmqbus.MessageBroker` per component, the
same sockets and wire format as production. Nothing is faked, so nothing can
drift from the real bus. ``async def`` tests that use ``bus`` (or are marked
``@pytest.mark.zmqbus``) run on a fresh event loop, their ``async def`` fixtures
too, without another plugin; every other test is left to whoever ran it before.
:meth:`TestBus.mock_service` stands in for a service, :meth:`TestBus.requests`
records what components request.

Outside pytest, ``async with TestBus() as bus:`` does the same.
"""

from __future__ import annotations

from .bus import MockService, Recorder, Spawned, TestBus, wait_until

__all__ = ["TestBus", "Recorder", "Spawned", "MockService", "wait_until"]
