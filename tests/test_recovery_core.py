"""Recovery (core.recovery) and publisher history (core.history): pure code, a fake clock, a reference model.

The property test plays a publisher that numbered 1..N, a lossy, duplicating, reordering live path,
a history that has lost its oldest numbers, fetch replies that come late or never, and heartbeats;
whatever happens, the subscriber delivers each number at most once and in order, and every number
after its first is either delivered or counted lost, exactly.
"""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from zmqbus.core.history import HistoryCache
from zmqbus.core.recovery import Fetch, Recovery

P, T = "pub-1", "work.item"


def test_a_gap_holds_later_messages_until_the_fetch_fills_it() -> None:
    r: Recovery[int] = Recovery(holdback=1.0)
    assert r.observe(P, T, 1, 1, 0.0) == ([1], None)
    out, fetch = r.observe(P, T, 4, 4, 0.0)
    assert out == [] and fetch == Fetch(P, T, 2, 3, serial=1)
    assert r.observe(P, T, 5, 5, 0.1) == ([], None)  # held too; one fetch at a time
    assert r.recovered(fetch, [(2, 2), (3, 3)], oldest=1, newest=5, now=0.2) == ([2, 3, 4, 5], None)
    assert (r.stats.recovered, r.stats.lost, r.stats.held, r.stats.duplicates) == (2, 0, 0, 0)
    assert r.observe(P, T, 3, 3, 0.3) == ([], None) and r.stats.duplicates == 1  # came live after all


def test_what_the_publisher_no_longer_holds_is_lost_exactly() -> None:
    r: Recovery[int] = Recovery()
    r.observe(P, T, 1, 1, 0.0)
    _, fetch = r.observe(P, T, 10, 10, 0.0)
    assert fetch == Fetch(P, T, 2, 9, serial=1)
    out, again = r.recovered(fetch, [(6, 6), (7, 7), (8, 8), (9, 9)], oldest=6, newest=10, now=0.1)
    assert out == [6, 7, 8, 9, 10] and again is None
    assert r.stats.lost == 4  # 2..5 were evicted


def test_holdback_expires_and_a_failed_fetch_counts_the_gap_lost() -> None:
    r: Recovery[int] = Recovery(holdback=0.5)
    r.observe(P, T, 1, 1, 0.0)
    r.observe(P, T, 3, 3, 0.0)
    assert r.next_deadline() == 0.5
    assert r.expire(0.4) == [] and r.expire(0.5) == [3]
    assert r.stats.lost == 1 and r.next_deadline() is None
    _, fetch = r.observe(P, T, 6, 6, 1.0)
    assert fetch is not None and r.failed(fetch) == [6] and r.stats.lost == 3
    assert r.failed(fetch) == []  # reported once


def test_a_heartbeat_reveals_the_last_messages_and_a_stream_never_seen() -> None:
    r: Recovery[int] = Recovery()
    r.observe(P, T, 1, 1, 0.0)
    fetch = r.announced(P, T, 3, 1.0)
    assert fetch == Fetch(P, T, 2, 3, serial=1)  # 2 and 3 were lost with nothing after them
    assert r.recovered(fetch, [(2, 2), (3, 3)], oldest=1, newest=3, now=1.1) == ([2, 3], None)
    # a stream this subscriber never saw: fetched from the time its subscription went live
    assert r.announced("pub-2", T, 2, 1.2) is None  # not asked for: nothing is fetched
    fetch = r.announced("pub-2", T, 2, 1.2, since=0.5)
    assert fetch == Fetch("pub-2", T, 1, 2, since=0.5, serial=1)
    assert r.observe("pub-2", T, 3, 3, 1.3) == ([], None)  # held until the baseline comes
    assert r.recovered(fetch, [(1, 1), (2, 2)], oldest=1, newest=2, now=1.4) == ([1, 2, 3], None)


