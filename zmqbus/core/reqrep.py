"""Request bookkeeping, sans IO: the directory of service instances, calls in
flight with their retries, and the responder's reply cache.

Rules of this module:

* No sockets, no event loop, no sleeping: time is a number passed in (or read
  from the injected ``clock``), and every method returns what the IO shell
  must do next. That is what lets tests run retries and failovers exactly.
* An *instance* is one responder (one ROUTER endpoint) serving one or more
  services; it is alive while its announcements keep coming within
  ``interval * liveness`` seconds.
* A *call* is one request from this client; every try of it carries the same
  message id, so the responder can answer a duplicate from its cache.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .retry import RetryPolicy

__all__ = ["Instance", "Directory", "Call", "CallTracker", "ReplyCache", "Retry", "GiveUp"]


@dataclass(eq=False)
class Instance:
    """One responder as seen by callers."""

    instance_id: str
    endpoint: str
    services: set[str]
    interval: float
    liveness: int
    last_seen: float
    #: The routing id a caller addresses this instance by: fresh for every connection the caller makes (never
    #: the instance id), because libzmq aborts the process when a ROUTER connects with a routing id that a pipe
    #: of it still holds, and a disconnected pipe lingers (libzmq#1572): an instance that leaves and announces
    #: itself again at once would otherwise reuse its id.
    peer: bytes = b""
    outstanding: int = 0
    picked: int = 0  # tie-breaker: least recently picked first
    #: What it announces about itself for operators (pid, host, version...: PROTOCOL.md section 8.1).
    info: dict[str, Any] | None = None

    @property
    def expires_at(self) -> float:
        return self.last_seen + self.interval * self.liveness


class Directory:
    """Live instances per service, from presence announcements."""

    def __init__(self) -> None:
        self._instances: dict[str, Instance] = {}
        self._ticket = itertools.count(1)
        self._peers = itertools.count(1)

    def announce(
        self, instance_id: str, endpoint: str, services: Iterable[str], interval: float, liveness: int, now: float
    ) -> tuple[Instance, Instance | None]:
        """Record an announcement; return ``(instance, replaced)``.

        ``replaced`` is an older instance at the same endpoint (a restarted
        responder that reused the address): it is gone and its calls must
        fail over.
        """
        inst = self._instances.get(instance_id)
        replaced = None
        if inst is None:
            for other in self._instances.values():
                if other.endpoint == endpoint:
                    replaced = other
                    break
            if replaced is not None:
                del self._instances[replaced.instance_id]
            inst = Instance(instance_id, endpoint, set(services), interval, liveness, now, b"%d" % next(self._peers))
            self._instances[instance_id] = inst
        else:
            inst.services.update(services)
            inst.interval, inst.liveness, inst.last_seen = interval, liveness, now
        return inst, replaced

    def leave(self, instance_id: str) -> Instance | None:
        """An instance said goodbye; return it if it was known."""
        return self._instances.pop(instance_id, None)

    def expire(self, now: float) -> list[Instance]:
        """Remove and return the instances whose announcements stopped."""
        dead = [i for i in self._instances.values() if now > i.expires_at]
        for inst in dead:
            del self._instances[inst.instance_id]
        return dead

    def get(self, instance_id: str) -> Instance | None:
        return self._instances.get(instance_id)

    def instances(self) -> list[Instance]:
        return list(self._instances.values())

    def live(self, service: str) -> list[Instance]:
        return [i for i in self._instances.values() if service in i.services]

    def services(self) -> set[str]:
        """Every service a live instance announces."""
        return {s for i in self._instances.values() for s in i.services}

    def pick(self, service: str, avoid: Iterable[str] = (), only: str | None = None) -> Instance | None:
        """The live instance with the fewest outstanding calls, preferring ones not in ``avoid``
        (``only``: that instance or none). Ties go to the instance picked least recently (round robin).
        """
        best: Instance | None = None
        best_avoided = True
        for inst in self._instances.values():  # a plain loop: this runs once per request
            if service not in inst.services or (only is not None and inst.instance_id != only):
                continue
            avoided = inst.instance_id in avoid
            if (
                best is None
                or (best_avoided and not avoided)
                or (avoided == best_avoided and (inst.outstanding, inst.picked) < (best.outstanding, best.picked))
            ):
                best, best_avoided = inst, avoided
        if best is not None:
            best.picked = next(self._ticket)
        return best

    def __len__(self) -> int:
        return len(self._instances)


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop: ``reason`` is ``"deadline"`` or ``"attempts"``."""

    reason: str


