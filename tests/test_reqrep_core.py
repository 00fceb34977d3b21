"""Retry policy, directory, call bookkeeping and reply cache: pure code, exact times, no sleeps."""

from __future__ import annotations

import pytest

from zmqbus.core.reqrep import CallTracker, Directory, GiveUp, ReplyCache, Retry
from zmqbus.core.retry import NO_RETRY, RetryPolicy


def test_backoff_doubles_is_capped_and_jittered() -> None:
    p = RetryPolicy(backoff=0.1, multiplier=2.0, max_backoff=0.5, jitter=0.2)
    middle = lambda: 0.5  # noqa: E731 - jitter factor exactly 1
    assert [p.delay(n, middle) for n in (1, 2, 3, 4, 5)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    assert p.delay(1, lambda: 0.0) == pytest.approx(0.08)
    assert p.delay(1, lambda: 1.0) == pytest.approx(0.12)
    assert RetryPolicy(jitter=0).delay(3, lambda: 0.9) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "kwargs", [dict(attempts=0), dict(attempt_timeout=0), dict(multiplier=0.5), dict(jitter=1.5), dict(backoff=-1)]
)
def test_policy_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_directory_liveness_replacement_and_leave() -> None:
    d = Directory()
    a, replaced = d.announce("a", "tcp://h:1", ["svc"], interval=1.0, liveness=3, now=0.0)
    assert replaced is None and a.expires_at == 3.0
    d.announce("b", "tcp://h:2", ["svc", "other"], 1.0, 3, now=1.0)
    assert d.expire(2.9) == []
    d.announce("a", "tcp://h:1", ["svc"], 1.0, 3, now=2.5)  # heartbeat: a lives on
    assert [i.instance_id for i in d.expire(4.1)] == ["b"]  # b last seen at 1.0
    assert [i.instance_id for i in d.live("svc")] == ["a"]
    # a restarted responder reusing a's endpoint replaces it
    c, replaced = d.announce("c", "tcp://h:1", ["svc"], 1.0, 3, now=5.0)
    assert replaced is a and d.get("a") is None
    assert d.leave("c") is c and d.leave("c") is None and len(d) == 0


def test_pick_least_loaded_then_least_recently_picked() -> None:
    d = Directory()
    for name in "abc":
        d.announce(name, f"tcp://h/{name}", ["svc"], 1.0, 3, 0.0)
    picks = []
    for _ in range(6):
        inst = d.pick("svc")
        assert inst is not None
        picks.append(inst.instance_id)
    assert sorted(picks[:3]) == ["a", "b", "c"] and picks[3:] == picks[:3]  # round robin when idle
    d.get("a").outstanding = 5  # type: ignore[union-attr]
    d.get("b").outstanding = 1  # type: ignore[union-attr]
    assert d.pick("svc").instance_id == "c"  # type: ignore[union-attr]
    assert d.pick("svc", avoid=["c"]).instance_id == "b"  # type: ignore[union-attr]
    assert d.pick("svc", avoid=["a", "b", "c"]) is not None  # all tried: reuse the best
    assert d.pick("nothing") is None


POLICY = RetryPolicy(attempts=3, attempt_timeout=1.0, backoff=0.1, jitter=0.0)


def make(instances: int = 2, policy: RetryPolicy = POLICY) -> tuple[Directory, CallTracker]:
    d = Directory()
    for i in range(instances):
        d.announce(f"i{i}", f"tcp://h:{i}", ["svc"], 1.0, 3, 0.0)
    return d, CallTracker(d, rand=lambda: 0.5)


def test_a_call_fails_over_to_another_instance() -> None:
    _d, t = make()
    policy = RetryPolicy(attempts=3, attempt_timeout=1.0, backoff=0.1, jitter=0.0)
    call = t.begin("m-1", "svc", now=0.0, timeout=10.0, policy=policy)
    first = t.assign(call, now=0.0)
    assert first is not None and first.outstanding == 1 and call.attempt == 1 and call.attempt_deadline == 1.0
    assert t.on_instance(first.instance_id) == [call]
    step = t.next_step(call, now=1.0)  # the try timed out
    assert isinstance(step, Retry) and step.delay == pytest.approx(0.1)
    assert first.outstanding == 0
    second = t.assign(call, now=1.1)
    assert second is not None and second is not first and call.attempt == 2
    assert call.tried == [first.instance_id, second.instance_id]
    assert t.reply("m-1") is call and second.outstanding == 0 and len(t) == 0
    assert t.reply("m-1") is None and t.late_replies == 1  # the first instance answered late


def test_busy_extends_the_try_but_never_past_the_deadline() -> None:
    _d, t = make(1)
    call = t.begin("m", "svc", 0.0, timeout=2.5, policy=RetryPolicy(attempt_timeout=1.0))
    t.assign(call, 0.0)
    assert call.attempt_deadline == 1.0
    t.busy("m", now=0.9)
    assert call.attempt_deadline == pytest.approx(1.9)
    t.busy("m", now=1.8)
    assert call.attempt_deadline == 2.5  # capped by the request's deadline
    assert t.busy("unknown", 1.0) is None


def test_give_up_on_attempts_and_on_deadline() -> None:
    _d, t = make(1)
    call = t.begin("m", "svc", 0.0, timeout=100.0, policy=RetryPolicy(attempts=2, backoff=0.1, jitter=0))
    t.assign(call, 0.0)
    assert isinstance(t.next_step(call, 3.0), Retry)
    t.assign(call, 3.1)
    step = t.next_step(call, 6.1)
    assert isinstance(step, GiveUp) and step.reason == "attempts"
    call2 = t.begin("n", "svc", 0.0, timeout=1.0, policy=RetryPolicy(backoff=0.5, jitter=0))
    t.assign(call2, 0.0)
    step = t.next_step(call2, 0.6)  # 0.6 + 0.5 backoff would pass the 1.0 deadline
    assert isinstance(step, GiveUp) and step.reason == "deadline"
    call3 = t.begin("o", "svc", 0.0, timeout=1.0, policy=NO_RETRY)
    t.assign(call3, 0.0)
    assert isinstance(t.next_step(call3, 0.2), GiveUp)


def test_no_instance_and_finish_release() -> None:
    d, t = make(0)
    call = t.begin("m", "svc", 0.0, 5.0, RetryPolicy())
    assert t.assign(call, 0.0) is None
    d.announce("late", "tcp://h:9", ["svc"], 1.0, 3, 0.2)
    inst = t.assign(call, 0.2)
    assert inst is not None and inst.outstanding == 1
    t.finish(call)
    assert inst.outstanding == 0 and len(t) == 0


def test_reply_cache_is_bounded_oldest_first() -> None:
    cache: ReplyCache[str] = ReplyCache(capacity=3)
    for k in "abc":
        cache.put(k, k.upper())
    assert cache.get("a") == "A"
    cache.put("d", "D")
    assert "a" not in cache and "b" in cache and len(cache) == 3
    assert cache.get("zz") is None
    with pytest.raises(ValueError):
        ReplyCache(0)