def test_a_resumed_stream_fetches_what_came_while_the_subscriber_was_down() -> None:
    r: Recovery[int] = Recovery()
    r.resume(P, T, 40)
    out, fetch = r.observe(P, T, 77, 77, 0.0)
    assert out == [] and fetch == Fetch(P, T, 41, 76, serial=1)
    items = [(n, n) for n in range(41, 77)]
    assert r.recovered(fetch, items, oldest=1, newest=77, now=0.1)[0] == list(range(41, 78))
    assert r.positions() == {(P, T): 77}


def test_past_max_held_the_oldest_gap_is_lost_and_delivery_goes_on() -> None:
    r: Recovery[int] = Recovery(max_held=2)
    r.observe(P, T, 1, 1, 0.0)
    _, fetch = r.observe(P, T, 3, 3, 0.0)
    r.observe(P, T, 5, 5, 0.0)
    out, _ = r.observe(P, T, 6, 6, 0.0)  # a third held message: gap 2 is given up
    assert out == [3] and r.stats.lost == 1 and r.stats.held == 2
    assert fetch is not None and r.recovered(fetch, [(2, 2)], oldest=1, newest=6, now=0.1)[0] == []  # too late


def test_a_restarted_publisher_numbering_is_no_gap() -> None:
    r: Recovery[int] = Recovery()
    r.observe(P, T, 900, 900, 0.0)
    r.observe(P, T, 902, 902, 0.0)  # a gap: 902 held
    out, fetch = r.observe(P, T, 900 + (1 << 25), 0, 0.1)
    assert out == [902, 0] and fetch is None and r.stats.lost == 0


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 60),
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.6),
    evicted_below=st.integers(1, 30),
    fail_rate=st.floats(0.0, 0.4),
)
def test_each_number_at_most_once_in_order_and_the_rest_counted_lost(
    n: int, seed: int, loss: float, evicted_below: int, fail_rate: float
) -> None:
    rnd = random.Random(seed)
    r: Recovery[int] = Recovery(holdback=5.0, max_held=1000)
    live = [s for s in range(1, n + 1) if rnd.random() >= loss]
    live += [s for s in live if rnd.random() < 0.1]  # duplicates (a second forwarder)
    for i in range(len(live) - 1):  # local reordering
        if rnd.random() < 0.2:
            live[i], live[i + 1] = live[i + 1], live[i]
    delivered: list[int] = []
    pending: list[Fetch] = []
    now = 0.0
    failed = False

    def answer(fetch: Fetch) -> None:
        nonlocal failed
        if rnd.random() < fail_rate:
            failed = True
            delivered.extend(r.failed(fetch))
            return
        lo = max(fetch.first, evicted_below)
        items = [(s, s) for s in range(lo, min(fetch.last, n) + 1)]
        out, more = r.recovered(fetch, items, oldest=evicted_below, newest=n, now=now)
        delivered.extend(out)
        if more is not None:
            pending.append(more)

    for seq in live:
        now += 0.01
        out, fetch = r.observe(P, T, seq, seq, now)
        delivered.extend(out)
        if fetch is not None:
            pending.append(fetch)
        if pending and rnd.random() < 0.3:
            answer(pending.pop(0))
    if live:
        fetch = r.announced(P, T, n, now)  # the heartbeat at the end
        if fetch is not None:
            pending.append(fetch)
    while pending:
        answer(pending.pop(0))
    delivered.extend(r.expire(now + 100.0))

    assert delivered == sorted(set(delivered)), "in order, each number once"
    if not live:
        assert delivered == [] and r.stats.lost == 0
        return
    first = delivered[0]
    assert first == live[0] or first in live  # the baseline is the first number seen live
    assert len(delivered) + r.stats.lost == n - first + 1, "every number after the first: delivered or lost"
    assert delivered[-1] == n or r.stats.lost > 0
    if not failed and evicted_below <= first + 1:
        assert r.stats.lost == 0 and delivered == list(range(first, n + 1))
    assert r.stats.held == 0


