"""Nothing hangs: shutdown, start-up order, deadlines and timeouts, each bound measured.

A hang inside libzmq can hold the GIL, and then nothing in the hung process
(pytest-timeout included) can fire: such risks run in a child process that
the test bounds with a timeout and ends by pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from zmqbus import (
    BusTimeout,
    ClosedError,
    Forwarder,
    MessageBroker,
    NoResponder,
    ProcessingMessage,
    RemoteError,
    RequestTimeout,
    RetryPolicy,
)
from zmqbus.core.errors import TransportError
from zmqbus.framework.procs import free_port, tcp_endpoints
from zmqbus.testing import wait_until

from conftest import TIMED

pytestmark = [pytest.mark.slow, TIMED, pytest.mark.timeout(120)]

TESTS = Path(__file__).parent


def test_forwarder_stop_never_hangs_in_a_disconnect_storm() -> None:
    """200 peers killed with SIGKILL right before stop(), 25 times; bounded from outside.

    The old stop() deadlocked about once in 40 such stops (disable_monitor
    holding the GIL while libzmq's I/O thread blocked on an unread monitor).
    The same script ran 500 rounds clean before this test was trusted.
    """
    done = subprocess.run(
        [sys.executable, str(TESTS / "stop_storm.py"), "25"], capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rounds"] == 25
    assert result["slowest_stop_s"] < 5.0  # stop()'s own timeout


def test_a_caller_survives_responders_reconnecting_under_load() -> None:
    """A responder says it leaves and announces itself again at once, 400 times per process, in 4
    processes, with 20 requests always in flight; bounded from outside (an abort or a hang in libzmq
    stops every thread of the process under test).

    Callers used to connect with the instance id as routing id: libzmq aborted the whole process
    (``!has_out_pipe (routing_id)``, router.cpp:438) in 3 of 3 runs of 300 rounds. A reply that came
    between two tries also left its request waiting forever, past its 2 s timeout. The script ran
    300 times clean (120,000 reconnects) before this test was trusted.
    """
    for _ in range(4):
        done = subprocess.run(
            [sys.executable, str(TESTS / "reconnect_storm.py"), "400", "20"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["rounds"] == 400
        assert result["answered"] > 400  # requests were flowing across the reconnects
        assert result["failed"] == result.get("failed_RequestTimeout", 0)  # tries spent on leaving instances


async def test_run_grace_holds_with_a_busy_sync_handler(forwarder: Forwarder, tmp_path: Path, run_cli: Any) -> None:
    """`zmqbus run --grace 1` exits about 1 s after SIGTERM though a sync handler runs for 12 s;
    the caller of the interrupted request gets a `shutting_down` error, not a timeout."""
    proc = run_cli(
        "run",
        "slow_components:SlowProcessor",
        "--pub",
        forwarder.pub_endpoint,
        "--sub",
        forwarder.sub_endpoint,
        "--grace",
        "1",
    )
    started = tmp_path / "started"
    async with MessageBroker(forwarder.pub_endpoint, forwarder.sub_endpoint, name="caller") as caller:

        async def call() -> Any:
            for _ in range(100):  # until the component's service is announced
                try:
                    return await caller.request(
                        "slow.work",
                        ProcessingMessage("slow.work", {"started": str(started), "seconds": 12}),
                        timeout=30,
                    )
                except NoResponder:  # while the process starts
                    if proc.poll() is not None:
                        break
                    await asyncio.sleep(0.1)
            proc.kill()
            raise AssertionError(f"the component never served slow.work: {proc.communicate()[1][-3000:]}")

        request = asyncio.ensure_future(call())
        await wait_until(started.exists, 30, "the sync handler to start")
        os.kill(proc.pid, signal.SIGTERM)
        t0 = time.monotonic()
        while proc.poll() is None:
            assert time.monotonic() - t0 < 10, "still running 10 s after SIGTERM"
            await asyncio.sleep(0.02)
        exited = time.monotonic() - t0
        with pytest.raises(RemoteError) as info:
            await request
    assert proc.returncode == 143, proc.communicate()[1]
    assert exited < 2.5, f"exit took {exited:.2f} s after SIGTERM with --grace 1"
    assert info.value.code == "shutting_down"


async def test_responder_close_without_a_forwarder_is_quick() -> None:
    """A responder that never reached a forwarder closes within its linger, not publish_timeout."""
    pub, sub = tcp_endpoints()  # nobody listens there
    broker = MessageBroker(pub, sub, name="lonely", linger=0.5)
    broker.serve("lonely.echo", lambda m: m.content)
    await broker.start()
    t0 = time.monotonic()
    await broker.close()
    assert time.monotonic() - t0 < 1.5


async def test_heartbeat_survives_a_forwarder_that_comes_up_late() -> None:
    """The forwarder starts long after the responder (several of the heartbeat's ready() timeouts):
    the responder keeps trying, is then announced and answers."""
    pub, sub = tcp_endpoints()
    srv = MessageBroker(pub, sub, name="early", heartbeat=0.1, liveness=3)
    srv.serve("early.echo", lambda m: m.content)
    async with srv:
        await asyncio.sleep(1.5)  # five of its ready() timeouts (heartbeat * liveness) go by
        with Forwarder(pub, sub, stats_interval=None):
            async with MessageBroker(pub, sub, name="late-caller") as caller:
                # The responder's sockets reconnect with backoff (up to 2 s): until it is
                # announced, a request fails fast with NoResponder, as documented.
                await wait_until(
                    lambda: srv._requests.responder is not None and srv._publisher.is_ready,
                    10,  # type: ignore[attr-defined]
                    "the responder to reach the late forwarder",
                )
                for _ in range(20):
                    try:
                        reply = await caller.request("early.echo", ProcessingMessage("early.echo", 42), timeout=10)
                        break
                    except NoResponder:
                        await asyncio.sleep(0.1)
                assert reply.content == 42
                assert not srv.closed


async def test_heartbeat_retries_when_ready_times_out(forwarder: Forwarder, monkeypatch: Any) -> None:
    """The heartbeat's ready() timing out (the forwarder more than its timeout late) is transient:
    the task retries instead of dying with "Task exception was never retrieved"."""
    srv = MessageBroker(forwarder.pub_endpoint, forwarder.sub_endpoint, heartbeat=0.1)
    real_ready = srv.ready
    timeouts = 0

    async def late_ready(timeout: float = 10.0) -> None:
        nonlocal timeouts
        if timeouts < 2:
            timeouts += 1
            raise BusTimeout("simulated: the forwarder is not up yet")
        await real_ready(timeout)

    monkeypatch.setattr(srv, "ready", late_ready)
    srv.serve("hb.echo", lambda m: m.content)
    async with srv, MessageBroker(forwarder.pub_endpoint, forwarder.sub_endpoint) as caller:
        reply = await caller.request("hb.echo", ProcessingMessage("hb.echo", 7), timeout=10)
        assert reply.content == 7 and timeouts == 2 and not srv.closed


async def test_a_failed_background_start_closes_the_broker_and_says_why(forwarder: Forwarder) -> None:
    """serve() after start() binds in the background: a busy port closes the broker, and the next call raises."""
    port = free_port()
    blocker = MessageBroker(forwarder.pub_endpoint, forwarder.sub_endpoint, rpc_bind=f"tcp://127.0.0.1:{port}")
    blocker.serve("a.b", lambda m: None)
    async with blocker:
        broker = MessageBroker(forwarder.pub_endpoint, forwarder.sub_endpoint, rpc_bind=f"tcp://127.0.0.1:{port}")
        await broker.start()
        broker.serve("c.d", lambda m: None)
        await wait_until(lambda: broker.closed, 5, "the broker to close after the failed bind")
        with pytest.raises(ClosedError, match="TransportError") as info:
            await broker.publish(ProcessingMessage("x.y", 1))
        assert isinstance(info.value.__cause__, TransportError)
        await broker.close()


async def test_a_dead_read_loop_stops_the_announcements(forwarder: Forwarder, monkeypatch: Any) -> None:
    """A responder whose ROUTER read loop dies closes (and so stops announcing) instead of looking alive."""
    srv = MessageBroker(forwarder.pub_endpoint, forwarder.sub_endpoint, heartbeat=0.1)
    srv.serve("x.work", lambda m: 1)
    async with srv:
        await srv.ready()
        router = srv._requests.responder._router  # type: ignore[union-attr]

        def broken(limit: int) -> list[list[bytes]]:
            raise TransportError("receive: simulated fault")

        monkeypatch.setattr(router, "recv_batch", broken)
        router.channel.wake()
        await wait_until(lambda: srv.closed, 5, "the responder's broker to close")
    # close() (here by `async with`) waits for the close the failure started: no socket outlives it
    assert srv._link is None and srv._requests.responder is None


async def test_queued_requests_never_start_after_their_deadline(forwarder: Forwarder) -> None:
    """max_concurrency=1 and a 0.3 s handler: of 5 requests with 0.5 s to live, the queued ones
    whose deadline passes in the queue never start (PROTOCOL.md section 8.2)."""
    late_starts: list[float] = []
    starts = 0

    async def slow(m: ProcessingMessage) -> int:
        nonlocal starts
        starts += 1
        if time.time() > m.metadata.deadline:  # type: ignore[operator]
            late_starts.append(time.time() - m.metadata.deadline)  # type: ignore[operator]
        await asyncio.sleep(0.3)
        return 1

    srv = MessageBroker(forwarder.pub_endpoint, forwarder.sub_endpoint, max_concurrency=1)
    srv.serve("q.slow", slow)
    async with srv, MessageBroker(forwarder.pub_endpoint, forwarder.sub_endpoint) as caller:
        await srv.ready()
        results = await asyncio.gather(
            *(
                caller.request("q.slow", ProcessingMessage("q.slow", i), timeout=0.5, retry=RetryPolicy(attempts=1))
                for i in range(5)
            ),
            return_exceptions=True,
        )
        # every request has now either started or been answered `expired` from the queue
        await wait_until(
            lambda: (lambda r: r["served_executed"] + r["served_expired"])(srv.statistics().rpc) == 5,
            10,
            "each request started or expired",
        )
    assert late_starts == []
    assert starts <= 2
    assert sum(1 for r in results if isinstance(r, ProcessingMessage)) >= 1


async def test_request_timeout_holds_without_a_forwarder() -> None:
    """request(timeout=1.0) with no forwarder raises RequestTimeout after about 1 s, not 10."""
    pub, sub = tcp_endpoints()
    async with MessageBroker(pub, sub, linger=0) as caller:
        t0 = time.monotonic()
        with pytest.raises(RequestTimeout, match="no answer from the forwarder"):
            await caller.request("nobody.home", ProcessingMessage("nobody.home", 1), timeout=1.0)
        assert time.monotonic() - t0 < 1.8
        t0 = time.monotonic()
        with pytest.raises(BusTimeout):
            await caller.publish(ProcessingMessage("x.y", 1), timeout=0.5)
        assert time.monotonic() - t0 < 1.2


def test_stats_timeout_holds_without_a_forwarder(run_cli: Any) -> None:
    pub, sub = tcp_endpoints()
    proc = run_cli("stats", "--pub", pub, "--sub", sub, "--timeout", "2")
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and time.monotonic() - t0 < 4.5, err
    assert "BusTimeout" in err and "Traceback" not in err


def test_run_without_a_forwarder_fails_in_one_line(run_cli: Any) -> None:
    pub, sub = tcp_endpoints()
    proc = run_cli(
        "run", "zmqbus.components.error_handler:ErrorHandler", "--pub", pub, "--sub", sub, "--startup-timeout", "1"
    )
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "BusTimeout" in line], err


def test_run_honours_sigterm_during_start_up(run_cli: Any) -> None:
    pub, sub = tcp_endpoints()
    proc = run_cli(
        "--log-level",
        "INFO",
        "run",
        "zmqbus.components.error_handler:ErrorHandler",
        "--pub",
        pub,
        "--sub",
        sub,
        "--startup-timeout",
        "60",
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # its signal handlers are in place once it says it is starting
        if "SIGTERM stops it at any moment" in line:
            break
    os.kill(proc.pid, signal.SIGTERM)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 3.0, err
    assert proc.returncode == 143 and "Traceback" not in err, err


def test_up_stops_everything_when_the_forwarder_gives_up(tmp_path: Path, run_cli: Any) -> None:
    """The forwarder cannot bind (its port is taken): `up` gives up on it, stops the components, exits 1."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        pub = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        topo = tmp_path / "topo.toml"
        topo.write_text(
            f'[bus]\npub = "{pub}"\nsub = "tcp://127.0.0.1:{free_port()}"\n\n'
            '[[component]]\nclass = "zmqbus.components.error_handler:ErrorHandler"\n'
        )
        proc = run_cli("up", str(topo), "--crash-limit", "1")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: forwarder crash-loops"), err
    assert "all processes stopped" in err


def test_up_exits_when_a_component_gives_up(tmp_path: Path, run_cli: Any) -> None:
    pub, sub = tcp_endpoints()
    topo = tmp_path / "topo.toml"
    topo.write_text(f'[bus]\npub = "{pub}"\nsub = "{sub}"\n\n[[component]]\nclass = "crashy:Crashy"\n')
    proc = run_cli("up", str(topo), "--crash-limit", "1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith("Error: Crashy#1 crash-loops"), err


async def test_close_confirms_what_was_published(tcp_pair: tuple[str, str], spawn_forwarder: Any) -> None:
    """While the forwarder is down, messages queue and leave when it is back; what reaches a
    subscriber and what does not is counted exactly (those the dead connection had taken, and
    those that reached the new forwarder before the subscriber's own subscription did, are gaps).
    If the forwarder never comes back, close() counts exactly what it could not confirm."""
    from zmqbus.framework.procs import stop_process

    fwd = spawn_forwarder(*tcp_pair, stats_interval=None)
    got: list[Any] = []
    async with MessageBroker(*tcp_pair, name="sub") as sub:
        sub.subscribe("t", "outage.#", lambda m: got.append(m.content))
        await sub.ready()
        # history off: this publisher publishes only its own messages (no presence of a history server),
        # so that every number below counts exactly them
        pub = MessageBroker(*tcp_pair, name="pub", linger=0.5, history=False)
        try:
            for i in range(10):
                await pub.publish(ProcessingMessage("outage.a", i))
            await pub.ready()  # confirms the 10
            await wait_until(lambda: len(got) == 10, 10, "the first 10")
            os.kill(fwd.pid, signal.SIGKILL)
            fwd.join(5)
            for i in range(10, 110):
                await pub.publish(ProcessingMessage("outage.a", i))
            fwd2 = spawn_forwarder(*tcp_pair, stats_interval=None)
            # The publisher and the subscriber reconnect independently: keep publishing (paced,
            # bounded) until messages flow end to end again, then account for every one.
            sent = 110
            deadline = time.monotonic() + 20
            while not got or got[-1] < 110:
                assert time.monotonic() < deadline, "nothing flowed after the forwarder restarted"
                await pub.publish(ProcessingMessage("outage.a", sent))
                sent += 1
                await asyncio.sleep(0.02)
            await wait_until(lambda: got[-1] == sent - 1, 10, "the last message")
            assert got == sorted(got) and len(got) == len(set(got))
            assert len(got) + sub.statistics().gaps == sent
            await pub.ready()  # confirms all of them (a probe travels behind them)
            # The forwarder goes away for good: close() is bounded and counts what it could not confirm.
            stop_process(fwd2, timeout=3.0)
            for i in range(sent, sent + 25):
                await pub.publish(ProcessingMessage("outage.a", i))
            t0 = time.monotonic()
            await pub.close()
            assert time.monotonic() - t0 < 1.5
            stats = pub.statistics()
            assert stats.published == sent + 25
            assert stats.unconfirmed == 25
        finally:
            await pub.close(0)  # idempotent; a failed assertion must not leak the sockets


@pytest.mark.parametrize("closes", [True, False], ids=["closed", "never-closed"])
def test_tail_reaches_the_forwarder_when_a_process_exits_at_once(tcp_pair: tuple[str, str], closes: bool) -> None:
    """A ~900 kB message and 5 small ones published right before exit: with close(), all reach the
    forwarder every time (confirmed). A broker never closed gets a best-effort flush at exit and a
    warning, as documented ("unconfirmed"): here about 1 try in 40 lost the batch, so that variant
    asserts the warning, not delivery (an open finding, see the closing note)."""
    script = f"""
import asyncio, sys
from zmqbus import MessageBroker, ProcessingMessage
async def main():
    b = MessageBroker(sys.argv[1], sys.argv[2])
    await b.publish(ProcessingMessage("tail.big", b"x" * 900_000))
    for i in range(5):
        await b.publish(ProcessingMessage("tail.small", i))
    if {closes}:
        await b.close()
        assert b.statistics().unconfirmed == 0
asyncio.run(main())
"""
    import zmq

    with Forwarder(*tcp_pair, stats_interval=None):
        watcher = zmq.Context.instance().socket(zmq.SUB)
        watcher.setsockopt(zmq.LINGER, 0)
        watcher.subscribe(b"tail.")
        watcher.connect(tcp_pair[1])
        warm = zmq.Context.instance().socket(zmq.PUB)
        warm.setsockopt(zmq.LINGER, 0)
        warm.connect(tcp_pair[0])
        try:
            deadline = time.monotonic() + 10
            while True:  # until the watcher's subscription is live at the forwarder
                assert time.monotonic() < deadline, "the watcher's subscription never reached the forwarder"
                warm.send(b"tail.warmup\0")
                if watcher.poll(50):
                    break
            while watcher.poll(200):
                watcher.recv()
            for attempt in range(12):
                done = subprocess.run(
                    [sys.executable, "-c", script, *tcp_pair], timeout=30, capture_output=True, text=True
                )
                assert done.returncode == 0, done.stderr
                assert ("never closed" in done.stderr) == (not closes), done.stderr
                got = []
                while len(got) < 6 and watcher.poll(5000 if closes else 2000):
                    got.append(watcher.recv().partition(b"\0")[0])
                if closes:
                    assert got == [b"tail.big"] + [b"tail.small"] * 5, f"attempt {attempt}: {got}"
        finally:
            watcher.close()
            warm.close()


def test_exit_never_hangs_on_a_socket_dropped_without_close() -> None:
    """A socket garbage-collected unclosed (its ResourceWarning made an error, so pyzmq never closed it)
    would hold the exit flush's term() forever: it is bounded (EXIT_FLUSH_TIMEOUT, 5 s). Bounded from outside."""
    script = """
import gc, warnings, zmq
from zmqbus.io.sockets import get_context
warnings.simplefilter("error")
s = get_context().socket(zmq.PUB)
s.connect("tcp://127.0.0.1:9")  # nobody there: the message below stays queued, LINGER is infinite
s.send(b"x")
del s
gc.collect()
"""
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert time.monotonic() - t0 < 15
    assert "did not terminate within 5 s" in done.stderr, done.stderr


def test_up_keep_going_carries_on_when_a_component_gives_up(tmp_path: Path, run_cli: Any) -> None:
    """With --keep-going, a crash-looping component is given up on and `up` keeps running until SIGTERM."""
    pub, sub = tcp_endpoints()
    topo = tmp_path / "topo.toml"
    topo.write_text(f'[bus]\npub = "{pub}"\nsub = "{sub}"\n\n[[component]]\nclass = "crashy:Crashy"\n')
    proc = run_cli("up", str(topo), "--crash-limit", "1", "--keep-going")
    assert proc.stderr is not None
    for line in proc.stderr:
        if "giving up on it" in line:
            break
    assert proc.poll() is None, "up exited although --keep-going was given"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "all processes stopped" in err
