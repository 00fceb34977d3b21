"""The responder's protocol decisions, sans IO (PROTOCOL.md sections 8.2 and 8.3).

:class:`ResponderCore` takes each request as plain values (caller routing
id, service, message id, deadline, the current time) and returns what the IO
shell must do: answer from the reply cache, refuse with an error, start the
handler, or nothing (a duplicate whose reply is on the way, or a request
queued behind ``max_concurrency``). When a handler ends, :meth:`done` caches
the reply and hands back the queued requests that may start now. Time is a
number passed in (wall-clock seconds, as deadlines are); nothing here sleeps,
sends or runs a handler.

Rules it keeps:

* a request whose id is in the reply cache is answered from it, never run again;
* one whose id is running or queued is ignored (its reply is on the way);
* a closing responder refuses new requests, retryably (another instance may serve them);
* an unknown service is refused retryably; a passed deadline is refused, never started,
  whether it passed on arrival or in the queue;
* at most ``max_concurrency`` requests run at once; the rest wait in arrival order, at most
  ``max_queue`` of them and ``max_queued_bytes`` in all: past either, a request is refused
  retryably (``overloaded``: another instance, or a later try, may take it);
* on close, queued requests are refused retryably (they never started) and running ones
  not retryably (their work may have been partly done);
* a running request of a service in :attr:`ResponderCore.abandon` whose deadline passes is
  abandoned (:meth:`ResponderCore.overdue`): its caller has given up, so the shell cancels the
  handler and answers ``expired``; the shell says which requests went on running
  (:meth:`ResponderCore.watch`), so a handler that ended at once costs nothing here.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from .control import ErrorReply
from .reqrep import ReplyCache

__all__ = ["ResponderCore", "ServingStatistics", "Start", "Refuse", "Cached", "Busy", "Abandon"]

R = TypeVar("R")  # the shell's request object, carried through untouched


@dataclass(frozen=True, slots=True)
class Start(Generic[R]):
    """Run the handler of ``service`` for ``request`` now."""

    caller: bytes
    service: str
    request_id: str
    request: R


@dataclass(frozen=True, slots=True)
class Refuse(Generic[R]):
    """Answer ``request`` with an ``ERR`` carrying ``error``; it does not run."""

    caller: bytes
    service: str
    request: R
    error: ErrorReply


@dataclass(frozen=True, slots=True)
class Cached:
    """Answer a retried request with the reply already sent for it."""

    caller: bytes
    frame: bytes


@dataclass(frozen=True, slots=True)
class Busy:
    """Tell ``caller`` that ``request_id`` is still running."""

    caller: bytes
    request_id: str


@dataclass(frozen=True, slots=True)
class Abandon:
    """The deadline of running request ``request_id`` passed: cancel its handler (answer ``expired``)."""

    request_id: str


@dataclass
class ServingStatistics:
    requests: int = 0
    executed: int = 0
    duplicates_cached: int = 0
    duplicates_in_flight: int = 0
    expired: int = 0
    refused: int = 0
    interrupted: int = 0
    overloaded: int = 0
    abandoned: int = 0
    unknown_service: int = 0
    shutting_down: int = 0  # refused (on arrival, or queued) while closing; interrupted ones are apart


@dataclass(slots=True)
class _Entry(Generic[R]):
    caller: bytes
    service: str
    request: R
    deadline: float | None
    started: float | None  # None while queued
    size: int = 0
    watched: bool = False  # its deadline is in the heap (the handler went on running)


class ResponderCore(Generic[R]):
    """The decisions of one responder instance (see the module docstring)."""

    def __init__(
        self,
        instance_id: str,
        *,
        max_concurrency: int = 100,
        cache_size: int = 10_000,
        max_queue: int = 1000,
        max_queued_bytes: int = 64 * 1024 * 1024,
        abandon_grace: float = 0.1,
    ) -> None:
        if max_concurrency < 1 or max_queue < 0 or max_queued_bytes < 0:
            raise ValueError("max_concurrency must be at least 1, and the queue limits at least 0")
        self.instance_id = instance_id
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.max_queued_bytes = max_queued_bytes
        self._queued_bytes = 0
        self.services: set[str] = set()
        #: Services whose running requests are abandoned when their deadline passes (the shell cancels them).
        self.abandon: set[str] = set()
        #: Seconds past a deadline before its work is abandoned: the caller's own timeout ends the call
        #: first (a ``RequestTimeout``, not this instance's ``expired`` answer).
        self.abandon_grace = abandon_grace
        self._deadlines: list[tuple[float, str]] = []  # (deadline, request id) of watched requests: a heap
        self.stats = ServingStatistics()
        self.closing = False
        self._cache: ReplyCache[bytes] = ReplyCache(cache_size)
        self._entries: dict[str, _Entry[R]] = {}  # running and queued, by request id
        self._queue: deque[str] = deque()
        self._running = 0

    @property
    def load(self) -> int:
        """Requests running or queued (what presence announces)."""
        return len(self._entries)

    def request(
        self,
        caller: bytes,
        service: str,
        request_id: str,
        deadline: float | None,
        request: R,
        now: float,
        size: int = 0,
    ) -> Start[R] | Refuse[R] | Cached | None:
        """A request arrived (``size``: its bytes on the wire): what to do with it (None: nothing now)."""
        self.stats.requests += 1
        cached = self._cache.get(request_id)
        if cached is not None:
            self.stats.duplicates_cached += 1
            return Cached(caller, cached)
        if request_id in self._entries:
            self.stats.duplicates_in_flight += 1
            return None
        if self.closing:
            self.stats.shutting_down += 1
            return self._refuse(
                caller,
                service,
                request,
                "shutting_down",
                "ShuttingDown",
                f"instance {self.instance_id} is shutting down",
                True,
            )
        if service not in self.services:
            self.stats.unknown_service += 1
            return self._refuse(
                caller,
                service,
                request,
                "unknown_service",
                "UnknownService",
                f"instance {self.instance_id} does not serve {service!r}",
                True,
            )
        if deadline is not None and now > deadline:
            return self._expired(caller, service, request)
        if self._running >= self.max_concurrency:
            if len(self._queue) >= self.max_queue or self._queued_bytes + size > self.max_queued_bytes:
                self.stats.overloaded += 1
                return self._refuse(
                    caller,
                    service,
                    request,
                    "overloaded",
                    "Overloaded",
                    f"instance {self.instance_id} has {len(self._queue)} request(s) "
                    f"({self._queued_bytes} bytes) waiting",
                    True,
                )
            self._entries[request_id] = _Entry(caller, service, request, deadline, None, size)
            self._queue.append(request_id)
            self._queued_bytes += size
            return None
        entry = _Entry(caller, service, request, deadline, None, size)
        self._entries[request_id] = entry
        return self._start(request_id, entry, now)

    def done(self, request_id: str, frame: bytes | None, now: float) -> Sequence[Start[R] | Refuse[R]]:
        """The handler of ``request_id`` ended; ``frame`` is its reply to cache (None: do not cache).

        Returns the queued requests to start now, and refusals for those whose
        deadline passed while they waited.
        """
        entry = self._entries.pop(request_id, None)
        if frame is not None:
            self._cache.put(request_id, frame)
        if entry is not None and entry.started is not None:
            self._running -= 1
        if not self._queue:
            return ()  # the common case: nothing waits (no list made per request)
        out: list[Start[R] | Refuse[R]] = []
        while self._queue and self._running < self.max_concurrency:
            queued_id = self._queue.popleft()
            queued = self._entries.get(queued_id)
            if queued is None:
                continue
            self._queued_bytes -= queued.size
            if queued.deadline is not None and now > queued.deadline:
                del self._entries[queued_id]
                out.append(self._expired(queued.caller, queued.service, queued.request))
            else:
                out.append(self._start(queued_id, queued, now))
        return out

    def watch(self, request_id: str) -> float | None:
        """The handler of ``request_id`` went on running (it did not end at once): watch its deadline
        if its service abandons overdue work. Returns the deadline watched (None: nothing to watch)."""
        entry = self._entries.get(request_id)
        if entry is None or entry.deadline is None or entry.started is None or entry.service not in self.abandon:
            return None
        entry.watched = True
        heap = self._deadlines
        heapq.heappush(heap, (entry.deadline, request_id))
        if len(heap) > 2 * len(self._entries) + 64:  # ended requests' deadlines: dropped, amortized O(1)
            self._deadlines = [(e.deadline, rid) for rid, e in self._entries.items() if e.watched]  # type: ignore[misc]
            heapq.heapify(self._deadlines)
        return entry.deadline + self.abandon_grace

    def next_deadline(self) -> float | None:
        """When the earliest watched request still running is overdue (None: none is watched)."""
        heap = self._deadlines
        while heap:
            deadline, rid = heap[0]
            entry = self._entries.get(rid)
            if entry is not None and entry.watched and entry.deadline == deadline:
                return deadline + self.abandon_grace
            heapq.heappop(heap)  # it ended
        return None

    def overdue(self, now: float) -> list[Abandon]:
        """The watched requests past their deadline (and :attr:`abandon_grace`): the shell cancels their
        handlers and ends each with :meth:`done` (answering ``expired``: :meth:`abandoned_error`)."""
        out = []
        heap = self._deadlines
        limit = now - self.abandon_grace
        while heap and heap[0][0] < limit:
            deadline, rid = heapq.heappop(heap)
            entry = self._entries.get(rid)
            if entry is not None and entry.watched and entry.deadline == deadline:
                entry.watched = False
                self.stats.abandoned += 1
                out.append(Abandon(rid))
        return out

    @staticmethod
    def abandoned_error() -> ErrorReply:
        """What the caller of an abandoned request is answered (it has given up; the work may be partly done)."""
        return ErrorReply(
            code="expired",
            type="DeadlineExpired",
            message="the request's deadline passed while it ran: the work was abandoned",
            retryable=False,
        )

    def busy(self, now: float, interval: float) -> list[Busy]:
        """The running requests that have run for at least ``interval`` seconds (PROTOCOL.md 8.2, BUSY)."""
        return [
            Busy(e.caller, rid)
            for rid, e in self._entries.items()
            if e.started is not None and now - e.started >= interval
        ]

    def close(self) -> list[Refuse[R]]:
        """Start closing: refuse new requests; return the refusals of the queued ones (retryable)."""
        self.closing = True
        out = []
        self._queued_bytes = 0
        while self._queue:
            entry = self._entries.pop(self._queue.popleft(), None)
            if entry is not None:
                self.stats.shutting_down += 1
                out.append(
                    self._refuse(
                        entry.caller,
                        entry.service,
                        entry.request,
                        "shutting_down",
                        "ShuttingDown",
                        f"instance {self.instance_id} is shutting down",
                        True,
                    )
                )
        return out

    def interrupt(self) -> list[Refuse[R]]:
        """The grace period is over: refusals for the requests still running (not retryable)."""
        out = []
        for entry in self._entries.values():
            self.stats.interrupted += 1
            out.append(
                self._refuse(
                    entry.caller,
                    entry.service,
                    entry.request,
                    "shutting_down",
                    "ShuttingDown",
                    f"instance {self.instance_id} shut down while running the request; it may have been partly done",
                    False,
                )
            )
        self._entries.clear()
        self._queue.clear()
        self._deadlines.clear()
        self._running = 0
        self._queued_bytes = 0
        return out

    def _start(self, request_id: str, entry: _Entry[R], now: float) -> Start[R]:
        entry.started = now
        self._running += 1
        self.stats.executed += 1
        return Start(entry.caller, entry.service, request_id, entry.request)

    def _expired(self, caller: bytes, service: str, request: R) -> Refuse[R]:
        self.stats.expired += 1
        return self._refuse(
            caller,
            service,
            request,
            "expired",
            "DeadlineExpired",
            "the request's deadline passed before it could start",
            False,
        )

    def _refuse(
        self, caller: bytes, service: str, request: R, code: str, error_type: str, message: str, retryable: bool
    ) -> Refuse[R]:
        self.stats.refused += 1
        return Refuse(
            caller, service, request, ErrorReply(code=code, type=error_type, message=message, retryable=retryable)
        )
