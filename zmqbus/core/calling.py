"""The caller's protocol decisions, sans IO (PROTOCOL.md sections 8.1 to 8.3).

:class:`CallerCore` keeps the directory of live instances and the calls in
flight (:mod:`.reqrep`) and turns every event into typed actions for the IO
shell: a presence announcement, a reply, a BUSY, the passing of time. The
shell connects and disconnects what it is told, wakes the calls it is told
to wake (to retry elsewhere, or with their reply), and sets one timer for
:meth:`CallerCore.next_deadline` instead of polling. Time is one monotonic
clock, passed in.

Rules it keeps:

* an instance is alive until ``interval * liveness`` passes without an
  announcement, until it says it is leaving, or until another instance
  announces its endpoint (a restart on the same address); the calls on it
  are then retried elsewhere at once;
* a try that runs past its attempt deadline is retried; a BUSY pushes that
  deadline back (never past the call's deadline);
* a retryable error reply retries the call elsewhere; any other reply ends it;
  a reply for a call no longer waiting is a late duplicate, counted and dropped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from .control import ErrorReply, Presence
from .reqrep import Call, CallTracker, Directory, GiveUp, Instance, Retry
from .retry import RetryPolicy

__all__ = ["CallerCore", "Connect", "Disconnect", "Wake", "Complete"]


@dataclass(frozen=True, slots=True)
class Connect:
    """Connect to a new instance, addressing it by ``routing_id`` (fresh for each connection: never reused)."""

    endpoint: str
    routing_id: bytes
    server_key: str | None = None  # the instance's CURVE public key, on a secure bus


@dataclass(frozen=True, slots=True)
class Disconnect:
    """An instance is gone: drop its connection."""

    endpoint: str


@dataclass(frozen=True, slots=True)
class Wake:
    """The current try of ``call`` failed (``reason``): the call decides, with :meth:`CallerCore.after_failure`."""

    call: Call
    reason: str


@dataclass(frozen=True, slots=True)
class Complete:
    """``call`` got its reply (``error`` set for an ``ERR``): it ends."""

    call: Call
    error: ErrorReply | None


class CallerCore:
    """The decisions of one caller (see the module docstring)."""

    def __init__(self, rand: Callable[[], float] = random.random) -> None:
        self.directory = Directory()
        self.tracker = CallTracker(self.directory, rand)
        self.retries = 0
        self.failovers = 0
        self.requeues = 0  # tries refused before they ran (overloaded), tried again without using an attempt

    # -- calls ---------------------------------------------------------------

    def begin(self, request_id: str, service: str, now: float, timeout: float, policy: RetryPolicy) -> Call:
        return self.tracker.begin(request_id, service, now, timeout, policy)

    def assign(self, call: Call, now: float) -> Instance | None:
        """Start the next try on the best live instance; None: none is known (discover one)."""
        inst = self.tracker.assign(call, now)
        if inst is not None and call.attempt > 1:
            self.retries += 1
        return inst

    def after_failure(self, call: Call, now: float) -> Retry | GiveUp:
        """A try failed: retry after a delay, or give up (deadline or attempts spent)."""
        return self.tracker.next_step(call, now)

    def finish(self, call: Call) -> None:
        """The call ended, however it ended."""
        self.tracker.finish(call)

    # -- events ----------------------------------------------------------------

    def presence(self, p: Presence, now: float) -> list[Connect | Disconnect | Wake]:
        """An announcement arrived."""
        if p.leaving:
            gone = self.directory.leave(p.instance)
            return [] if gone is None else self._lost(gone, "left")
        known = self.directory.get(p.instance) is not None
        inst, replaced = self.directory.announce(p.instance, p.endpoint, p.services, p.interval, p.liveness, now)
        inst.info = p.info
        out: list[Connect | Disconnect | Wake] = [] if replaced is None else self._lost(replaced, "replaced")
        if not known:
            out.append(Connect(p.endpoint, inst.peer, p.key))
        return out

    def busy(self, request_id: str, now: float) -> None:
        """The responder is still working on ``request_id``: its try's deadline moves back."""
        self.tracker.busy(request_id, now)

    def replied(self, request_id: str) -> Call | None:
        """A reply that is not an error arrived for ``request_id``: the call it ends (None: a late duplicate,
        counted). :meth:`reply` with no error, without the :class:`Complete` (the hot path)."""
        return self.tracker.reply(request_id)

    def reply(self, request_id: str, error: ErrorReply | None) -> Wake | Complete | None:
        """A reply (``error`` set for an ``ERR``) arrived for ``request_id``."""
        if error is not None and error.retryable:
            call = self.tracker.get(request_id)  # the call goes on, on another instance
            if call is None:
                return None
            if error.code == "overloaded" and call.waiter is not None:  # this try was refused before it ran
                call.requeue = True  # tried again without using an attempt (CallTracker.next_step)
                self.requeues += 1
            return Wake(call, f"retryable error: {error.message}")
        call = self.tracker.reply(request_id)
        return None if call is None else Complete(call, error)

    def tick(self, now: float) -> list[Connect | Disconnect | Wake]:
        """Time passed: instances that went silent, tries that ran out of time (never a Connect)."""
        out: list[Connect | Disconnect | Wake] = []
        for inst in self.directory.expire(now):
            out.extend(self._lost(inst, "silent"))
        for call in self.tracker.expired_tries(now):
            call.attempt_deadline = math.inf  # this try is over: reported once, never again
            out.append(Wake(call, "attempt timed out"))
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do (None: nothing is pending)."""
        times = [i.expires_at for i in self.directory.instances()]
        times.extend(c.attempt_deadline for c in self.tracker.calls() if c.waiter is not None)
        return min(times, default=None)

    def _lost(self, inst: Instance, why: str) -> list[Connect | Disconnect | Wake]:
        out: list[Connect | Disconnect | Wake] = [Disconnect(inst.endpoint)]
        for call in self.tracker.on_instance(inst.instance_id):
            self.failovers += 1
            out.append(Wake(call, f"instance {why}"))
        return out
