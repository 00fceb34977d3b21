"""The bound on bytes queued at the forwarder for a subscriber that takes nothing (docs/SECURITY.md, Limits)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

import pytest
import zmq

from zmqbus import Forwarder, MessageBroker, MessageMetadata, ProcessingMessage
from zmqbus.core.backlog import BacklogBound
from zmqbus.testing import wait_until

MiB = 1024 * 1024


# -- the pure rule ---------------------------------------------------------------------------------


def test_a_connection_that_takes_nothing_is_cut_once_the_bound_passes() -> None:
    bound = BacklogBound(100)
    assert bound.check(0, {5: True, 6: True}) == []
    assert bound.check(60, {5: False, 6: True}) == []  # 5 stops taking bytes at 0: may hold 60
    assert bound.held(5, 60) == 60 and bound.held(6, 60) == 0
    assert bound.check(100, {5: False, 6: False}) == []  # 5 may hold 100: not more than the bound
    assert bound.check(101, {5: False, 6: False}) == [5]  # 101 > 100; 6 stopped at 60: 41
    assert bound.cut == 1
    assert bound.check(101, {6: False}) == []  # 5 left; 6 holds at most 41
    assert bound.check(162, {6: False}) == [6]


def test_taking_bytes_again_starts_the_count_over() -> None:
    bound = BacklogBound(100)
    bound.check(0, {1: False})
    bound.check(90, {1: True})  # it read: its queue went out
    assert bound.check(180, {1: False}) == []  # 90 since then
    assert bound.check(191, {1: False}) == [1]


def test_a_connection_whose_peer_acknowledges_bytes_took_them_even_if_full_at_every_look() -> None:
    bound = BacklogBound(100)
    bound.check(0, {1: False}, {1: 1_000})
    assert bound.check(150, {1: False}, {1: 1_500}) == []  # full at the look, but 500 bytes acknowledged
    assert bound.check(250, {1: False}, {1: 1_500}) == []  # nothing since: may hold 100
    assert bound.check(251, {1: False}, {1: 1_500}) == [1]
    assert bound.check(400, {2: False}, {}) == []  # no counters (ipc): writability alone, as before


def test_a_new_connection_starts_empty_and_a_left_one_is_forgotten() -> None:
    bound = BacklogBound(10)
    assert bound.check(1000, {3: False}) == []  # first seen: nothing queued yet
    assert bound.check(1005, {}) == []
    assert bound.held(3, 1005) == 0
    assert bound.check(2000, {3: False}) == []  # the descriptor reused by a new connection
    with pytest.raises(ValueError):
        BacklogBound(0)


# -- over real sockets --------------------------------------------------------------------------------


def _msg(topic: str, content: object) -> ProcessingMessage:
    return ProcessingMessage(topic, content, MessageMetadata())


async def test_a_stuck_subscriber_is_cut_reconnects_and_counts_what_it_missed(tcp_pair: tuple[str, str]) -> None:
    """A member whose handler blocks (a tiny high-water mark, so its kernel buffers fill) is cut by
    the forwarder once more than ``max_queued_bytes`` could queue for it; it reconnects by itself,
    recovers what it missed from the publisher's history, and every message is either delivered (once,
    in order) or counted as a gap. A reading subscriber loses nothing."""
    fwd = Forwarder(*tcp_pair, stats_interval=None, max_queued_bytes=2 * MiB).start()
    try:
        async with (
            MessageBroker(*tcp_pair) as pub,
            MessageBroker(*tcp_pair, hwm=20) as stuck,
            MessageBroker(*tcp_pair) as reader,
        ):
            gate = asyncio.Event()
            got: list[int] = []
            read: list[int] = []

            async def blocked(m: ProcessingMessage) -> None:
                await gate.wait()
                got.append(m.metadata.sequence)

            async def reading(m: ProcessingMessage) -> None:
                read.append(m.metadata.sequence)

            stuck.subscribe("s", "g.#", blocked)
            reader.subscribe("r", "g.#", reading)
            await stuck.ready()
            await reader.ready()
            pad = "x" * 20_000
            sent = 0
            deadline = time.monotonic() + 20
            # 20 kB messages, paced so the reader keeps up, until the forwarder cut the stuck one
            # (bounded: 6,000 messages, 120 MB, or 20 s). Its handler blocks, but it goes on taking messages
            # until 1,000 handlers are pending (max_pending_handlers): only then do its acknowledgements stop.
            while fwd.statistics().slow_subscribers_cut == 0 and sent < 6000 and time.monotonic() < deadline:
                for _ in range(20):
                    await pub.publish(_msg("g.x", {"i": sent, "pad": pad}))
                    sent += 1
                await asyncio.sleep(0.005)
            assert fwd.statistics().slow_subscribers_cut >= 1, f"not cut after {sent} messages"
            gate.set()
            # Markers until one arrives after the cut: once one is in, every surviving message is.
            marker = sent
            while not got or got[-1] <= sent:
                assert time.monotonic() < deadline + 10, "the cut subscriber did not come back"
                await pub.publish(_msg("g.x", {"i": marker}))
                marker += 1
                try:
                    await wait_until(lambda: bool(got) and got[-1] > sent, timeout=0.05)
                except AssertionError:
                    pass
            stats = stuck.statistics()
            # what the cut lost of its queue was recovered from the publisher's history or counted lost
            assert stats.gaps + stats.recovery["recovered"] > 0, "the cut lost its queue: recovered or counted"
            assert got == sorted(set(got)), "in order, each number once"
            assert len(got) + stats.gaps == got[-1], "every sequence number is either delivered or counted lost"
            await wait_until(lambda: len(read) == marker, what="the reading subscriber gets everything")
            assert read == list(range(1, marker + 1)) and reader.statistics().gaps == 0
    finally:
        fwd.stop()


def _rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the forwarder's memory from /proc")
def test_the_forwarder_holds_a_bounded_backlog_for_a_subscriber_that_never_reads(
    tcp_pair: tuple[str, str], run_cli: Callable[..., subprocess.Popen[str]]
) -> None:
    """A raw SUB that never reads, 300 MiB published: without the bound a forwarder held all of it
    (327 MB measured); with ``--max-queued-bytes 16000000`` it stays near the bound, and the
    reading subscriber still gets every message."""
    pub_ep, sub_ep = tcp_pair
    proc = run_cli(
        "forwarder", "--pub", pub_ep, "--sub", sub_ep, "--stats-interval", "0", "--max-queued-bytes", "16000000"
    )
    ctx = zmq.Context()
    socks = []
    try:
        slow = ctx.socket(zmq.SUB)
        slow.setsockopt(zmq.RCVHWM, 1)
        slow.setsockopt(zmq.RCVBUF, 65536)
        good = ctx.socket(zmq.SUB)
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 100_000)
        socks = [slow, good, pub]
        for s in socks:
            s.setsockopt(zmq.LINGER, 0)
        for s in (slow, good):
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(sub_ep)
        pub.connect(pub_ep)
        # Probe until the good subscriber's subscription reached the publisher (no sleeps).
        deadline = time.monotonic() + 10
        while not good.poll(50):
            assert time.monotonic() < deadline and proc.poll() is None, "the forwarder did not come up"
            pub.send(b"probe", zmq.NOBLOCK)
        while good.poll(200):
            good.recv()
        got = [0]

        def read() -> None:
            while good.poll(3000):
                good.recv()
                got[0] += 1

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        body = b"x" * (512 * 1024)
        peak = 0
        for i in range(600):  # 300 MiB, at about 100 MiB/s
            pub.send(body)
            time.sleep(0.005)
            if i % 25 == 0:
                peak = max(peak, _rss_mib(proc.pid))
        for _ in range(10):
            time.sleep(0.1)
            peak = max(peak, _rss_mib(proc.pid))
        reader.join(10)
        assert got[0] == 600, "the reading subscriber lost messages"
        assert peak < 150, f"the forwarder held {peak} MiB for a subscriber that never reads"
    finally:
        for s in socks:
            s.close(0)
        ctx.term()
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert "cut 1 subscriber(s) that took nothing" in err, err[-2000:]


READER = """
import sys, zmq
s = zmq.Context().socket(zmq.SUB)
s.setsockopt(zmq.SUBSCRIBE, b"")
s.connect(sys.argv[1])
print("up", flush=True)
n = 0
while s.poll(int(float(sys.argv[2]) * 1000)):
    if s.recv() != b"probe":
        n += 1
        sum(range(3000))  # some work per message: it reads more slowly than it is fed
