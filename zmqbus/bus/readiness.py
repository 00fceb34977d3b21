"""Proof that a client's subscriptions are live at the forwarder, and that what it published got there.

A probe is a message on a private topic that the client subscribes to and
publishes through the forwarder back to itself. ZeroMQ keeps a connection's
messages and subscriptions in order, so when a probe comes back every
earlier subscription has reached the forwarder, the forwarder's
subscriptions have reached the client's publishing socket, and everything
published before the probe has left (PROTOCOL.md section 5).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..core.errors import BusTimeout, ClosedError, ZmqbusError
from ..core.message import MessageMetadata, ProcessingMessage
from ..core.topics import RESERVED_PREFIX
from ..io.aio import wait_event
from ..io.security import HandshakeWatch
from .publisher import Publisher
from .subscribing import Subscriptions

__all__ = ["Readiness"]


def _retrieve(task: asyncio.Task[None]) -> None:
    """A shared probe's failure reaches its waiters; one nobody waits for any more is not logged as lost."""
    if not task.cancelled():
        task.exception()


log = logging.getLogger("zmqbus.bus.broker")

_PROBE_TYPE = "_zmqbus.probe"


class Readiness:
    """The probes of one client. ``generation`` counts its user subscriptions; :meth:`probe` proves them."""

    def __init__(
        self,
        publisher: Publisher,
        subscriptions: Subscriptions,
        watches: Callable[[], list[HandshakeWatch]],
        where: str,
    ) -> None:
        self._publisher, self._subs, self._watches = publisher, subscriptions, watches
        self._where = where  # the forwarder's endpoints, for messages
        self._count = 0
        #: User subscriptions made so far, and how many of them a probe has proven live.
        self.generation = self.proven = 0
        #: Published messages known to have reached the forwarder.
        self.confirmed = 0
        #: The probe in flight (shared by concurrent calls), and the (generation, published) it proves.
        self._running: asyncio.Task[None] | None = None
        self._covers = (0, 0)

    @property
    def live(self) -> bool:
        """True once a probe has proven every subscription made so far."""
        return self._publisher.is_ready and self.proven >= self.generation

    async def probe(self, timeout: float) -> None:
        """Prove every subscription made and message published so far: send probes (backing off from 5 ms to
        250 ms) until one comes back; raise :class:`BusTimeout` after ``timeout`` seconds, or what a handshake
        watch raises (a refused CURVE key) at once.

        Concurrent calls share one probe (a burst of first requests or publishes sends one, not one each): a
        call joins the probe in flight when that probe started after everything the call must prove, else it
        waits for it and the next one starts, which every call waiting by then shares."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        want = (self.generation, self._publisher.published)
        while True:
            running = self._running
            if running is None or running.done() or not (self._covers[0] >= want[0] and self._covers[1] >= want[1]):
                if running is not None and not running.done():
                    await asyncio.wait((running,), timeout=max(0.0, deadline - loop.time()))
                    if not running.done():
                        raise self._timeout(timeout)
                    continue
                self._covers = (self.generation, self._publisher.published)
                running = self._running = loop.create_task(self._probe(max(0.0, deadline - loop.time())))
                running.add_done_callback(_retrieve)
            # asyncio.wait, not wait_for: wait_for (3.11) returns the result of a probe that ends as this call
            # is cancelled, and so loses the cancellation (a task cancelled then runs on forever).
            await asyncio.wait((running,), timeout=max(0.0, deadline - loop.time()))
            if not running.done():
                raise self._timeout(timeout)
            if running.cancelled():
                raise ClosedError("MessageBroker is closed")  # the client closed, not this call
            error = running.exception()
            if error is None:
                return
            if not isinstance(error, BusTimeout) or loop.time() >= deadline - 0.001:
                raise self._timeout(timeout) if isinstance(error, BusTimeout) else error
            # the shared probe had a shorter timeout than this call: go on with a new one

    def cancel(self) -> None:
        """Stop the probe in flight (the client is closing)."""
        if self._running is not None:
            self._running.cancel()

    def _timeout(self, timeout: float) -> BusTimeout:
        return BusTimeout(
            f"ready(): no answer from the forwarder at {self._where} within {timeout:g} s (is it up? "
            "does it need CURVE keys, or is it at its connection limit?)"
        )

    async def _probe(self, timeout: float) -> None:
        pub = self._publisher
        generation, published = self._covers
        self._count += 1
        topic = f"{RESERVED_PREFIX}probe.{pub.client_id.replace('-', '')}.{self._count}"
        arrived = asyncio.Event()
        sub = self._subs.add_private(pub.name or "zmqbus", topic, lambda m: arrived.set())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = 0.005
        try:
            while not arrived.is_set():
                for watch in self._watches():
                    watch.check()  # a refused key: say so now, not at a timeout
                left = deadline - loop.time()
                if left <= 0:
                    raise self._timeout(timeout)
                self._send(topic)
                if not await wait_event(arrived, min(interval, left)):
                    interval = min(interval * 2, 0.25)
            pub.is_ready = True
            pub.poll_notices()  # the tail words subscribed on the bus, as of this probe
            # Probes travel behind everything published before them, in order.
            self.proven = max(self.proven, generation)
            self.confirmed = max(self.confirmed, published)
        finally:
            self._subs.remove(sub)

    def _send(self, topic: str) -> None:
        pub = self._publisher
        link = pub.link
        if link is None:
            raise ClosedError("MessageBroker is closed")
        pub.flush()  # batched messages leave before the probe that proves they left
        if pub.batcher.stalled:
            return  # a probe must not pass held frames: the next round sends it
        msg = ProcessingMessage(_PROBE_TYPE, None, MessageMetadata(source_component=pub.name))
        head = pub.codec.frame_head(msg, topic)
        # a probe lost at the high-water mark is simply sent again
        link.send(head + pub.codec.encode(msg, head, pub.client_id, 0, pub.name))

    async def confirm_published(self, timeout: float) -> None:
        """Prove with a probe that every published message reached the forwarder, or count the rest
        (``unconfirmed``) and say so."""
        pub = self._publisher
        if pub.published == self.confirmed:
            return
        try:
            await self.probe(timeout)
        except ZmqbusError:
            pass
        unconfirmed = pub.published - self.confirmed
        if unconfirmed:
            pub.unconfirmed += unconfirmed
            log.warning(
                "closing with %d published message(s) not confirmed by the forwarder at %s within %g s: they may "
                "be lost",
                unconfirmed,
                self._where,
                timeout,
            )