class Call:
    """One request in flight from this client."""

    __slots__ = (
        "request_id",
        "service",
        "started",
        "deadline",
        "policy",
        "attempt",
        "instance_id",
        "attempt_deadline",
        "tried",
        "waiter",
        "settled",
        "only",
        "requeue",
        "refusals",
    )

    def __init__(self, request_id: str, service: str, started: float, deadline: float, policy: RetryPolicy) -> None:
        self.request_id = request_id
        self.service = service
        self.started = started
        self.deadline = deadline
        self.policy = policy
        self.attempt = 0
        self.instance_id: str | None = None
        self.attempt_deadline = 0.0
        self.tried: list[str] = []
        self.waiter: Any = None  # the IO shell's future; opaque here
        #: The shell's outcome of a reply that arrived while no try waited (between two tries, after the
        #: instance was lost): the call ends with it instead of trying again. Opaque here.
        self.settled: Any = None
        #: The one instance this call may go to (None: any instance of the service).
        self.only: str | None = None
        #: The try that failed was refused before it ran (``overloaded``): tried again without using an
        #: attempt (:meth:`CallTracker.next_step`); and how many of its tries were refused so.
        self.requeue = False
        self.refusals = 0

    def __repr__(self) -> str:
        return f"Call({self.request_id!r}, {self.service!r}, attempt={self.attempt}, on={self.instance_id!r})"


class CallTracker:
    """Calls in flight: which instance has each, when each try times out, what to do next."""

    def __init__(self, directory: Directory, rand: Callable[[], float]) -> None:
        self.directory = directory
        self.rand = rand
        self._calls: dict[str, Call] = {}
        self.late_replies = 0

    def begin(self, request_id: str, service: str, now: float, timeout: float, policy: RetryPolicy) -> Call:
        call = Call(request_id, service, now, now + timeout, policy)
        self._calls[request_id] = call
        return call

    def assign(self, call: Call, now: float) -> Instance | None:
        """Start the next try on the best instance (another one than before if possible)."""
        self._release(call)
        inst = self.directory.pick(call.service, call.tried, call.only)
        if inst is None:
            return None
        call.attempt += 1
        call.instance_id = inst.instance_id
        call.tried.append(inst.instance_id)
        inst.outstanding += 1
        timeout = call.policy.attempt_timeout
        call.attempt_deadline = min(call.deadline, now + timeout) if timeout else call.deadline
        return inst

    def get(self, request_id: str) -> Call | None:
        return self._calls.get(request_id)

    def calls(self) -> list[Call]:
        return list(self._calls.values())

    def busy(self, request_id: str, now: float) -> Call | None:
        """The responder says it is still working: extend the try, never past the deadline."""
        call = self._calls.get(request_id)
        if call is not None and call.policy.attempt_timeout:
            call.attempt_deadline = min(call.deadline, max(call.attempt_deadline, now + call.policy.attempt_timeout))
        return call

    def reply(self, request_id: str) -> Call | None:
        """A reply arrived: the call is done. ``None`` for a late duplicate (counted)."""
        call = self._calls.pop(request_id, None)
        if call is None:
            self.late_replies += 1
            return None
        self._release(call)
        return call

    def finish(self, call: Call) -> None:
        """The call ended without a reply (given up, cancelled)."""
        self._calls.pop(call.request_id, None)
        self._release(call)

    def expired_tries(self, now: float) -> list[Call]:
        """The calls whose current try has run out of time."""
        return [c for c in self._calls.values() if c.waiter is not None and now >= c.attempt_deadline]

    def on_instance(self, instance_id: str) -> list[Call]:
        """The calls whose current try is on ``instance_id`` (for failover when it is gone)."""
        return [c for c in self._calls.values() if c.instance_id == instance_id]

    def next_step(self, call: Call, now: float) -> Retry | GiveUp:
        """After a failed try: wait and retry, or give up (deadline or attempts spent).

        A try refused before it ran (:attr:`Call.requeue`: the instance was overloaded) uses no attempt: it
        is tried again after the policy's backoff for its number of refusals, until the deadline (as
        Finagle requeues a request its server rejected). Work that never started is always safe to send
        again, and a burst larger than the responders' queues then waits for room instead of failing."""
        self._release(call)
        if now >= call.deadline:
            return GiveUp("deadline")
        if call.requeue:
            call.requeue = False
            call.attempt -= 1
            call.refusals += 1
            delay = call.policy.delay(call.refusals, self.rand)
            return GiveUp("deadline") if now + delay >= call.deadline else Retry(delay)
        if call.attempt >= call.policy.attempts:
            return GiveUp("attempts")
        delay = call.policy.delay(call.attempt, self.rand)
        if now + delay >= call.deadline:
            return GiveUp("deadline")
        return Retry(delay)

    def _release(self, call: Call) -> None:
        if call.instance_id is not None:
            inst = self.directory.get(call.instance_id)
            if inst is not None and inst.outstanding > 0:
                inst.outstanding -= 1
            call.instance_id = None

    def __len__(self) -> int:
        return len(self._calls)


V = TypeVar("V")


class ReplyCache(Generic[V]):
    """A bounded map from request message id to its reply, oldest evicted first.

    A responder answers a duplicate request (a retry) from here instead of
    executing it again, for as long as the entry is held. Eviction is by
    insertion order: retries come soon after the original, so there is
    nothing to gain from reordering on every hit. An ``OrderedDict``, not a
    plain dict: deleting a plain dict's oldest key over and over leaves
    holes that every ``next(iter(d))`` walks past (measured at capacity:
    4.1 us per put, against 0.48 us).
    """

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._items: OrderedDict[str, V] = OrderedDict()

    def get(self, key: str) -> V | None:
        return self._items.get(key)

    def put(self, key: str, value: V) -> None:
        items = self._items
        items[key] = value
        if len(items) > self.capacity:
            items.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