def test_history_holds_a_contiguous_range_per_topic_within_its_bounds() -> None:
    h = HistoryCache(max_messages=5, max_bytes=1000, max_age=10.0)
    for seq in range(1, 8):
        h.record(b"a\0", seq, b"a\0" + bytes([seq]) * 10, now=float(seq))
    assert len(h) == 5 and h.bytes == 5 * 12
    got = h.fetch(b"a\0", 1, 4, now=8.0)
    assert (got.first, got.oldest, got.last, len(got.frames)) == (3, 3, 7, 2)
    assert h.fetch(b"a\0", 5, None, now=8.0, limit=2).frames == (b"a\0" + bytes([5]) * 10, b"a\0" + bytes([6]) * 10)
    assert h.since(b"a\0", 5.5, now=8.0) == 6
    assert h.latest(now=8.0) == {b"a\0": 7}
    assert h.latest(now=16.5) == {b"a\0": 7} and h.latest(now=17.5) == {}  # aged out
    assert len(h) == 0 and h.bytes == 0


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from([b"a\0", b"b\0", b"c\0"]), st.integers(1, 300)), max_size=200),
    max_messages=st.integers(1, 50),
    max_bytes=st.integers(1, 5000),
)
def test_history_never_passes_its_bounds_and_serves_exactly_what_it_holds(
    ops: list[tuple[bytes, int]], max_messages: int, max_bytes: int
) -> None:
    h = HistoryCache(max_messages=max_messages, max_bytes=max_bytes, max_age=1e9)
    nxt: dict[bytes, int] = {}
    for head, size in ops:
        nxt[head] = nxt.get(head, 0) + 1
        h.record(head, nxt[head], head + b"x" * size, now=0.0)
        assert (len(h) <= max_messages and h.bytes <= max(max_bytes, 0)) or len(h) == 0
    for head, last in nxt.items():
        got = h.fetch(head, 1, None, now=0.0, limit=10_000)
        if got.frames:
            assert got.last == last and got.first == got.oldest
            assert len(got.frames) == last - got.oldest + 1
    assert sum(len(f) for head in nxt for f in h.fetch(head, 1, None, 0.0, limit=10_000).frames) == h.bytes


def test_a_late_joiner_starts_with_the_last_n_messages_still_held() -> None:
    r: Recovery[int] = Recovery()
    r.backfill = lambda topic: 5 if topic == T else 0
    out, fetch = r.observe(P, T, 50, 50, 0.0)  # the first message seen: the 5 before it are fetched first
    assert out == [] and fetch == Fetch(P, T, 45, 49, serial=1)
    assert r.recovered(fetch, [(n, n) for n in range(47, 50)], oldest=47, newest=50, now=0.1)[0] == [47, 48, 49, 50]
    assert r.stats.lost == 0  # 45 and 46 were gone: history asked for, never promised
    # announced before any live message: the last 5 of the stream
    fetch2 = r.announced("pub-2", T, 3, 0.2)
    assert fetch2 == Fetch("pub-2", T, 1, 3, serial=1)
    assert r.recovered(fetch2, [(1, 1), (2, 2), (3, 3)], oldest=1, newest=3, now=0.3)[0] == [1, 2, 3]
    assert r.announced("pub-3", "other", 9, 0.4) is None  # no backfill asked there


def test_a_history_fetch_is_bounded_in_bytes_but_returns_at_least_one_frame() -> None:
    h = HistoryCache()
    for seq in range(1, 11):
        h.record(b"a\0", seq, b"a\0" + b"x" * 98, now=0.0)  # 100 bytes each
    assert len(h.fetch(b"a\0", 1, None, now=0.0, max_bytes=350).frames) == 3
    assert len(h.fetch(b"a\0", 1, None, now=0.0, max_bytes=10).frames) == 1  # one, even if larger
