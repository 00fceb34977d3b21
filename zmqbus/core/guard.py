"""What the forwarder's guarded proxy asks before it forwards a publication or applies a subscription.

:class:`PolicyGuard` enforces a :class:`~zmqbus.core.policy.Policy` (if any) and
:class:`~zmqbus.core.policy.SubscriptionLimits`, and counts its refusals. Pure
code: the proxy loop that asks it is :mod:`zmqbus.io.guarded`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from .codec import BATCH_MARK, unpack
from .control import (
    DISCOVER_TOPIC,
    FORWARDER_QUERY_TOPIC,
    FORWARDER_STATS_TOPIC,
    PRESENCE_TOPIC,
    Presence,
    discovered_service,
)
from .errors import DecodeError
from .policy import Policy, SubscriptionLimits
from .ratelog import RateLimitedLog
from .topics import RESERVED_PREFIX, TAIL_MARK, split_tail_copy

__all__ = ["Guard", "PolicyGuard", "publication_topic", "PRESENCE_HEAD", "CONTROL_HEAD"]


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
#: A presence frame's first bytes: the only control frames the forwarder reads (PROTOCOL.md section 12).
PRESENCE_HEAD = PRESENCE_TOPIC.encode() + b"\x00"
#: The start of every control frame (and of every control subscription prefix).
CONTROL_HEAD = RESERVED_PREFIX.encode()
_DISCOVER_HEAD = DISCOVER_TOPIC.encode() + b"\x00"
_QUERY_HEAD = FORWARDER_QUERY_TOPIC.encode() + b"\x00"
_STATS_HEAD = FORWARDER_STATS_TOPIC.encode() + b"\x00"
_PROBE_HEAD = f"{RESERVED_PREFIX}probe.".encode()
#: What members may subscribe to under ``_zmqbus.``: these topics exactly, and probe topics.
_CONTROL_SUBSCRIPTIONS = frozenset({PRESENCE_HEAD, _DISCOVER_HEAD, _STATS_HEAD})


_INVALID = object()


def _content(frame: bytes) -> Any:
    """A control frame's content: element 13 of a payload of exactly 14 elements (no room for more)."""
    cut = frame.find(b"\x00")
    try:
        body = unpack(frame[cut + 1 :])
    except DecodeError:
        return _INVALID
    return body[13] if isinstance(body, list) and len(body) == 14 else _INVALID


class Guard(Protocol):
    """What the guarded proxy asks; implementations count and log their refusals."""

    checks_publish: bool
    checks_control: bool

    def may_publish(self, user: str, topic: bytes) -> bool: ...

    def control_ok(self, user: str, frame: bytes) -> bool: ...

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
        #: Control frames follow their rules once the allow-list is known (:meth:`set_members`): a secure bus.
        self.checks_control = False
        self._keys_of: dict[str, str] = {}
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

    def set_members(self, allowed: Mapping[bytes, str]) -> None:
        """The allow-list (public key -> key name): what binds a presence to the key that sends it."""
        with self._lock:
            self._keys_of = {name: key.decode() for key, name in allowed.items()}
            self.checks_control = bool(self._keys_of)

    def control_ok(self, user: str, frame: bytes) -> bool:
        """The rules of control frames on a secure bus (PROTOCOL.md section 12): control topics are an
        exact, typed set, not a free channel between members. A presence is bound to its sender's key
        (:meth:`presence_ok`); a discovery query carries a service name and nothing else; a probe and a
        statistics query carry no content; only the forwarder publishes its statistics; any other
        ``_zmqbus.`` topic, and a tail copy of a control topic, are dropped (``control_denied``)."""
        if frame.startswith(PRESENCE_HEAD):
            return self.presence_ok(user, frame)
        if frame.startswith(_STATS_HEAD):
            ok = not user  # the forwarder's own inproc socket
        elif frame.startswith(_PROBE_HEAD) or frame.startswith(_QUERY_HEAD):
            ok = _content(frame) in (None, {})  # a probe carries nil, a statistics query nothing either
        elif frame.startswith(_DISCOVER_HEAD):
            content = _content(frame)
            ok = content == {} or (
                isinstance(content, dict) and len(content) == 1 and discovered_service(content) is not None
            )
        else:
            ok = False
        if not ok:
            self._refuse(
                "control_denied", "key %r sent a control frame outside the rules (%r): dropped", user, frame[:48]
            )
        return ok

    def presence_ok(self, user: str, frame: bytes) -> bool:
        """Whether a presence frame from ``user`` announces ``user``'s own public key, and (under a policy)
        only services that key may serve; a forged or malformed one is dropped and counted
        (``presence_forged``): no allowed member can pass itself off as another's instance."""
        payload = frame[len(PRESENCE_HEAD) :]
        try:  # one payload, or a batch frame of several (PROTOCOL.md section 2.4): each is checked
            bodies = unpack(payload[1:]) if payload[:1] == BATCH_MARK else [unpack(payload)]
            announced = [Presence.from_content(b[13] if isinstance(b, list) and len(b) > 13 else None) for b in bodies]
        except (DecodeError, ValueError, TypeError):
            self._refuse("presence_forged", "key %r sent a malformed presence: dropped", user)
            return False
        return all(self._own_presence(user, p) for p in announced)

    def _own_presence(self, user: str, p: Presence) -> bool:
        own = self._keys_of.get(user)
        if own is None or p.key != own:
            self._refuse(
                "presence_forged",
                "key %r announced instance %s with another key (%s): dropped",
                user,
                p.instance,
                p.key,
            )
            return False
        policy = self.policy
        if policy is not None and not p.leaving:
            denied = [s for s in p.services if not policy.may_serve(user, s)]
            if denied:
                self._refuse("presence_forged", "key %r announced services it may not serve %s: dropped", user, denied)
                return False
        return True

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
            if user and self.checks_control and prefix.startswith(CONTROL_HEAD):
                control = prefix in _CONTROL_SUBSCRIPTIONS or prefix.startswith(_PROBE_HEAD)
                granted = [prefix] if control else []
                if not granted:
                    self._refuse("control_denied", "key %r may not subscribe to %r: refused", user, prefix[:64])
                    return []
            else:
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
