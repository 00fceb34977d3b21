"""The guard's bounds on subscription memory (pure: no sockets).

libzmq's ``XPUB_MANUAL`` keeps every distinct prefix a connection sends, granted or refused, until that
connection goes; so the guard counts what is *asked*, not only what it grants, and names the connection
holding the most to be cut once the asked bounds are passed (docs/SECURITY.md, "Subscription memory").
"""

from __future__ import annotations

import pytest

from zmqbus import Policy, SubscriptionLimits
from zmqbus.core.guard import PolicyGuard


def guard(**limits: int) -> PolicyGuard:
    return PolicyGuard(None, SubscriptionLimits(**limits))


def ask(g: PolicyGuard, conn: int, *prefixes: bytes, user: str = "m") -> list[list[bytes]]:
    return [g.subscription(user, conn, p, True) for p in prefixes]


def p(i: int, size: int = 100) -> bytes:
    return b"%06d." % i + b"x" * (size - 7)


def test_refused_subscriptions_count_towards_the_asked_bounds_and_the_biggest_asker_is_cut() -> None:
    """Past total_bytes subscriptions are refused, but libzmq keeps them: past asked_bytes the connection
    holding the most (not whoever asked last) is named, once, and counted."""
    g = guard(total_bytes=1_000, asked_bytes=3_000)
    ask(g, 7, p(0), p(1))  # a small, legitimate connection: 200 bytes
    granted = ask(g, 9, *(p(i) for i in range(2, 31)))  # a flood: 8 granted, the rest refused
    assert sum(1 for x in granted if x) == 8 and g.refused["subscription_limit"] >= 1
    assert g.take_cuts() == [9]
    assert g.refused["subscription_flood"] == 1
    assert ask(g, 9, p(100)) == [[]]  # refused while its cut is under way
    assert ask(g, 7, p(101)) == [[]]  # over total_bytes still: refused, not cut
    assert g.take_cuts() == []
    g.closed(9)
    g.drained()
    assert ask(g, 7, p(102)) == [[p(102)]]  # room again once the flood's connection is gone


def test_a_prefix_many_connections_hold_counts_once() -> None:
    """libzmq's tries share a prefix: 50 members subscribing the same 200 topics stay under a 100 KB bound
    that 50 x 200 x 100 bytes (1 MB) would pass."""
    g = guard(total_bytes=100_000, asked_bytes=100_000)
    for conn in range(50):
        assert all(ask(g, conn, *(p(i) for i in range(200))))
    assert g.take_cuts() == [] and not g.refused


def test_what_goes_upstream_is_each_granted_prefix_once_and_its_withdrawal_with_the_last_holder() -> None:
    g = guard()
    ask(g, 1, b"a.", b"b.")
    ask(g, 2, b"a.")
    assert g.take_upstream() == [b"\x01a.", b"\x01b."]
    g.subscription("m", 1, b"a.", False)
    assert g.take_upstream() == []  # connection 2 still holds it
    g.closed(2)
    assert g.take_upstream() == [b"\x00a."]
    g.closed(1)
    assert g.take_upstream() == [b"\x00b."]


def test_a_narrowed_grant_is_withdrawn_as_granted() -> None:
    """A policy narrows ``L`` (what a zmqbus client sends for ``L.#``) to ``L.`` and ``L\\0``: those are what
    the publishers got, so those are what is withdrawn when the connection goes (libzmq's own
    unsubscription names ``L``, which the publishers never had)."""
    policy = Policy.from_dict({"keys": {"m": {"subscribe": ["order.#"]}}})
    g = PolicyGuard(policy, SubscriptionLimits())
    assert ask(g, 3, b"order") == [[b"order.", b"order\x00"]]
    assert g.take_upstream() == [b"\x01order.", b"\x01order\x00"]
    g.closed(3)
    assert sorted(g.take_upstream()) == sorted([b"\x00order.", b"\x00order\x00"])


def test_frames_read_after_a_connection_closed_are_forgotten_at_the_next_drain() -> None:
    """libzmq may hand over a closed connection's last subscriptions after it reported the close: they
    must not stay counted forever (they did: 3.7 MB of a bound held by nobody after a flood)."""
    g = guard()
    ask(g, 5, p(1))
    g.closed(5)
    ask(g, 5, p(2), p(3))  # late frames
    g.drained()
    assert g._asked_bytes == 0 and g._bytes == 0 and g._subs == {}
    assert sorted(g.take_upstream()) == sorted(
        [b"\x01" + p(1), b"\x00" + p(1), b"\x01" + p(2), b"\x01" + p(3), b"\x00" + p(2), b"\x00" + p(3)]
    )


def test_a_reused_descriptor_keeps_the_new_connections_subscriptions() -> None:
    g = guard()
    ask(g, 5, p(1))
    g.closed(5)
    g.accepted(5)  # a new connection got descriptor 5
    ask(g, 5, p(2))
    g.drained()
    assert g._asked_bytes == len(p(2))


def test_a_connection_that_could_not_be_cut_counts_again() -> None:
    g = guard(total_bytes=500, asked_bytes=1_000)
    ask(g, 4, *(p(i) for i in range(11)))
    assert g.take_cuts() == [4]
    g.not_cut([4])  # it had gone meanwhile (or the descriptor was not ours)
    ask(g, 4, p(50))
    assert g.take_cuts() == [4]


def test_what_libzmq_read_but_the_loop_has_not_counts_and_is_cut() -> None:
    """While the proxy loop is behind, what each connection sent since the loop last read everything is
    counted as held: a flood the loop has not seen yet is cut on the kernel's byte counts alone."""
    g = guard(asked_bytes=10_000)
    received = {11: 1_000, 12: 500}
    g.behind = True
    g.sample_unread(lambda: received)  # the first look: the base
    received = {11: 20_000, 12: 600}
    g.sample_unread(lambda: received)
    assert g.take_cuts() == [11]
    assert g.refused["subscription_flood"] == 1
    g.drained()  # the loop caught up: nothing unread any more
    g.behind = False
    g.sample_unread(lambda: pytest.fail("not asked while the loop is caught up"))
    assert g._unread_bytes == 0


def test_the_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="asked_bytes"):
        SubscriptionLimits(asked_bytes=0)


def test_a_subscription_frame_longer_than_512_bytes_ends_its_connection(tcp_pair: tuple[str, str]) -> None:
    """PROTOCOL.md section 12: a guarding forwarder takes subscription frames of at most 512 bytes (a topic
    and its NUL, or a tail prefix, is at most 257); a longer one ends the connection, nothing applied."""
    import time

    import zmq

    from zmqbus import Forwarder
    from zmqbus.io.sockets import get_context

    with Forwarder(*tcp_pair, stats_interval=None, subscription_limits=True) as fwd:
        ok, long = get_context().socket(zmq.XSUB), get_context().socket(zmq.XSUB)
        try:
            for s in (ok, long):
                s.setsockopt(zmq.LINGER, 0)
                s.connect(fwd.sub_endpoint)
            ok.send(b"\x01" + b"a" * 256 + b"\x00")  # 258 bytes: the longest a client needs
            long.send(b"\x01" + b"b" * 600)
            deadline = time.monotonic() + 10
            while fwd.statistics().subscriber_disconnects < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            stats = fwd.statistics()
            assert stats.subscriber_disconnects >= 1  # the long one's (it reconnects and is ended again)
            assert stats.subscription_frames >= 1
            assert fwd.policy_guard is not None and fwd.policy_guard._granted_refs == {b"a" * 256 + b"\x00": 1}
        finally:
            ok.close(0)
            long.close(0)
