"""Process contexts and states: pure, exact times."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from zmqbus.core.workflow import (
    ALLOWED,
    ComponentContext,
    ComponentMetrics,
    ComponentState,
    ContextStore,
    InvalidTransition,
)


def test_transitions_are_validated() -> None:
    ctx = ComponentContext("r-1", "c-1")
    assert ctx.state is ComponentState.CREATED
    assert ctx.transition(ComponentState.PROCESSING) is ComponentState.CREATED
    ctx.transition(ComponentState.WAITING)
    ctx.transition(ComponentState.COMPLETED)
    with pytest.raises(InvalidTransition, match="completed -> processing"):
        ctx.transition(ComponentState.PROCESSING)
    with pytest.raises(InvalidTransition):
        ComponentContext("r", "c").transition(ComponentState.COMPLETED)  # never started
    assert all(not ALLOWED[s] for s in ComponentState if s.terminal)


def test_store_ttl_cleanup_with_an_injected_clock() -> None:
    now = [1000.0]
    store = ContextStore(ttl=10.0, clock=lambda: now[0])
    a = store.create("a", "r-a", document_id="d1")
    assert store.create("a", "other") is a and a.metadata == {"document_id": "d1"}
    store.create("b", "r-b")
    now[0] = 1005.0
    b = store.get("b")
    assert b is not None
    b.transition(ComponentState.PROCESSING, datetime.fromtimestamp(now[0], UTC))
    now[0] = 1012.0
    assert [c.correlation_id for c in store.expired()] == ["a"]  # b was updated at 1005
    assert "a" not in store and "b" in store and len(store) == 1
    assert store.remove("b") is b and store.remove("b") is None


def test_metrics_summary() -> None:
    m = ComponentMetrics()
    for d in (0.3, 0.1, 0.2):
        m.record_duration(d)
    m.handled = 3
    assert m.as_dict()["duration_p50"] == 0.2 and m.as_dict()["duration_max"] == 0.3
    for _ in range(2000):
        m.record_duration(1.0, keep=100)
    assert len(m.durations) == 100
