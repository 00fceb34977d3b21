"""A client noticing that its forwarder went away, and that it came back.

ZeroMQ reconnects by itself and says nothing: a component whose forwarder died
would log nothing until, much later, gap warnings. The watch reads what the
client receives anyway; when a second passes with nothing, it sends a ping to
itself through the forwarder (one small frame, only while the client is idle).
After ``misses`` quiet seconds it logs one WARNING (the forwarder is lost; pub/sub
waits for it, requests go on peer to peer), and when frames flow again one
INFO with how long it was away. Warnings are rate-limited (a flapping link
logs once per ``quiet_log`` seconds, then how many more losses there were);
the INFO comes only after a loss that was logged. It starts once the client
has reached the forwarder (before that, ``ready()`` reports the waits).
"""

from __future__ import annotations

import asyncio
import logging

from ..core.message import MessageMetadata, ProcessingMessage
from ..core.ratelog import RateLimitedLog
from ..core.topics import RESERVED_PREFIX
from .publisher import Publisher
from .receiver import Receiver
from .subscribing import Subscriptions

__all__ = ["LinkWatch"]

log = logging.getLogger("zmqbus.bus.broker")


class LinkWatch:
    """Watches one client's link to its forwarder (see the module docstring)."""

    def __init__(
        self,
        publisher: Publisher,
        receiver: Receiver,
        subscriptions: Subscriptions,
        where: str,
        *,
        interval: float = 1.0,
        misses: int = 3,
        quiet_log: float = 30.0,
    ) -> None:
        self._pub, self._receiver, self._subs, self.where = publisher, receiver, subscriptions, where
        self.interval, self.misses = interval, misses
        self._log = RateLimitedLog(log, quiet_log)
        #: When the current loss began (loop time; None: the link is up).
        self.lost_since: float | None = None
        self._logged = False  # the current loss was logged (its end is then logged too)

    async def run(self) -> None:
        """Watch until cancelled (the client closes)."""
        pub = self._pub
        topic = f"{RESERVED_PREFIX}probe.{pub.client_id.replace('-', '')}.alive"
        sub = self._subs.add_private(pub.name or "zmqbus", topic, _ignore)
        loop = asyncio.get_running_loop()
        try:
            while not pub.is_ready:  # not yet reached: ready() says what it waits for
                await asyncio.sleep(self.interval)
            heard = loop.time()
            while True:
                await asyncio.sleep(self.interval)
                now = loop.time()
                heard = max(heard, self._receiver.last_frame)
                quiet = now - heard
                if quiet >= self.interval * 0.9:
                    self._ping(topic)
                self.check(quiet, now)
        finally:
            self._subs.remove(sub)

    def check(self, quiet: float, now: float) -> None:
        """One check: ``quiet`` seconds since the last frame arrived, at loop time ``now``."""
        if self.lost_since is None:
            if quiet >= self.interval * self.misses:
                self.lost_since = now - quiet
                self._logged = self._log.log(
                    logging.WARNING,
                    "lost",
                    "lost the forwarder at %s: nothing received for %.1f s (ZeroMQ reconnects by itself; "
                    "publications wait for it, requests go on peer to peer)",
                    self.where,
                    quiet,
                )
        elif quiet < self.interval:
            away = now - self.lost_since
            self.lost_since = None
            if self._logged:
                log.info("the forwarder at %s is back after %.1f s", self.where, away)

    def _ping(self, topic: str) -> None:
        pub = self._pub
        link = pub.link
        if link is None:
            return
        msg = ProcessingMessage("_zmqbus.probe", None, MessageMetadata(source_component=pub.name))
        head = pub.codec.frame_head(msg, topic)
        link.send(head + pub.codec.encode(msg, head, pub.client_id, 0, pub.name))  # lost at the HWM: next second


def _ignore(message: ProcessingMessage) -> None:
    """The ping's handler: its arrival is what counts (the receiver notes every frame's)."""
