"""A client's subscriptions: its table (pure, :mod:`zmqbus.core.subscriptions`) and its socket's, kept in step.

A pattern subscribes its socket with its longest literal prefix (ZeroMQ filters by prefix only) and
is matched exactly in the process. Removing the last pattern of a prefix unsubscribes the socket and
forgets the sequence numbers of its topics: what is published while nobody listens is no loss.
"""

from __future__ import annotations

import logging

from ..core.errors import ZmqbusError
from ..core.subscriptions import MessageHandler, Subscription, SubscriptionTable
from ..core.topics import TAIL_MARK, Pattern, compile_pattern
from ..io.aio import is_async_callable
from ..io.transport import BusLink
from .receiver import Receiver

__all__ = ["Subscriptions"]

log = logging.getLogger("zmqbus.bus.broker")


class Subscriptions:
    """The subscriptions of one client; :meth:`attach` gives them its socket once it is connected."""

    def __init__(self, table: SubscriptionTable, receiver: Receiver) -> None:
        self.table, self.receiver = table, receiver
        self.link: BusLink | None = None
        #: Patterns that asked for history (a late joiner's last N per stream); None: recovery is off.
        self.backfills: list[tuple[Pattern, int]] | None = None

    def backfill_for(self, topic: str) -> int:
        """How many earlier messages a stream first seen on ``topic`` starts with (the largest asked)."""
        return max((n for p, n in self.backfills or () if p.match(topic)), default=0)

    def attach(self, link: BusLink | None) -> None:
        """Subscribe ``link`` to every prefix held (None: the socket is gone)."""
        self.link = link
        if link is not None:
            for prefix in self.table.prefixes:
                link.subscribe(prefix)

    def add(
        self, component_name: str, pattern: str, handler: MessageHandler, history: int = 0
    ) -> tuple[Subscription, bool]:
        """Subscribe ``handler`` to ``pattern``; True with it when it is new (the same handler on the same
        pattern twice is one subscription). ``history``: start each stream with up to that many earlier
        messages its publisher still holds. Raises :class:`TopicError` before anything changes, and
        :class:`ZmqbusError` for ``history`` with recovery off."""
        compiled = compile_pattern(pattern)
        if history:
            if self.backfills is None or history < 0:
                raise ZmqbusError("history= needs recovery on (MessageBroker(history=True)) and a count >= 0")
            self.backfills.append((compiled, history))
        same = [s for s in self.table.select(component_name, pattern, handler) if s.handler == handler]
        if same:
            return same[0], False
        if compiled.receives_all:
            log.info(
                "pattern %r starts with a wildcard: this client receives all bus traffic and filters it in "
                "Python (see statistics().unmatched)",
                pattern,
            )
        return self.add_private(component_name, pattern, handler), True

    def add_private(self, component_name: str, pattern: str, handler: MessageHandler) -> Subscription:
        """Subscribe without the checks of :meth:`add` (the client's own control topics)."""
        sub, prefix = self.table.add(component_name, pattern, handler, is_async=is_async_callable(handler))
        if prefix is not None and self.link is not None:
            self.link.subscribe(prefix)
        return sub

    def remove(
        self, component_name: str | Subscription, pattern: str | None = None, handler: MessageHandler | None = None
    ) -> int:
        """Remove the subscriptions selected (see :meth:`MessageBroker.unsubscribe`); return how many."""
        gone = self.table.select(component_name, pattern, handler)
        for prefix in self.table.remove(gone):
            if self.link is not None:
                self.link.unsubscribe(prefix)
            if prefix.startswith(TAIL_MARK):  # a tail pattern's: the topics ending with its word
                self.receiver.sequences.forget("", tail=prefix[1:-1].decode())
            else:
                self.receiver.sequences.forget(prefix.rstrip(b"\x00").decode())
        return len(gone)
