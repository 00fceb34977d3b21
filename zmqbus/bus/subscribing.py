"""A client's subscriptions: its table (pure, :mod:`zmqbus.core.subscriptions`) and its socket's, kept in step.

A pattern subscribes its socket with its longest literal prefix (ZeroMQ filters by prefix only) and
is matched exactly in the process. Removing the last pattern of a prefix unsubscribes the socket and
forgets the sequence numbers of its topics: what is published while nobody listens is no loss.
"""

from __future__ import annotations

import logging

from ..core.subscriptions import MessageHandler, Subscription, SubscriptionTable
from ..core.topics import compile_pattern
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

    def attach(self, link: BusLink | None) -> None:
        """Subscribe ``link`` to every prefix held (None: the socket is gone)."""
        self.link = link
        if link is not None:
            for prefix in self.table.prefixes:
                link.subscribe(prefix)

    def add(self, component_name: str, pattern: str, handler: MessageHandler) -> tuple[Subscription, bool]:
        """Subscribe ``handler`` to ``pattern``; True with it when it is new (the same handler on the same
        pattern twice is one subscription). Raises :class:`TopicError` before anything changes."""
        compiled = compile_pattern(pattern)
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
            self.receiver.sequences.forget(prefix.rstrip(b"\x00").decode())
        return len(gone)
