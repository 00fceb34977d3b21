"""The redundant bus's receiving rule (pure): each (publisher, topic, sequence) delivered once, loss only
when no forwarder brought it. A property test against a reference, and the edge cases by hand."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from zmqbus.core.sequence import DUPLICATE, RedundantGapDetector


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=2, max_size=200))
def test_each_number_is_delivered_once_and_only_what_no_path_brought_is_lost(
    draws: list[tuple[bool, bool, bool]],
) -> None:
    """Number s reaches path A if draws[s-1][0], path B if [1]; [2] picks which path's next copy
    arrives next, so the two paths interleave arbitrarily, each in its own order."""
    numbers = range(1, len(draws) + 1)
    path_a = [s for s in numbers if draws[s - 1][0]]
    path_b = [s for s in numbers if draws[s - 1][1]]
    arrivals, i, j, k = [], 0, 0, 0
    while i < len(path_a) or j < len(path_b):
        pick_a = draws[k % len(draws)][2]
        k += 1
        if j >= len(path_b) or (i < len(path_a) and pick_a):
            arrivals.append(path_a[i])
            i += 1
        else:
            arrivals.append(path_b[j])
            j += 1
    det = RedundantGapDetector(window=1000, max_skew=1e9, clock=lambda: 0.0)
    delivered = [s for s in arrivals if det.observe("p", "t", s) is not DUPLICATE]
    det.expire(float("inf"))
    union = sorted(set(path_a) | set(path_b))
    assert sorted(delivered) == union and len(delivered) == len(set(delivered)), "each once"
    assert det.duplicates == len(arrivals) - len(union)
    if union:
        # what neither path brought, between the first number delivered and the last
        expected_lost = sum(1 for s in range(delivered[0], union[-1] + 1) if s not in union)
        assert det.gaps == expected_lost
    assert det.resets == 0 and det.missing == 0


def test_a_late_copy_is_delivered_and_an_early_duplicate_dropped() -> None:
    det = RedundantGapDetector(window=100, max_skew=5.0, clock=lambda: 0.0)
    assert det.observe("p", "t", 1) is None
    assert det.observe("p", "t", 3) is None  # 2 missing: perhaps on the other path
    assert det.missing == 1 and det.gaps == 0
    assert det.observe("p", "t", 1) is DUPLICATE
    assert det.observe("p", "t", 2) is None  # the slower forwarder brought it
    assert det.observe("p", "t", 3) is DUPLICATE
    assert (det.missing, det.gaps, det.duplicates) == (0, 0, 2)


def test_a_number_no_forwarder_brings_is_lost_after_the_skew_or_the_window() -> None:
    now = [0.0]
    det = RedundantGapDetector(window=10, max_skew=2.0, clock=lambda: now[0])
    det.observe("p", "t", 1)
    det.observe("p", "t", 3)
    det.expire(1.0)
    assert det.gaps == 0
    det.expire(2.5)
    assert det.gaps == 1 and det.missing == 0
    assert [(r.last, r.sequence) for r in det.reports] == [(1, 3)]
    now[0] = 3.0
    det.observe("p", "t", 20)  # 16 skipped; the window keeps the last 10
    assert det.gaps == 1 + 6 and det.missing == 10
    for s in range(21, 31):
        det.observe("p", "t", s)  # the window moves past the 10 missing
    assert det.gaps == 17 and det.missing == 0


def test_resets_and_unnumbered_messages() -> None:
    det = RedundantGapDetector(window=10)
    det.observe("p", "t", 500)
    jump = det.observe("p", "t", 1)  # far behind the window: numbering restarted
    assert jump is not None and jump is not DUPLICATE and jump.is_reset and det.resets == 1
    assert det.observe("p", "t", 2) is None
    assert det.observe("p", "t", 0) is None and det.observe("p", "t", 0) is None  # not numbered: never dropped
    det.forget("t")
    assert det.tracked() == (0, 0)
