"""The pure parts of a client's receiving side: the subscription table and sequence numbers. No sockets."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings, strategies as st

from zmqbus.core.sequence import MAX_PLAUSIBLE_GAP, GapDetector, Sequencer
from zmqbus.core.subscriptions import SubscriptionTable


def handler(m: Any) -> None:
    pass


def other(m: Any) -> None:
    pass


# -- the subscription table -------------------------------------------------


def test_prefixes_are_reference_counted() -> None:
    t = SubscriptionTable()
    a, pa = t.add("c", "order.#", handler, is_async=False)
    b, pb = t.add("d", "order.#", other, is_async=False)
    _, pc = t.add("c", "order.start", handler, is_async=False)
    assert pa == b"order" and pb is None and pc == b"order.start\x00"
    assert sorted(t.prefixes) == [b"order", b"order.start\x00"]
    assert t.remove([a]) == []  # b still needs b"order"
    assert t.remove([b]) == [b"order"]
    assert t.prefixes == [b"order.start\x00"]


def test_match_keeps_the_order_of_subscription_and_is_cached_until_a_change() -> None:
    t = SubscriptionTable()
    first, _ = t.add("c", "a.#", handler, is_async=False)
    second, _ = t.add("c", "*.b", other, is_async=False)
    assert t.match("a.b") == (first, second)
    assert t.cache["a.b"] == (first, second)
    third, _ = t.add("c", "a.b", handler, is_async=False)
    assert "a.b" not in t.cache  # any change clears the cache
    assert t.match("a.b") == (first, second, third)
    t.remove([second])
    assert t.match("a.b") == (first, third)


def test_control_topics_reach_only_patterns_that_name_them() -> None:
    t = SubscriptionTable()
    everything, _ = t.add("c", "#", handler, is_async=False)
    control, _ = t.add("c", "_zmqbus.presence.#", handler, is_async=False)
    assert t.match("_zmqbus.presence.x") == (control,)
    assert t.match("order.start") == (everything,)
    assert t.receives_all == 1


def test_select_narrows_by_component_pattern_and_handler() -> None:
    t = SubscriptionTable()
    a, _ = t.add("c", "x.#", handler, is_async=False)
    b, _ = t.add("c", "x.#", other, is_async=False)
    c, _ = t.add("c", "y", handler, is_async=False)
    d, _ = t.add("e", "x.#", handler, is_async=False)
    assert t.select(b) == [b]
    assert t.select("c") == [a, b, c]
    assert t.select("c", "x.#") == [a, b]
    assert t.select("c", "x.#", other) == [b]
    assert t.select("nobody") == []
    assert d in t


def test_the_match_cache_is_bounded() -> None:
    t = SubscriptionTable(cache_limit=5)
    t.add("c", "#", handler, is_async=False)
    for i in range(50):
        t.match(f"t{i}")
        assert len(t.cache) <= 5


# -- sequence numbers -----------------------------------------------------------


def test_a_publisher_numbers_each_topic_from_one() -> None:
    s = Sequencer()
    assert [s.next(b"a\x00"), s.next(b"a\x00"), s.next(b"b\x00"), s.next(b"a\x00")] == [1, 2, 1, 3]


def test_a_publisher_starts_over_past_its_topic_limit() -> None:
    s = Sequencer(topics_limit=3)
    for head in (b"a", b"b", b"c"):
        s.next(head)
    assert s.next(b"a") == 2  # known topics go on
    assert s.next(b"d") == 1 and len(s) == 1  # a new one past the limit: every topic starts over
    assert s.next(b"a") == 1


def test_gaps_resets_and_unnumbered_messages() -> None:
    g = GapDetector()
    assert g.observe("p", "t", 1) is None  # first from a publisher: nothing to compare with
    assert g.observe("p", "t", 2) is None
    jump = g.observe("p", "t", 5)
    assert jump is not None and jump.missing == 2 and not jump.is_reset and g.gaps == 2
    back = g.observe("p", "t", 1)  # went back: a restarted publisher
    assert back is not None and back.is_reset and g.resets == 1 and g.gaps == 2
    far = g.observe("p", "t", 2 + MAX_PLAUSIBLE_GAP + 1)  # implausible: a reset, not loss
    assert far is not None and far.is_reset and g.resets == 2 and g.gaps == 2
    assert g.observe("q", "t", 0) is None and g.observe("q", "t", 0) is None  # 0: not numbered
    assert g.observe("p", "u", 7) is None  # first on a new topic


def test_forget_drops_only_the_topics_under_a_prefix() -> None:
    g = GapDetector()
    g.observe("p", "a.x", 1)
    g.observe("p", "b.x", 1)
    g.forget("a.")
    assert g.observe("p", "a.x", 9) is None  # forgotten: unsubscribed meanwhile, not loss
    assert g.observe("p", "b.x", 9) is not None and g.gaps == 7


def test_detector_memory_is_bounded() -> None:
    g = GapDetector(topics_limit=10, publishers_limit=4)
    for i in range(30):
        g.observe("p", f"t{i}", 1)
        assert g.tracked()[1] <= 10
    for i in range(20):
        g.observe(f"pub{i}", "t", 1)
        assert g.tracked()[0] <= 4
    assert g.gaps == 0 and g.resets == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("pq"), st.sampled_from("tu"), st.booleans()), max_size=80))
def test_gaps_equal_what_was_dropped(plan: list[tuple[str, str, bool]]) -> None:
    """Reference: a publisher numbers per topic; a random subset reaches the receiver in order.
    The detector's gaps equal the messages dropped between the first and last delivered of each
    (publisher, topic) stream, exactly."""
    sequencer = {p: Sequencer() for p in "pq"}
    g = GapDetector()
    delivered: dict[tuple[str, str], list[int]] = {}
    for pub, topic, arrives in plan:
        seq = sequencer[pub].next(topic.encode())
        if arrives:
            g.observe(pub, topic, seq)
            delivered.setdefault((pub, topic), []).append(seq)
    expected = sum(seqs[-1] - seqs[0] + 1 - len(seqs) for seqs in delivered.values())
    assert g.gaps == expected and g.resets == 0