print(n, flush=True)
"""

HOG = "while True: pass"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_subscriber_that_reads_on_a_busy_machine_is_never_cut(
    tcp_pair: tuple[str, str], run_cli: Callable[..., subprocess.Popen[str]]
) -> None:
    """The reading subscriber in its own process, slower than it is fed, two CPU hogs beside it on a
    2-core machine, 16 MB bound: its kernel buffers are full at most looks, but the bytes it
    acknowledges move, so it is never cut and gets everything (before: cut in 1 run of 4, 3,210 of
    5,121 messages lost)."""
    import sys

    pub_ep, sub_ep = tcp_pair
    fwd = run_cli(
        "forwarder", "--pub", pub_ep, "--sub", sub_ep, "--stats-interval", "0", "--max-queued-bytes", "16000000"
    )
    procs: list[subprocess.Popen[str]] = []
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    try:
        reader = subprocess.Popen([sys.executable, "-c", READER, sub_ep, "4"], stdout=subprocess.PIPE, text=True)
        procs.append(reader)
        assert reader.stdout is not None and reader.stdout.readline().strip() == "up"
        pub.setsockopt(zmq.LINGER, 2000)
        pub.setsockopt(zmq.SNDHWM, 0)
        pub.connect(pub_ep)
        deadline = time.monotonic() + 10
        # Wait until the reader's subscription reached the publisher: the forwarder forwards probes to it.
        probe = zmq.Context.instance().socket(zmq.SUB)
        probe.setsockopt(zmq.SUBSCRIBE, b"probe")
        probe.setsockopt(zmq.LINGER, 0)
        probe.connect(sub_ep)
        try:
            while not probe.poll(50):
                assert time.monotonic() < deadline and fwd.poll() is None, "the forwarder did not come up"
                pub.send(b"probe")
        finally:
            probe.close(0)
        procs += [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(2)]
        body = b"x" * 32 * 1024
        n = 5000  # 160 MiB: ten times the bound
        for _ in range(n):
            pub.send(body)
        out, _ = reader.communicate(timeout=90)
        got = int(out.strip().splitlines()[-1])
    finally:
        pub.close()
        ctx.term()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        os.kill(fwd.pid, signal.SIGTERM)
        _, err = fwd.communicate(timeout=10)
    assert "that took nothing" not in err, "the reading subscriber was cut"
    assert got == n, f"the reading subscriber got {got} of {n}"
