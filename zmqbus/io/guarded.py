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
  ``guard.subscription`` (key name, connection, prefix) granted it. The
  publishers get each granted prefix once, and its withdrawal when the last
  connection holding it gives it up or goes (``guard.upstream``).
* Subscription floods: libzmq keeps every subscription it reads until its
  connection goes, and reads them ahead of this loop. The loop tells the
  guard when it has read everything (``drained``) and cuts at once the
  connections the guard names (``pending_cuts``); the forwarder's watch
  thread estimates what is read but not yet seen (``sample_unread``).

Reads are batched with non-blocking receives, so the loop costs about a
microsecond or two per message on top of the C proxy (measured in
benchmarks/README.md).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import zmq

from ..core.control import FORWARDER_QUERY_TOPIC
from ..core.guard import CONTROL_HEAD, Guard, publication_topic
from .sockets import user_id

__all__ = ["run_guarded_proxy"]

_BATCH = 1000
_IDLE_MS = 100  # an idle loop still looks, this often, for withdrawals to send the publishers
# Positions in the eight STATISTICS counters, libzmq's order (io.proxy.ProxyCounters names them).
_FRONT_IN_FRAMES, _FRONT_IN_BYTES, _FRONT_OUT_FRAMES, _FRONT_OUT_BYTES = 0, 1, 2, 3
_BACK_IN_FRAMES, _BACK_IN_BYTES, _BACK_OUT_FRAMES, _BACK_OUT_BYTES = 4, 5, 6, 7


def run_guarded_proxy(
    xsub: zmq.Socket[bytes],
    xpub: zmq.Socket[bytes],
    control: zmq.Socket[bytes],
    guard: Guard,
    cut: Callable[[list[int]], object],
    counts: list[int],
) -> None:
    """Forward until ``TERMINATE`` arrives on ``control`` (or the context ends). ``cut`` shuts down the
    connections the guard names (a subscription flood), as soon as it names them. ``counts`` (eight
    zeros) are the counters this loop keeps, readable from any thread at any time (``STATISTICS`` is
    answered only between batches)."""
    xpub.setsockopt(zmq.XPUB_MANUAL, 1)
    poller = zmq.Poller()
    for sock in (xsub, xpub, control):
        poller.register(sock, zmq.POLLIN)
    while True:
        if guard.upstream:  # withdrawn for connections that went (the watch thread saw them go)
            _send_upstream(xsub, guard, counts)
        for sock, _ in poller.poll(_IDLE_MS):
            if sock is control:
                command = control.recv()
                if command == b"TERMINATE":
                    return
                if command == b"STATISTICS":
                    control.send_multipart([struct.pack("=Q", v) for v in counts])
            elif sock is xsub:
                # read per batch: a reloaded policy may start (or stop) restricting publishing
                _publications(xsub, xpub, guard, counts)
            else:
                _subscriptions(xpub, xsub, guard, counts, cut)


def _publications(xsub: zmq.Socket[bytes], xpub: zmq.Socket[bytes], guard: Guard, counts: list[int]) -> None:
    recv, send = xsub.recv, xpub.send
    checks, control = guard.checks_publish, guard.checks_control  # per batch: a reload may change them
    for _ in range(_BATCH):
        try:
            frame = recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        parts = [frame]
        while parts[-1].more:
            parts.append(recv(copy=False))
        size = sum(len(p) for p in parts)
        counts[_FRONT_IN_FRAMES] += len(parts)
        counts[_FRONT_IN_BYTES] += size
        if checks or control:
            data = frame.bytes  # read once, for both checks (a frame keeps its bytes: no second copy)
            if checks and not guard.may_publish(user_id(frame), publication_topic(data[:512])):
                continue
            if control and data.startswith(CONTROL_HEAD):  # a control frame: its own rules
                if not guard.control_ok(user_id(frame), data):
                    continue
            elif control and data[:1] == b"\x01" and publication_topic(data[:512]).startswith(CONTROL_HEAD):
                guard.control_ok(user_id(frame), b"\x01")  # a tail copy of a control topic: never legitimate
                continue
        for p in parts[:-1]:
            send(p, zmq.SNDMORE, copy=False)
        send(parts[-1], 0, copy=False)
        counts[_BACK_OUT_FRAMES] += len(parts)
        counts[_BACK_OUT_BYTES] += size


def _subscriptions(
    xpub: zmq.Socket[bytes],
    xsub: zmq.Socket[bytes],
    guard: Guard,
    counts: list[int],
    cut: Callable[[list[int]], object],
) -> None:
    guard.behind = True  # until every subscription libzmq has read (and keeps) is read here
    for _ in range(_BATCH):
        try:
            frame = xpub.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            guard.behind = False  # everything libzmq read (and keeps) has been seen and accounted
            guard.drained()
            return
        data = frame.bytes
        counts[_BACK_IN_FRAMES] += 1
        counts[_BACK_IN_BYTES] += len(data)
        if not data or data[0] not in (0, 1):
            continue  # not a subscription: an XPUB peer's message, which nobody forwards
        subscribe, prefix = data[0] == 1, data[1:]
        connection = _connection(frame)
        if connection < 0:
            # No connection behind it: libzmq's unsubscription for a subscriber that went away (its
            # subscriptions are gone from the XPUB already; the guard withdraws what it granted from the
            # publishers, below). Or the forwarder's own inproc reader of statistics queries, let through.
            if subscribe and prefix == _QUERY:
                xpub.setsockopt(zmq.SUBSCRIBE, prefix)
                xsub.send(data)
            continue
        option = zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE
        for granted in guard.subscription(user_id(frame), connection, prefix, subscribe):
            xpub.setsockopt(option, granted)  # for that connection only (XPUB_MANUAL: the last sender)
        if guard.upstream:
            _send_upstream(xsub, guard, counts)
        if guard.pending_cuts:  # at once: every subscription it still sends costs memory until it goes
            cut(guard.take_cuts())


_QUERY = FORWARDER_QUERY_TOPIC.encode()


def _send_upstream(xsub: zmq.Socket[bytes], guard: Guard, counts: list[int]) -> None:
    """Send the publishers what the guard says: each granted prefix once, withdrawn with its last holder."""
    for frame in guard.take_upstream():
        xsub.send(frame)
        counts[_FRONT_OUT_FRAMES] += 1
        counts[_FRONT_OUT_BYTES] += len(frame)


def _connection(frame: zmq.Frame) -> int:
    """The file descriptor of the frame's connection (-1: none, e.g. it already closed)."""
    try:
        fd = frame.get(zmq.SRCFD)
    except zmq.ZMQError:
        return -1
    return fd if isinstance(fd, int) else -1
