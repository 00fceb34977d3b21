"""The forwarder's connection counting (core.connections): pure code, threads only where admit() waits."""

from __future__ import annotations

import threading
import time

from zmqbus.core.connections import ConnectionCounts, ConnectionEvent, EventKind


def event(kind: EventKind, fd: int, publisher_side: bool = True) -> ConnectionEvent:
    return ConnectionEvent(kind, fd, publisher_side)


def test_events_are_counted_by_side_and_live_connections_by_descriptor() -> None:
    c = ConnectionCounts()
    c.apply(event(EventKind.ACCEPTED, 5))
    c.apply(event(EventKind.ACCEPTED, 6, publisher_side=False))
    c.apply(event(EventKind.ACCEPTED, 7, publisher_side=False))
    c.apply(event(EventKind.DISCONNECTED, 7, publisher_side=False))
    c.apply(event(EventKind.HANDSHAKE_FAILED, -1))
    c.apply(event(EventKind.AUTH_FAILED, -1, publisher_side=False))
    c.apply(event(EventKind.STOPPED, 0))
    assert (c.publisher_connects, c.publisher_disconnects, c.subscriber_connects, c.subscriber_disconnects) == (
        1,
        0,
        2,
        1,
    )
    assert c.handshake_failures == 2
    assert c.live_fds == {5, 6} and c.subscriber_fds == {6}
    assert c.live() == 2


def test_admission_counts_clients_whose_accept_event_was_not_read_yet() -> None:
    """Three clients reach ZAP before the monitor reader saw any of them: with a limit of two, the
    third is refused, not admitted on a count that lags behind."""
    c = ConnectionCounts()
    assert c.admit(2, wait=0.0) and c.admit(2, wait=0.0)
    assert not c.admit(2, wait=0.0)
    assert c.live() == 3  # the refused one counts until its ACCEPTED (and then DISCONNECTED) arrive


def test_admission_near_the_limit_waits_for_the_monitor_reader_and_no_longer() -> None:
    """Each client is accepted, then asks ZAP (admit), and its ACCEPTED event is read some time later."""
    c = ConnectionCounts()
    assert c.admit(2, wait=0.0)  # A
    c.apply(event(EventKind.ACCEPTED, 1))
    assert c.admit(2, wait=0.0)  # B: its event is not read yet

    def reader() -> None:  # the monitor reader catches up: B in, A gone, C in
        time.sleep(0.05)
        c.apply(event(EventKind.ACCEPTED, 2))
        c.apply(event(EventKind.DISCONNECTED, 1))
        c.apply(event(EventKind.ACCEPTED, 3))

    thread = threading.Thread(target=reader)
    thread.start()
    started = time.monotonic()
    # C: at most 3 live (A, B unseen, C unseen) is over the limit, so it waits for the reader, whose
    # events show 2 live: admitted, long before the wait's bound
    assert c.admit(2, wait=5.0)
    assert 0.03 < time.monotonic() - started < 4.0
    thread.join()
    # D, whose event nobody reads: refused once the wait's bound passed, not later
    started = time.monotonic()
    assert not c.admit(2, wait=0.2)
    assert 0.15 < time.monotonic() - started < 2.0
    # E, whose event was read before it asks: over the limit with nothing unseen, refused at once
    c.apply(event(EventKind.ACCEPTED, 4))
    c.apply(event(EventKind.ACCEPTED, 5))
    started = time.monotonic()
    assert not c.admit(2, wait=5.0)
    assert time.monotonic() - started < 1.0
