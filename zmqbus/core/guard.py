"""What the forwarder's guarded proxy asks before it forwards a publication or applies a subscription.

:class:`PolicyGuard` enforces a :class:`~zmqbus.core.policy.Policy` (if any) and
:class:`~zmqbus.core.policy.SubscriptionLimits`, and counts its refusals. Pure
code: the proxy loop that asks it is :mod:`zmqbus.io.guarded`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
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

__all__ = [
    "Guard",
    "PolicyGuard",
    "publication_topic",
    "PRESENCE_HEAD",
    "CONTROL_HEAD",
    "MAX_SUBSCRIPTION_FRAME",
    "SUBSCRIPTION_QUEUE",
    "SUBSCRIPTION_RCVBUF",
]


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

#: The longest frame a subscriber may send the forwarder's XPUB when it guards subscriptions: a flag byte
#: and the longest prefix a client needs (a topic and its NUL, or a tail prefix: 257 bytes), with room to
#: spare. A longer frame ends the connection (libzmq's MAXMSGSIZE).
MAX_SUBSCRIPTION_FRAME = 512
#: Subscription frames queued per connection before its sender waits (the XPUB's receive high-water mark).
#: libzmq's XPUB reads a connection's pipe dry, keeping each subscription, before the proxy loop sees any:
#: a short pipe makes it return after a frame or two instead of reading a flood whole (measured: 100 let a
#: 12-connection flood reach 1.1 GB, 2 held it near 200 MB; 1 stalls CURVE clients at connect).
SUBSCRIPTION_QUEUE = 2
#: The kernel's receive buffer on each subscriber connection (Linux doubles it): what libzmq may still read,
#: and keep, from a connection after it was cut for a flood.
SUBSCRIPTION_RCVBUF = 64 * 1024


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

    def take_cuts(self) -> list[int]:
        """Connections to cut now (a subscription flood); ``pending_cuts`` is true while there are some."""
        ...

    pending_cuts: list[int]
    upstream: list[bytes]

    def take_upstream(self) -> list[bytes]:
        """(Un)subscriptions to send the publishers now; ``upstream`` is non-empty while there are some."""
        ...

    behind: bool  # the proxy loop sets it (see PolicyGuard.sample_unread)

    def drained(self) -> None:
        """The proxy loop read every subscription libzmq had read."""
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
        self._bytes = 0  # the distinct granted prefixes' lengths, summed
        self.refused: dict[str, int] = {}
        self._lock = threading.Lock()
        self._subs: dict[int, dict[bytes, list[bytes]]] = {}  # connection -> asked prefix -> granted
        self._held: dict[int, int] = {}  # connection -> granted prefixes
        self._total = 0
        # Asked prefixes, granted or refused (libzmq holds each until its connection goes): per connection
        # and in all; and the connections marked to be cut for a flood, not yet gone.
        self._asked: dict[int, int] = {}  # connection -> the lengths of its asked prefixes, summed
        self._asked_refs: dict[bytes, int] = {}  # asked prefix -> connections asking it
        self._granted_refs: dict[bytes, int] = {}  # granted prefix -> connections holding it
        self._asked_bytes = self._asked_count = 0
        self._cutting: set[int] = set()
        self._dead: set[int] = set()  # closed connections whose last frames may still be read
        self.pending_cuts: list[int] = []
        #: (Un)subscriptions for the publishers' side: a prefix goes up when the first connection is granted
        #: it and is withdrawn when the last one holding it gives it up or goes (the proxy loop sends them).
        self.upstream: list[bytes] = []
        # libzmq reads subscriptions (and keeps them) ahead of the proxy loop, as fast as they arrive. While
        # the loop is behind, what it has not read yet is estimated from the kernel's count of bytes each
        # connection sent (:meth:`sample_unread`), and counts towards the asked bounds.
        self.behind = False  # the proxy loop's last read of subscriptions left some unread
        self.drains = 0  # times the proxy loop read every subscription libzmq had (the loop counts them)
        self._drains_seen = -1
        self._received_base: dict[int, int] | None = None
        self._unread: dict[int, int] = {}
        self._unread_bytes = 0
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
                if prefix not in subs:
                    return []
                granted = subs.pop(prefix)
                self._ask(connection, prefix, -1)
                self._hold(connection, granted, -1)
                return granted
            if prefix in subs:
                return []
            subs[prefix] = []  # libzmq keeps every prefix a connection sends, granted or not
            self._ask(connection, prefix, 1)
            if connection in self._cutting or self._flooded(connection):
                return []
            granted = self._grant(user, connection, prefix)
            subs[prefix] = granted
            self._hold(connection, granted, 1)
            return granted

    def _grant(self, user: str, connection: int, prefix: bytes) -> list[bytes]:
        """What to grant for a new prefix: the policy's and the control rules' answer, within the limits."""
        # "": the forwarder's own inproc sockets (its statistics queries), granted as asked
        if user and self.checks_control and prefix.startswith(CONTROL_HEAD):
            if prefix in _CONTROL_SUBSCRIPTIONS or prefix.startswith(_PROBE_HEAD):
                granted = [prefix]
            else:
                self._refuse("control_denied", "key %r may not subscribe to %r: refused", user, prefix[:64])
                return []
        else:
            granted = [prefix] if self.policy is None or not user else self.policy.grant(user, prefix)
        if not granted:
            self._refuse("subscribe_denied", "key %r may not subscribe to %r: refused", user, prefix)
            return []
        held, limits = self._held.get(connection, 0), self.limits
        size = sum(len(p) for p in set(granted) if p not in self._granted_refs)  # libzmq's tries share the rest
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
        return granted

    def _ask(self, connection: int, prefix: bytes, step: int) -> None:
        """Account a prefix asked (step 1) or withdrawn (-1) on a connection: what libzmq holds for it."""
        size = step * len(prefix)
        self._asked[connection] = self._asked.get(connection, 0) + size
        self._asked_bytes += _refer(self._asked_refs, (prefix,), step)
        self._asked_count += step

    def _hold(self, connection: int, granted: list[bytes], step: int) -> None:
        """Account prefixes granted (step 1) or given up (-1) on a connection."""
        self._held[connection] = self._held.get(connection, 0) + step * len(granted)
        self._total += step * len(granted)
        self._bytes += _refer(self._granted_refs, granted, step, self.upstream)

    def _flooded(self, connection: int) -> bool:
        """Past the asked bounds (not counting what connections being cut hold: their own sums, an upper
        bound on what their going frees): mark the live connection that holds the most to be cut
        (:meth:`take_cuts`). True if that is this one."""
        limits, asked, unread, cutting = self.limits, self._asked, self._unread, self._cutting
        held = self._asked_bytes + self._unread_bytes - sum(asked.get(c, 0) for c in cutting)
        count = self._asked_count - sum(len(self._subs.get(c, ())) for c in cutting)
        if held <= limits.asked_bytes and count <= limits.asked:
            return False
        holders = (asked.keys() | unread.keys()) - cutting - self._dead
        if not holders:
            return False
        victim = max(holders, key=lambda c: asked.get(c, 0) + unread.get(c, 0))
        cutting.add(victim)
        self.pending_cuts.append(victim)
        self._unread_bytes -= unread.get(victim, 0)
        self._refuse(
            "subscription_flood",
            "subscriptions asked in all passed %d prefixes or %d bytes (libzmq keeps each until its connection "
            "goes): cutting the connection that holds the most (%d bytes in %d prefixes, %d bytes not read yet)",
            limits.asked,
            limits.asked_bytes,
            asked.get(victim, 0),
            len(self._subs.get(victim, ())),
            unread.get(victim, 0),
        )
        return victim == connection

    def not_cut(self, connections: Iterable[int]) -> None:
        """These could not be cut (gone meanwhile, or not ours): they count again, and may be named again."""
        with self._lock:
            self._cutting.difference_update(connections)

    def sample_unread(self, received: Callable[[], Mapping[int, int]]) -> None:
        """The watch thread's look, every tick, at what libzmq may hold that the proxy loop has not read.

        ``received`` gives the bytes each subscriber connection has sent so far (the kernel's count,
        ``tcpi_bytes_received``; called only while the loop is behind). After a moment at which the loop
        had read everything (``drains`` moved), nothing unread was held; from the first sample after it,
        what each connection sent since counts as held and unread (an upper bound: framing included).
        Past the asked bounds, the connection holding the most is marked to be cut.
        """
        drains = self.drains
        if drains != self._drains_seen or not self.behind:
            self._drains_seen = drains
            with self._lock:
                self._received_base, self._unread, self._unread_bytes = None, {}, 0
            if not self.behind:
                return
        now = received()
        with self._lock:
            base = self._received_base
            if base is None:
                self._received_base = dict(now)
                return
            self._unread = {c: n - base.get(c, 0) for c, n in now.items() if n > base.get(c, 0)}
            self._unread_bytes = sum(n for c, n in self._unread.items() if c not in self._cutting)
            self._flooded(-1)

    def take_upstream(self) -> list[bytes]:
        """The (un)subscriptions to send the publishers now (see ``upstream``)."""
        with self._lock:
            frames, self.upstream = self.upstream, []
            return frames

    def take_cuts(self) -> list[int]:
        """The connections to cut for a subscription flood since the last call (the proxy cuts them)."""
        with self._lock:
            cuts, self.pending_cuts = self.pending_cuts, []
            return cuts

    def closed(self, connection: int) -> int:
        """A subscriber's connection closed: its subscriptions no longer count. Returns the bytes of
        prefixes it had asked for (what libzmq frees now, but for prefixes other connections hold too).

        Frames libzmq read from it before it went may still be read after this; they are accounted to it
        again and forgotten at the proxy loop's next :meth:`drained` (unless a new connection took its
        descriptor meanwhile, :meth:`accepted`: then they count for that one, until it goes).
        """
        with self._lock:
            self._dead.add(connection)
            return self._forget(connection)

    def accepted(self, connection: int) -> None:
        """A subscriber's connection was accepted (its descriptor may be a closed one's, reused)."""
        with self._lock:
            self._dead.discard(connection)

    def drained(self) -> None:
        """The proxy loop read every subscription libzmq had read: no closed connection sends more."""
        self.drains += 1
        if self._dead:
            with self._lock:
                for connection in self._dead:
                    self._forget(connection)
                self._dead.clear()

    def _forget(self, connection: int) -> int:
        asked = self._asked.get(connection, 0)
        for prefix, granted in self._subs.pop(connection, {}).items():
            self._ask(connection, prefix, -1)
            self._hold(connection, granted, -1)
        self._cutting.discard(connection)
        self._asked.pop(connection, None)
        self._held.pop(connection, None)
        return asked


def _refer(refs: dict[bytes, int], prefixes: Iterable[bytes], step: int, changed: list[bytes] | None = None) -> int:
    """Add (step 1) or drop (-1) one reference to each prefix; return the change in distinct bytes
    (what libzmq's tries hold: a prefix many connections subscribe is stored once). The prefixes that
    appear or disappear are appended to ``changed``, flagged as subscriptions are (1 or 0, then the prefix)."""
    delta = 0
    for prefix in prefixes:
        n = refs.get(prefix, 0) + step
        if n > 0:
            refs[prefix] = n
            if n == 1 and step > 0:
                delta += len(prefix)
                if changed is not None:
                    changed.append(b"\x01" + prefix)
        elif prefix in refs:
            del refs[prefix]
            delta -= len(prefix)
            if changed is not None:
                changed.append(b"\x00" + prefix)
    return delta
