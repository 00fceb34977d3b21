"""The responder core (zmqbus.core.serving), sans IO: every decision exact, time passed in."""

from __future__ import annotations

import pytest

from zmqbus.core.serving import Abandon, Busy, Cached, Refuse, ResponderCore, Start


def core(max_concurrency: int = 2) -> ResponderCore[str]:
    c: ResponderCore[str] = ResponderCore("inst-1", max_concurrency=max_concurrency, cache_size=3)
    c.services.add("calc.add")
    return c


def test_start_queue_and_run_in_arrival_order() -> None:
    c = core(max_concurrency=1)
    assert c.request(b"A", "calc.add", "r1", None, "req1", now=0.0) == Start(b"A", "calc.add", "r1", "req1")
    assert c.request(b"B", "calc.add", "r2", None, "req2", now=0.1) is None  # queued
    assert c.request(b"C", "calc.add", "r3", None, "req3", now=0.2) is None
    assert c.load == 3
    assert c.done("r1", b"REP-1", now=1.0) == [Start(b"B", "calc.add", "r2", "req2")]
    assert c.done("r2", b"REP-2", now=2.0) == [Start(b"C", "calc.add", "r3", "req3")]
    assert list(c.done("r3", b"REP-3", now=3.0)) == [] and c.load == 0
    assert c.stats.executed == 3


def test_duplicates_are_never_run_twice() -> None:
    c = core()
    assert isinstance(c.request(b"A", "calc.add", "r1", None, "req", now=0.0), Start)
    assert c.request(b"A", "calc.add", "r1", None, "req", now=0.1) is None  # running: its reply is on the way
    c.done("r1", b"REP-1", now=0.5)
    assert c.request(b"A2", "calc.add", "r1", None, "req", now=0.6) == Cached(b"A2", b"REP-1")
    assert (c.stats.executed, c.stats.duplicates_in_flight, c.stats.duplicates_cached) == (1, 1, 1)
    # a retryable failure is not cached (frame None): its retry runs again
    assert isinstance(c.request(b"A", "calc.add", "r2", None, "req", now=1.0), Start)
    c.done("r2", None, now=1.1)
    assert isinstance(c.request(b"A", "calc.add", "r2", None, "req", now=1.2), Start)


def test_the_cache_is_bounded() -> None:
    c = core(max_concurrency=10)
    for i in range(4):
        c.request(b"A", "calc.add", f"r{i}", None, "req", now=0.0)
        c.done(f"r{i}", b"REP", now=0.0)
    assert c.request(b"A", "calc.add", "r0", None, "req", now=1.0) == Start(b"A", "calc.add", "r0", "req")
    assert c.request(b"A", "calc.add", "r3", None, "req", now=1.0) == Cached(b"A", b"REP")


def test_unknown_service_and_expired_deadlines_are_refused() -> None:
    c = core(max_concurrency=1)
    refused = c.request(b"A", "calc.mul", "r1", None, "req", now=0.0)
    assert isinstance(refused, Refuse) and refused.error.code == "unknown_service" and refused.error.retryable
    late = c.request(b"A", "calc.add", "r2", 9.0, "req", now=10.0)
    assert isinstance(late, Refuse) and late.error.code == "expired" and not late.error.retryable
    # expiring in the queue: never started
    assert isinstance(c.request(b"A", "calc.add", "r3", None, "req3", now=0.0), Start)
    assert c.request(b"B", "calc.add", "r4", 5.0, "req4", now=1.0) is None
    assert c.request(b"C", "calc.add", "r5", 50.0, "req5", now=1.0) is None
    out = c.done("r3", b"REP", now=6.0)
    assert [type(a) for a in out] == [Refuse, Start]
    assert out[0].request == "req4" and out[0].error.code == "expired"  # type: ignore[union-attr]
    assert out[1] == Start(b"C", "calc.add", "r5", "req5")
    assert c.stats.expired == 2


def test_busy_goes_to_requests_running_for_an_interval() -> None:
    c = core(max_concurrency=1)
    c.request(b"A", "calc.add", "r1", None, "req", now=0.0)
    c.request(b"B", "calc.add", "r2", None, "req", now=0.5)  # queued: not running, no BUSY
    assert c.busy(now=0.9, interval=1.0) == []
    assert c.busy(now=1.0, interval=1.0) == [Busy(b"A", "r1")]


def test_close_refuses_queued_retryably_and_interrupts_running_not_retryably() -> None:
    c = core(max_concurrency=1)
    c.request(b"A", "calc.add", "r1", None, "req1", now=0.0)
    c.request(b"B", "calc.add", "r2", None, "req2", now=0.0)
    queued = c.close()
    assert [(r.caller, r.error.code, r.error.retryable) for r in queued] == [(b"B", "shutting_down", True)]
    new = c.request(b"C", "calc.add", "r3", None, "req3", now=0.1)
    assert isinstance(new, Refuse) and new.error.code == "shutting_down" and new.error.retryable
    running = c.interrupt()
    assert [(r.caller, r.error.code, r.error.retryable) for r in running] == [(b"A", "shutting_down", False)]
    assert c.load == 0 and c.stats.interrupted == 1
    assert list(c.done("r1", b"REP", now=5.0)) == []  # a thread that finished after all: nothing more to do


