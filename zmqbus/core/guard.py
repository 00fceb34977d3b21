"""What the forwarder's guarded proxy asks before it forwards a publication or applies a subscription.

:class:`PolicyGuard` enforces a :class:`~zmqbus.core.policy.Policy` (if any) and
:class:`~zmqbus.core.policy.SubscriptionLimits`, and counts its refusals. Pure
code: the proxy loop that asks it is :mod:`zmqbus.io.guarded`.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from .control import FORWARDER_STATS_TOPIC
from .policy import Policy, SubscriptionLimits
from .ratelog import RateLimitedLog
from .topics import TAIL_MARK, split_tail_copy

__all__ = ["Guard", "PolicyGuard", "publication_topic"]


def publication_topic(head: bytes) -> bytes:
    """The topic a publication's first bytes (up to 512) name: an ordinary frame's, or the one inside a tail
    copy (``0x01 word NUL topic NUL ...``, PROTOCOL.md section 2.3), which the publish rules apply to."""
    word = None
    if head.startswith(TAIL_MARK):
        inner = split_tail_copy(head)
        word, head = head[1 : len(head) - len(inner) - 1] if inner is not None else b"", inner or b""
    cut = head.find(b"\x00")
    topic = head[:cut] if cut >= 0 else head
    if word is not None and topic.rpartition(b".")[2] != word:
        return b""  # a tail copy under another word than its topic's last: refused
    return topic


log = logging.getLogger("zmqbus.bus.forwarder")

_STATS = FORWARDER_STATS_TOPIC.encode()


class Guard(Protocol):
    """What the guarded proxy asks; implementations count and log their refusals."""

    checks_publish: bool

    def may_publish(self, user: str, topic: bytes) -> bool: ...

    def subscription(self, user: str, connection: int, prefix: bytes, subscribe: bool) -> list[bytes]:
        """The prefixes to (un)subscribe that connection to; empty: refused (or nothing to undo)."""
        ...


class PolicyGuard:
    """Enforces a :class:`~zmqbus.core.policy.Policy` (if any) and subscription limits; counts refusals.

    Thread-safe: the proxy thread asks, the forwarder's watch thread reports closed connections.
    """

    def __init__(self, policy: Policy | None, limits: SubscriptionLimits) -> None:
        self.policy = policy
        # Under a policy every publication is checked: control topics have rules of their own (only the
        # forwarder publishes its statistics), even when every key may publish everything else.
        self.checks_publish = policy is not None
        self.limits = limits
        self._bytes = 0  # the granted prefixes' lengths, summed
        self.refused: dict[str, int] = {}
        self._lock = threading.Lock()
        self._subs: dict[int, dict[bytes, list[bytes]]] = {}  # connection -> asked prefix -> granted
        self._held: dict[int, int] = {}  # connection -> granted prefixes
        self._total = 0
        self._publish_cache: dict[tuple[str, bytes], bool] = {}
        self._faults = RateLimitedLog(log)

    def replace_policy(self, policy: Policy) -> None:
        """A reloaded policy: new publications and subscriptions are checked against it."""
        with self._lock:
            self.policy = policy
            self.checks_publish = True
            self._publish_cache = {}

    def _refuse(self, reason: str, text: str, *args: object) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self._faults.log(logging.WARNING, reason, text, *args)

    def may_publish(self, user: str, topic: bytes) -> bool:
        cache = self._publish_cache
        allowed = cache.get((user, topic))
        if allowed is None and not topic:
            allowed = False  # no topic, or a tail copy whose word is not its topic's last
        elif allowed is None and (not user or topic == _STATS):
            # "": the forwarder's own inproc sockets (every member has a key name under a policy); its
            # statistics come from it alone, so no member can forge them
            allowed = not user and topic == _STATS
        elif allowed is None:
            assert self.policy is not None
            allowed = self.policy.may_publish(user, topic.decode(errors="replace"))
            if len(cache) >= 100_000:
                cache.clear()
            cache[(user, topic)] = allowed
        if not allowed:
            self._refuse("publish_denied", "key %r may not publish on %r: dropped", user, topic)
        return allowed

    def subscription(self, user: str, connection: int, prefix: bytes, subscribe: bool) -> list[bytes]:
        with self._lock:
            subs = self._subs.setdefault(connection, {})
            if not subscribe:
                granted = subs.pop(prefix, [])
                self._total -= len(granted)
                self._bytes -= sum(map(len, granted))
                self._held[connection] = self._held.get(connection, 0) - len(granted)
                return granted
            if prefix in subs:
                return []
            # "": the forwarder's own inproc sockets (its statistics queries), granted as asked
            granted = [prefix] if self.policy is None or not user else self.policy.grant(user, prefix)
            if not granted:
                self._refuse("subscribe_denied", "key %r may not subscribe to %r: refused", user, prefix)
                return []
            held, size, limits = self._held.get(connection, 0), sum(map(len, granted)), self.limits
            if (
                held + len(granted) > limits.per_connection
                or self._total + len(granted) > limits.total
                or self._bytes + size > limits.total_bytes
            ):
                self._refuse(
                    "subscription_limit",
                    "subscription limit reached (%d on this connection, %d and %d bytes in all; %s): refused %r",
                    held,
                    self._total,
                    self._bytes,
                    limits,
                    prefix[:64],
                )
                return []
            subs[prefix] = granted
            self._held[connection] = held + len(granted)
            self._total += len(granted)
            self._bytes += size
            return granted

    def closed(self, connection: int) -> None:
        """A subscriber's connection closed: its subscriptions no longer count."""
        with self._lock:
            gone = self._subs.pop(connection, {})
            self._total -= self._held.pop(connection, 0)
            self._bytes -= sum(len(p) for granted in gone.values() for p in granted)
