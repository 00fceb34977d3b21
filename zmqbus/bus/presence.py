"""A responder's presence on the bus: its announcements, and its answers to discovery queries.

PROTOCOL.md section 8.1: an instance announces itself on ``_zmqbus.presence``
every ``interval`` seconds (the responder's heartbeat loop calls
:meth:`Announcer.announce`) and at once when someone asks for one of its
services on ``_zmqbus.discover``; a burst of queries is coalesced into one
announcement, but none is ever ignored (the asker may have subscribed after
the last one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..core.control import PRESENCE_TOPIC, Presence, discovered_service
from ..core.errors import ZmqbusError
from ..core.message import MessageMetadata, ProcessingMessage
from ..core.ratelog import RateLimitedLog
from .port import BusPort

__all__ = ["Announcer"]

log = logging.getLogger("zmqbus.bus.rpc")

_COALESCE = 0.02  # seconds: discovery queries closer than this to the last announcement share the next one


class Announcer:
    """Publishes ``presence(leaving)`` for one instance, on request and on discovery queries."""

    def __init__(self, bus: BusPort, presence: Callable[[bool], Presence]) -> None:
        self.bus = bus
        self._presence = presence
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None  # a coalesced announcement to come
        self._closed = False
        self._faults = RateLimitedLog(log)

    async def announce(self, leaving: bool = False, timeout: float | None = None) -> None:
        """Publish the announcement (raises what ``publish`` raises)."""
        self._last = time.monotonic()
        presence = self._presence(leaving)
        source = MessageMetadata(source_component=self.bus.name or "zmqbus")
        await self.bus.publish(ProcessingMessage(PRESENCE_TOPIC, presence.to_content(), source), timeout=timeout)

    async def announce_quietly(self) -> None:
        """Announce; a failure is logged (rate-limited), not raised: the next heartbeat tries again."""
        try:
            await self.announce()
        except ZmqbusError as exc:
            self._faults.log(logging.WARNING, "announce", "presence announcement failed: %s", exc)

    async def on_discover(self, msg: ProcessingMessage) -> None:
        """A discovery query: announce now, or once the coalescing window has passed."""
        wanted = discovered_service(msg.content)
        if wanted is not None and wanted not in self._presence(False).services:
            return
        if self._timer is not None or self._closed:
            return
        wait = _COALESCE - (time.monotonic() - self._last)
        if wait <= 0:
            await self.announce()
            return
        self._timer = asyncio.get_running_loop().call_later(wait, self._soon)

    def _soon(self) -> None:
        self._timer = None
        self.bus.owner.spawn(self.announce_quietly(), name="zmqbus-announce", fatal=False)

    def close(self) -> None:
        """No more announcements on discovery (a coalesced one still to come is dropped): the responder
        is closing, and a task started after its owner was cancelled would never run."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
