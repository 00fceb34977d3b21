"""The guide's process context and state machine, sans IO.

Rules of this module:

* A :class:`ComponentContext` is one process (one workflow, one correlation
  id) inside one component. Its state changes only through
  :meth:`ComponentContext.transition`, which refuses transitions that
  :data:`ALLOWED` does not list, so every component moves through the same
  well-defined states.
* :class:`ContextStore` is the guide's ``active_processes``: contexts by
  correlation id, with the time-to-live cleanup the guide asks for.
* Time is passed in (wall-clock seconds); no sockets, no event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from .errors import ZmqbusError

__all__ = [
    "ComponentState",
    "ALLOWED",
    "InvalidTransition",
    "UnknownState",
    "coerce_state",
    "ComponentMetrics",
    "ComponentContext",
    "ContextStore",
]


class ComponentState(str, Enum):
    """States of a process in a component (values are what status messages carry)."""

    CREATED = "created"
    PROCESSING = "processing"
    WAITING = "waiting"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = {ComponentState.COMPLETED, ComponentState.FAILED, ComponentState.CANCELLED}

#: The transitions a context may make; terminal states allow none.
ALLOWED: dict[ComponentState, frozenset[ComponentState]] = {
    ComponentState.CREATED: frozenset({ComponentState.PROCESSING, ComponentState.FAILED, ComponentState.CANCELLED}),
    ComponentState.PROCESSING: frozenset(
        {
            ComponentState.WAITING,
            ComponentState.RETRYING,
            ComponentState.COMPLETED,
            ComponentState.FAILED,
            ComponentState.CANCELLED,
        }
    ),
    ComponentState.WAITING: frozenset(
        {
            ComponentState.PROCESSING,
            ComponentState.RETRYING,
            ComponentState.COMPLETED,
            ComponentState.FAILED,
            ComponentState.CANCELLED,
        }
    ),
    ComponentState.RETRYING: frozenset(
        {ComponentState.PROCESSING, ComponentState.WAITING, ComponentState.FAILED, ComponentState.CANCELLED}
    ),
    ComponentState.COMPLETED: frozenset(),
    ComponentState.FAILED: frozenset(),
    ComponentState.CANCELLED: frozenset(),
}


def coerce_state(state: object) -> ComponentState:
    """``state`` as a :class:`ComponentState`: one already, a member of another Enum (by its
    value, so the guide's own ``ComponentState`` works), or a string. Raises
    :class:`UnknownState` for a value zmqbus has no state for."""
    if isinstance(state, ComponentState):
        return state
    value = state.value if isinstance(state, Enum) else state
    try:
        return ComponentState(value)
    except ValueError:
        raise UnknownState(state) from None


class UnknownState(ZmqbusError, ValueError):
    """A state whose value is not one of :class:`ComponentState`'s."""

    def __init__(self, state: object) -> None:
        super().__init__(
            f"unknown state {state!r}: zmqbus's states are "
            f"{', '.join(s.value for s in ComponentState)}; give your Enum these values "
            "(or map yours onto them) so transitions can be checked"
        )


class InvalidTransition(ZmqbusError, ValueError):
    """A state change that :data:`ALLOWED` does not list."""

    def __init__(self, correlation_id: str, old: ComponentState, new: ComponentState) -> None:
        super().__init__(f"process {correlation_id}: {old.value} -> {new.value} is not an allowed transition")
        self.old, self.new = old, new


@dataclass
class ComponentMetrics:
    """Counters and durations of one component or one process."""

    handled: int = 0
    failed: int = 0
    retried: int = 0
    completed: int = 0
    expired: int = 0
    durations: list[float] = field(default_factory=list)

    def record_duration(self, seconds: float, keep: int = 1000) -> None:
        self.durations.append(seconds)
        if len(self.durations) > keep:
            del self.durations[: len(self.durations) - keep]

    def as_dict(self) -> dict[str, Any]:
        d = sorted(self.durations)
        return {
            "handled": self.handled,
            "failed": self.failed,
            "retried": self.retried,
            "completed": self.completed,
            "expired": self.expired,
            "duration_p50": d[len(d) // 2] if d else None,
            "duration_max": d[-1] if d else None,
        }


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ComponentContext:
    """State tracking for one process (the guide's ``ComponentContext``)."""

    request_id: str
    correlation_id: str
    state: ComponentState = ComponentState.CREATED
    metadata: dict[str, Any] = field(default_factory=dict)
    metrics: ComponentMetrics = field(default_factory=ComponentMetrics)
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)
    #: The message that began the process (``Manager.begin_process`` keeps it): what a failed workflow
    #: dead-letters, so that replaying it runs the workflow again.
    start: Any = field(default=None, repr=False, compare=False)

    def transition(self, new_state: ComponentState | Enum | str, now: datetime | None = None) -> ComponentState:
        """Move to ``new_state``; return the old one. Raises :class:`InvalidTransition`.

        ``new_state`` may be any Enum member or string with a :class:`ComponentState` value.
        """
        new_state = coerce_state(new_state)
        old = self.state
        if new_state not in ALLOWED[old]:
            raise InvalidTransition(self.correlation_id, old, new_state)
        self.state = new_state
        self.updated_at = now or _now()
        return old

    def status(self) -> dict[str, Any]:
        """What a status update carries about this process."""
        return {
            "request_id": self.request_id,
            "correlation_id": self.correlation_id,
            "state": self.state.value,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "metadata": self.metadata,
        }


class ContextStore(MutableMapping[str, ComponentContext]):
    """Active processes by correlation id, cleaned up after ``ttl`` seconds without an update.

    A real mapping (``MutableMapping[str, ComponentContext]``), so the guide's dict code works on it
    as written: ``store[cid] = ctx``, ``store[cid]``, ``del store[cid]``, ``cid in store``, ``len``,
    iteration, ``store == {}``; :meth:`create` and :meth:`expired` are what it adds.
    """

    def __init__(self, ttl: float = 300.0, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.clock = clock
        self._contexts: dict[str, ComponentContext] = {}

    def create(self, correlation_id: str, request_id: str, **metadata: Any) -> ComponentContext:
        """A new context in state CREATED (an existing one for the id is returned as is)."""
        ctx = self._contexts.get(correlation_id)
        if ctx is None:
            now = datetime.fromtimestamp(self.clock(), UTC)
            ctx = ComponentContext(request_id, correlation_id, metadata=dict(metadata), created_at=now, updated_at=now)
            self._contexts[correlation_id] = ctx
        return ctx

    def remove(self, correlation_id: str) -> ComponentContext | None:
        """Remove and return the context of ``correlation_id`` (None if there is none)."""
        return self._contexts.pop(correlation_id, None)

    def expired(self) -> list[ComponentContext]:
        """Remove and return contexts not updated for ``ttl`` seconds (stale processes)."""
        cutoff = self.clock() - self.ttl
        stale = [c for c in self._contexts.values() if c.updated_at.timestamp() < cutoff]
        for ctx in stale:
            del self._contexts[ctx.correlation_id]
        return stale

    def get(self, correlation_id: str, default: Any = None) -> Any:  # faster than Mapping's (no KeyError)
        return self._contexts.get(correlation_id, default)

    def __getitem__(self, correlation_id: str) -> ComponentContext:
        return self._contexts[correlation_id]

    def __setitem__(self, correlation_id: str, ctx: ComponentContext) -> None:
        if not isinstance(ctx, ComponentContext):
            raise TypeError(f"active_processes holds ComponentContext values, not {type(ctx).__name__}")
        self._contexts[correlation_id] = ctx

    def __delitem__(self, correlation_id: str) -> None:
        del self._contexts[correlation_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._contexts)

    def __len__(self) -> int:
        return len(self._contexts)

    def __contains__(self, correlation_id: object) -> bool:
        return correlation_id in self._contexts

    def __repr__(self) -> str:
        return f"ContextStore({self._contexts!r}, ttl={self.ttl:g})"
