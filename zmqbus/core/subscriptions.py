"""The subscription table of one bus client: who wants which topics, and which socket prefixes that needs.

Contracts:

* :meth:`SubscriptionTable.add` and :meth:`SubscriptionTable.remove` return
  the socket prefixes that became needed or unneeded, so the caller
  subscribes the SUB socket to each prefix exactly once however many
  patterns share it (reference counted).
* :meth:`SubscriptionTable.match` returns the subscriptions a topic reaches,
  in the order they were added, and caches the answer per topic (bounded:
  the cache starts over past ``cache_limit`` topics; any change clears it).
* :meth:`SubscriptionTable.ordinary_covers` says whether the socket's
  ordinary prefixes let a topic through: a tail copy (PROTOCOL.md section
  2.3) of such a topic is a second copy of a message that arrives anyway.
* Topics under ``_zmqbus.`` (control traffic) reach only subscriptions whose
  pattern names that first word literally (``internal``): a user's ``#``
  never sees probes and presence.

Pure code: no sockets, no event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .message import ProcessingMessage
from .topics import RESERVED_PREFIX, TAIL_MARK, Pattern, compile_pattern

__all__ = ["MessageHandler", "Subscription", "SubscriptionTable"]

#: A subscription handler: called with each matching message, sync or async.
MessageHandler = Callable[[ProcessingMessage], Awaitable[Any] | None]


@dataclass(eq=False)
class Subscription:
    """One ``subscribe`` call: who, which pattern, which handler."""

    component_name: str
    pattern: Pattern
    handler: MessageHandler
    is_async: bool = field(repr=False)
    internal: bool = field(default=False, repr=False)


class SubscriptionTable:
    """Subscriptions, their shared socket prefixes, and a per-topic match cache (see the module docstring)."""

    __slots__ = ("_subs", "_prefix_refs", "cache", "cache_limit", "_covers")

    def __init__(self, cache_limit: int = 10_000) -> None:
        self._subs: list[Subscription] = []
        self._prefix_refs: dict[bytes, int] = {}
        #: topic -> the subscriptions it reaches; read directly on the hot path, filled by :meth:`match`.
        self.cache: dict[str, tuple[Subscription, ...]] = {}
        self.cache_limit = cache_limit
        self._covers: dict[bytes, bool] = {}  # topic -> whether an ordinary prefix lets it through (cached)

    @property
    def user_count(self) -> int:
        """Subscriptions on user topics (the client's own control subscriptions, ``_zmqbus.``, left out)."""
        return sum(1 for s in self._subs if not s.internal)

    def __len__(self) -> int:
        return len(self._subs)

    def __iter__(self) -> Any:
        return iter(tuple(self._subs))

    @property
    def prefixes(self) -> list[bytes]:
        """Every socket prefix some subscription needs, once each."""
        return list(self._prefix_refs)

    @property
    def receives_all(self) -> int:
        """How many subscriptions make the socket receive all bus traffic."""
        return sum(1 for s in self._subs if s.pattern.receives_all)

    def add(
        self, component_name: str, pattern: str, handler: MessageHandler, *, is_async: bool
    ) -> tuple[Subscription, bytes | None]:
        """Add a subscription; return it and the prefix to subscribe to, if it is a new one.

        Raises :class:`TopicError` for an invalid pattern.
        """
        compiled = compile_pattern(pattern)
        sub = Subscription(component_name, compiled, handler, is_async, internal=pattern.startswith(RESERVED_PREFIX))
        self._subs.append(sub)
        self.cache.clear()
        self._covers.clear()
        count = self._prefix_refs.get(compiled.prefix, 0)
        self._prefix_refs[compiled.prefix] = count + 1
        return sub, (compiled.prefix if count == 0 else None)

    def select(
        self, component_name: str | Subscription, pattern: str | None = None, handler: MessageHandler | None = None
    ) -> list[Subscription]:
        """The subscriptions ``unsubscribe`` with these arguments would remove."""
        if isinstance(component_name, Subscription):
            return [s for s in self._subs if s is component_name]
        return [
            s
            for s in self._subs
            if s.component_name == component_name
            and (pattern is None or s.pattern.text == pattern)
            and (handler is None or s.handler == handler or getattr(s.handler, "__wrapped__", None) == handler)
        ]

    def remove(self, gone: Iterable[Subscription]) -> list[bytes]:
        """Remove these subscriptions; return the prefixes no subscription needs any more."""
        unneeded: list[bytes] = []
        for sub in gone:
            self._subs.remove(sub)
            self.cache.clear()
            self._covers.clear()
            prefix = sub.pattern.prefix
            count = self._prefix_refs.pop(prefix) - 1
            if count:
                self._prefix_refs[prefix] = count
            else:
                unneeded.append(prefix)
        return unneeded

    def ordinary_covers(self, topic: bytes) -> bool:
        """Whether one of the socket's ordinary (not tail) prefixes lets ``topic`` through (cached)."""
        covered = self._covers.get(topic)
        if covered is None:
            framed = topic + b"\x00"
            covered = any(framed.startswith(p) for p in self._prefix_refs if not p.startswith(TAIL_MARK))
            if len(self._covers) >= self.cache_limit:
                self._covers.clear()
            self._covers[topic] = covered
        return covered

    def match(self, topic: str) -> tuple[Subscription, ...]:
        """The subscriptions ``topic`` reaches, in the order they were added (cached)."""
        subs = self.cache.get(topic)
        if subs is not None:
            return subs
        reserved = topic.startswith(RESERVED_PREFIX)
        subs = tuple(s for s in self._subs if (s.internal or not reserved) and s.pattern.match(topic))
        if len(self.cache) >= self.cache_limit:
            self.cache.clear()
        self.cache[topic] = subs
        return subs
