"""The forwarder's guarded proxy: every message and every subscription seen by Python, for policies.

``zmq.proxy_steerable`` moves frames in C and cannot refuse one. When a
forwarder must enforce something per message or per subscription (a
publish policy, a subscribe policy, subscription limits), it runs this loop
instead, in the same thread and with the same control protocol
(``STATISTICS``: eight 64-bit counters; ``TERMINATE``).

* Publications: each frame's ``User-Id`` (the key name the ZAP handler gave
  its connection) and topic go to ``guard.may_publish``; a refused frame is
  dropped (and counted by the guard). A message is one frame in zmqbus; the
  frames of a multipart message from another client are forwarded together.
* Subscriptions: the subscribers' socket is an ``XPUB`` with ``XPUB_MANUAL``:
  a subscription takes effect only when this loop applies it, after
  ``guard.may_subscribe`` (key name, connection, prefix) allowed it, and only
  then travels on to the publishers.

Reads are batched with non-blocking receives, so the loop costs about a
microsecond or two per message on top of the C proxy (measured in
benchmarks/README.md).
"""

from __future__ import annotations

import logging
import struct
import threading
from typing import Protocol

import zmq

from ..core.control import FORWARDER_QUERY_TOPIC
from ..core.policy import Policy, SubscriptionLimits
from ..core.ratelog import RateLimitedLog
from ..io.transport import user_id

__all__ = ["Guard", "PolicyGuard", "run_guarded_proxy"]

log = logging.getLogger("zmqbus.bus.forwarder")

_BATCH = 1000


class Guard(Protocol):
    """What the guarded proxy asks; implementations count and log their refusals."""

    checks_publish: bool

    def may_publish(self, user: str, topic: bytes) -> bool: ...

    def subscription(self, user: str, connection: int, prefix: bytes, subscribe: bool) -> list[bytes]:
        """The prefixes to (un)subscribe that connection to; empty: refused (or nothing to undo)."""
        ...


def run_guarded_proxy(
    xsub: zmq.Socket[bytes], xpub: zmq.Socket[bytes], control: zmq.Socket[bytes], guard: Guard
) -> None:
    """Forward until ``TERMINATE`` arrives on ``control`` (or the context ends)."""
    xpub.setsockopt(zmq.XPUB_MANUAL, 1)
    poller = zmq.Poller()
    for sock in (xsub, xpub, control):
        poller.register(sock, zmq.POLLIN)
    # frames/bytes received and sent, frontend (publishers) then backend (subscribers), as libzmq's proxy
    counts = [0] * 8
    while True:
        for sock, _ in poller.poll():
            if sock is control:
                command = control.recv()
                if command == b"TERMINATE":
                    return
                if command == b"STATISTICS":
                    control.send_multipart([struct.pack("=Q", v) for v in counts])
            elif sock is xsub:
                # read per batch: a reloaded policy may start (or stop) restricting publishing
                _publications(xsub, xpub, guard if guard.checks_publish else None, counts)
            else:
                _subscriptions(xpub, xsub, guard, counts)


def _publications(xsub: zmq.Socket[bytes], xpub: zmq.Socket[bytes], guard: Guard | None, counts: list[int]) -> None:
    recv, send = xsub.recv, xpub.send
    for _ in range(_BATCH):
        try:
            frame = recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        parts = [frame]
        while parts[-1].more:
            parts.append(recv(copy=False))
        size = sum(len(p) for p in parts)
        counts[0] += len(parts)
        counts[1] += size
        if guard is not None:
            head = bytes(frame.buffer[:256])
            cut = head.find(b"\x00")
            if not guard.may_publish(user_id(frame), head[:cut] if cut >= 0 else head):
                continue
        for p in parts[:-1]:
            send(p, zmq.SNDMORE, copy=False)
        send(parts[-1], 0, copy=False)
        counts[6] += len(parts)
        counts[7] += size


def _subscriptions(xpub: zmq.Socket[bytes], xsub: zmq.Socket[bytes], guard: Guard, counts: list[int]) -> None:
    for _ in range(_BATCH):
        try:
            frame = xpub.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        data = frame.bytes
        counts[4] += 1
        counts[5] += len(data)
        if not data or data[0] not in (0, 1):
            continue  # not a subscription: an XPUB peer's message, which nobody forwards
        subscribe, prefix = data[0] == 1, data[1:]
        connection = _connection(frame)
        if connection < 0:
            # No connection behind it: libzmq's unsubscription for a subscriber that went away
            # (its subscriptions are gone from the XPUB already); the publishers still need it.
            # Or the forwarder's own inproc reader of statistics queries, which is let through.
            if not subscribe:
                xsub.send(data)
            elif prefix == _QUERY:
                xpub.setsockopt(zmq.SUBSCRIBE, prefix)
                xsub.send(data)
            continue
        option, flag = (zmq.SUBSCRIBE, b"\x01") if subscribe else (zmq.UNSUBSCRIBE, b"\x00")
        for granted in guard.subscription(user_id(frame), connection, prefix, subscribe):
            xpub.setsockopt(option, granted)  # for that connection only (XPUB_MANUAL: the last sender)
            xsub.send(flag + granted)
            counts[2] += 1
            counts[3] += 1 + len(granted)


_QUERY = FORWARDER_QUERY_TOPIC.encode()


def _connection(frame: zmq.Frame) -> int:
    """The file descriptor of the frame's connection (-1: none, e.g. it already closed)."""
    try:
        fd = frame.get(zmq.SRCFD)
    except zmq.ZMQError:
        return -1
    return fd if isinstance(fd, int) else -1


class PolicyGuard:
    """Enforces a :class:`~zmqbus.core.policy.Policy` (if any) and subscription limits; counts refusals.

    Thread-safe: the proxy thread asks, the forwarder's watch thread reports closed connections.
    """

    def __init__(self, policy: Policy | None, limits: SubscriptionLimits) -> None:
        self.policy = policy
        self.checks_publish = policy is not None and policy.restricts_publishing
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
            self.checks_publish = policy.restricts_publishing
            self._publish_cache = {}

    def _refuse(self, reason: str, text: str, *args: object) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self._faults.log(logging.WARNING, reason, text, *args)

    def may_publish(self, user: str, topic: bytes) -> bool:
        cache = self._publish_cache
        allowed = cache.get((user, topic))
        if allowed is None:
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
            granted = [prefix] if self.policy is None else self.policy.grant(user, prefix)
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