def test_the_queue_is_bounded_in_count_and_bytes() -> None:
    """Past max_queue waiting requests, or max_queued_bytes of them, a request is refused retryably
    (overloaded) and never kept; room frees as the queue drains."""
    c: ResponderCore[str] = ResponderCore("inst-1", max_concurrency=1, max_queue=2, max_queued_bytes=100)
    c.services.add("s")
    assert isinstance(c.request(b"A", "s", "r1", None, "q", 0.0, size=90), Start)  # running: not queued
    assert c.request(b"A", "s", "r2", None, "q", 0.0, size=60) is None
    refused = c.request(b"A", "s", "r3", None, "q", 0.0, size=50)  # 60 + 50 bytes > 100
    assert isinstance(refused, Refuse) and refused.error.code == "overloaded" and refused.error.retryable
    assert c.request(b"A", "s", "r4", None, "q", 0.0, size=40) is None  # 100 bytes: fits
    count = c.request(b"A", "s", "r5", None, "q", 0.0, size=0)  # 2 waiting already
    assert isinstance(count, Refuse) and count.error.code == "overloaded"
    assert c.stats.overloaded == 2 and c.load == 3
    assert c.done("r1", b"R", 1.0) == [Start(b"A", "s", "r2", "q")]
    assert c.request(b"A", "s", "r6", None, "q", 1.0, size=60) is None  # r2's 60 bytes left the queue
    assert isinstance(c.request(b"A", "s", "r3", None, "q", 1.0, size=50), Refuse)  # 100 + 50 > 100


def test_running_work_past_its_deadline_is_abandoned_only_when_watched() -> None:
    """The shell watches what went on running (not what ended at once); the core says what is overdue."""
    c = core(max_concurrency=1)
    c.abandon.add("calc.add")
    c.abandon_grace = 0.0
    assert isinstance(c.request(b"A", "calc.add", "r1", 10.0, "req1", now=0.0), Start)
    assert c.request(b"B", "calc.add", "r2", 20.0, "req2", now=0.1) is None  # queued behind r1
    assert c.next_deadline() is None and c.overdue(now=50.0) == []  # nothing watched yet
    assert c.watch("r1") == 10.0 and c.watch("r2") is None  # r2 has not started
    assert c.next_deadline() == 10.0
    assert c.overdue(now=9.9) == []
    assert c.overdue(now=10.5) == [Abandon("r1")] and c.stats.abandoned == 1
    assert c.overdue(now=11.0) == []  # said once
    # the shell cancels r1 and ends it as done: r2 starts, and is watched in its turn
    assert c.done("r1", b"ERR-expired", now=10.6) == [Start(b"B", "calc.add", "r2", "req2")]
    assert c.watch("r2") == 20.0 and c.next_deadline() == 20.0
    c.done("r2", b"REP-2", now=12.0)  # ended in time: its deadline is forgotten
    assert c.next_deadline() is None and c.overdue(now=30.0) == [] and c.stats.abandoned == 1


def test_work_is_abandoned_a_grace_after_its_deadline_so_the_caller_times_out_first() -> None:
    c = core()
    c.abandon.add("calc.add")  # the default grace: 0.1 s
    c.request(b"A", "calc.add", "r1", 10.0, "x", now=0.0)
    assert c.watch("r1") == pytest.approx(10.1) and c.next_deadline() == pytest.approx(10.1)
    assert c.overdue(now=10.05) == [] and c.overdue(now=10.11) == [Abandon("r1")]


def test_services_that_do_not_abandon_and_requests_without_deadline_are_never_watched() -> None:
    c = core()
    c.services.add("calc.slow")
    c.abandon.add("calc.add")
    c.request(b"A", "calc.slow", "r1", 5.0, "x", now=0.0)
    c.request(b"A", "calc.add", "r2", None, "x", now=0.0)
    assert c.watch("r1") is None and c.watch("r2") is None and c.overdue(now=100.0) == []


def test_the_deadline_heap_stays_bounded_by_the_running_requests() -> None:
    c: ResponderCore[str] = ResponderCore("inst-1", max_concurrency=1000)
    c.services.add("calc.add")
    c.abandon.add("calc.add")
    for i in range(10_000):
        c.request(b"A", "calc.add", f"r{i}", 1000.0 + i, "x", now=0.0)
        c.watch(f"r{i}")
        c.done(f"r{i}", b"REP", now=0.0)  # each ends before its deadline
    assert len(c._deadlines) <= 2 * c.load + 64
    assert c.overdue(now=1e9) == [] and c.stats.abandoned == 0
    assert c.abandoned_error().code == "expired" and not c.abandoned_error().retryable
