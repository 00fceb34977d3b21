"""Request/reply with real responders: in this process and as separate processes (kill -9 included)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from zmqbus import (
    Forwarder,
    MessageBroker,
    MessageMetadata,
    NoResponder,
    ProcessingMessage,
    RemoteError,
    RequestTimeout,
    RetryPolicy,
)
from zmqbus.framework.procs import spawn, stop_process
from zmqbus.testing import wait_until

from conftest import pid_alive

pytestmark = pytest.mark.timeout(120)


def req(content: Any, **md: Any) -> ProcessingMessage:
    return ProcessingMessage("work.request", content, MessageMetadata(**md))


def ep(fwd: Forwarder) -> tuple[str, str]:
    return fwd.pub_endpoint, fwd.sub_endpoint


async def test_request_reply_and_errors(forwarder: Forwarder) -> None:
    srv = MessageBroker(*ep(forwarder), name="calc", heartbeat=0.2)

    async def add(m: ProcessingMessage) -> dict[str, int]:
        return {"sum": m.content["a"] + m.content["b"]}

    def fail(m: ProcessingMessage) -> None:
        raise KeyError("missing thing")

    async def fail_later(m: ProcessingMessage) -> None:
        await asyncio.sleep(0.01)  # suspends: finished by a Task, not eagerly
        raise ZeroDivisionError("after a pause")

    async def add_later(m: ProcessingMessage) -> dict[str, int]:
        await asyncio.sleep(0.001)
        return await add(m)

    srv.serve("calc.add", add)
    srv.serve("calc.add_later", add_later)
    srv.serve("calc.fail", fail)
    srv.serve("calc.fail_later", fail_later)
    async with srv, MessageBroker(*ep(forwarder), name="client") as client:
        sent = req({"a": 2, "b": 3}, correlation_id="wf-7", source_component="client")
        reply = await client.request("calc.add", sent)
        assert reply.content == {"sum": 5}
        md = reply.metadata
        assert (md.correlation_id, md.causation_id, md.source_component, md.target_component) == (
            "wf-7",
            sent.metadata.message_id,
            "calc",
            "client",
        )
        with pytest.raises(RemoteError) as info:
            await client.request("calc.fail", req({}, correlation_id="wf-8"))
        assert info.value.error_type == "KeyError" and info.value.correlation_id == "wf-8"
        assert info.value.code == "handler_error" and "missing thing" in str(info.value)
        with pytest.raises(RemoteError, match="ZeroDivisionError: after a pause"):
            await client.request("calc.fail_later", req({}))
        later = await asyncio.gather(*(client.request("calc.add_later", req({"a": i, "b": 1})) for i in range(50)))
        assert [r.content["sum"] for r in later] == [i + 1 for i in range(50)]
        started = time.monotonic()
        with pytest.raises(NoResponder):
            await client.request("calc.nobody", req({}), timeout=30)
        assert time.monotonic() - started < 2.0  # promptly, not after the 30 s timeout
        await client.send("calc.add", req({"a": 1, "b": 1}))  # one-way, acknowledged
        many = await asyncio.gather(*(client.request("calc.add", req({"a": i, "b": 0})) for i in range(200)))
        assert sorted(r.content["sum"] for r in many) == list(range(200))
        assert srv.statistics().rpc["served_executed"] == 1 + 1 + 1 + 50 + 1 + 200


async def test_slow_but_alive_responder_is_not_abandoned(forwarder: Forwarder) -> None:
    """A handler longer than the try timeout: BUSY keeps the try alive; executed once, no failover."""
    calls: list[str] = []

    def slow(m: ProcessingMessage) -> str:  # sync: runs in a thread, heartbeats keep flowing
        calls.append(m.metadata.message_id)
        time.sleep(1.5)
        return "done"

    srv = MessageBroker(*ep(forwarder), heartbeat=0.2)
    srv.serve("slow", slow)
    async with srv, MessageBroker(*ep(forwarder)) as client:
        policy = RetryPolicy(attempts=3, attempt_timeout=0.5)
        reply = await client.request("slow", req({}), timeout=10, retry=policy)
        assert reply.content == "done" and len(calls) == 1
        stats = client.statistics().rpc
        assert stats["retries"] == 0 and stats["failovers"] == 0


@pytest.mark.slow
async def test_timeout_reports_attempts_and_time(forwarder: Forwarder) -> None:
    async def never(m: ProcessingMessage) -> None:
        await asyncio.sleep(30)

    srv = MessageBroker(*ep(forwarder), heartbeat=0.2)
    srv.serve("never", never)
    async with srv, MessageBroker(*ep(forwarder)) as client:
        started = time.monotonic()
        with pytest.raises(RequestTimeout) as info:
            await client.request("never", req({}), timeout=0.8, retry=RetryPolicy(attempts=5, attempt_timeout=None))
        assert 0.7 < time.monotonic() - started < 3.0
        assert info.value.attempts == 1 and info.value.elapsed >= 0.7 and info.value.reason.startswith("deadline")


async def test_duplicates_answered_from_cache_malformed_frames_and_expired(forwarder: Forwarder) -> None:
    executed: list[int] = []

    async def count(m: ProcessingMessage) -> int:
        executed.append(m.content)
        return len(executed)

    srv = MessageBroker(*ep(forwarder), heartbeat=0.2)
    srv.serve("count", count)
    async with srv:
        await srv.ready()
        await wait_until(lambda: srv._requests.responder is not None, what="responder")
        endpoint = srv._requests.responder.endpoint  # type: ignore[union-attr]
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint)

        async def recv() -> tuple[bytes, bytes]:
            # in a thread: the responder runs on this test's event loop
            got = await asyncio.to_thread(lambda: dealer.recv_multipart() if dealer.poll(5000) else None)
            assert got is not None, "no answer"
            assert len(got) == 1  # one frame: kind, NUL, payload (PROTOCOL.md section 8.2)
            kind, _, body = got[0].partition(b"\x00")
            return kind, body

        try:
            payload = msgpack.packb(
                [2, "count", "dup-1", "c", None, "raw", None, time.time(), "raw", 0, 1, None, None, 41]
            )
            for _ in range(3):  # the same message id three times: executed once
                dealer.send(b"REQ\x00count\x00" + payload)
            first = await recv()
            assert first[0] == b"REP" and msgpack.unpackb(first[1])[13] == 1
            await wait_until(
                lambda: (
                    (lambda st: st["served_duplicates_cached"] + st["served_duplicates_in_flight"])(
                        srv.statistics().rpc
                    )
                    == 2
                ),
                what="both duplicates seen",
            )
            assert executed == [41]
            # malformed requests get an error back; the responder stays up
            for frames in (
                [b"REQ"],
                [b"HELLO\x00x\x00y"],
                [b"REQ\x00count\x00\xc1garbage"],
                [b"REQ\x00count\x00" + payload, b"a second frame"],
                [b"REQ\x00\xff\xfe\x00" + payload],
            ):
                dealer.send_multipart(frames)
                while True:
                    kind, body = await recv()
                    if kind == b"ERR":  # skip replies to cached duplicates
                        break
                assert msgpack.unpackb(body)[13]["code"] == "malformed"
            # a malformed request whose id can still be read: the ERR names it (causation_id)
            bad = msgpack.packb([2, "count", "bad-7", "c", None, "raw", None, "not a time", "raw", 0, 1, None, None, 0])
            dealer.send(b"REQ\x00count\x00" + bad)
            kind, body = await recv()
            err = msgpack.unpackb(body)
            assert kind == b"ERR" and err[13]["code"] == "malformed" and err[4] == "bad-7"
            expired = msgpack.packb(
                [2, "count", "old-1", "c", None, "raw", None, time.time(), "raw", 0, 1, time.time() - 5, None, 0]
            )
            dealer.send(b"REQ\x00count\x00" + expired)
            kind, body = await recv()
            assert kind == b"ERR" and msgpack.unpackb(body)[13]["code"] == "expired"
            assert executed == [41]
            assert srv.statistics().rpc["served_malformed"] == 6
        finally:
            dealer.close(0)


async def test_competing_consumers_each_request_once(forwarder: Forwarder) -> None:
    executions: collections.Counter[str] = collections.Counter()
    by_instance: collections.Counter[str] = collections.Counter()
    workers = []
    for n in range(3):
        w = MessageBroker(*ep(forwarder), name=f"w{n}", heartbeat=0.2)

        async def work(m: ProcessingMessage, name: str = f"w{n}") -> str:
            executions[m.metadata.message_id] += 1
            by_instance[name] += 1
            await asyncio.sleep(0.002)
            return name

        w.serve("jobs", work)
        workers.append(w)
    try:
        for w in workers:
            await w.start()
        async with MessageBroker(*ep(forwarder)) as client:
            await client.request("jobs", req({}))  # discovery
            await wait_until(lambda: client.statistics().rpc["instances_known"] == 3, what="three instances")
            executions.clear()
            by_instance.clear()
            sem = asyncio.Semaphore(20)

            async def one(i: int) -> str:
                async with sem:
                    return (await client.request("jobs", req({"i": i}))).content  # type: ignore[no-any-return]

            names = await asyncio.gather(*(one(i) for i in range(300)))
        assert len(executions) == 300 and set(executions.values()) == {1}, "each request executed exactly once"
        assert sorted(by_instance) == ["w0", "w1", "w2"] and collections.Counter(names) == by_instance
        assert min(by_instance.values()) >= 50, f"load spread by fewest outstanding: {dict(by_instance)}"
    finally:
        for w in workers:
            await w.close()


async def test_close_wakes_waiting_requests(forwarder: Forwarder) -> None:
    from zmqbus import ClosedError

    async def stall(m: ProcessingMessage) -> None:
        await asyncio.sleep(30)

    srv = MessageBroker(*ep(forwarder), heartbeat=0.2)
    srv.serve("stall", stall)
    async with srv:
        client = MessageBroker(*ep(forwarder))
        waiting = asyncio.ensure_future(client.request("stall", req({}), timeout=30))
        await wait_until(lambda: client.statistics().rpc.get("in_flight") == 1, what="request in flight")
        await client.close()
        with pytest.raises(ClosedError):
            await asyncio.wait_for(waiting, 5)


async def test_close_during_discovery_raises_closed_not_no_responder(forwarder: Forwarder) -> None:
    """A request still looking for an instance when its broker closes ends with ClosedError at once."""
    from zmqbus import ClosedError

    client = MessageBroker(*ep(forwarder))
    await client.start()
    await client.ready()
    waiting = asyncio.ensure_future(client.request("ghost", req({}), timeout=30))
    await wait_until(lambda: client.statistics().rpc.get("in_flight") == 1, what="request begun")
    await client.close()
    with pytest.raises(ClosedError):
        await asyncio.wait_for(waiting, 5)


async def test_a_bad_service_name_fails_at_once(forwarder: Forwarder) -> None:
    """A service name travels between NULs in the request frame, so it is checked like a topic."""
    from zmqbus import TopicError

    async with MessageBroker(*ep(forwarder)) as client:
        with pytest.raises(TopicError):
            await asyncio.wait_for(client.request("calc\x00add", req({}), timeout=30), 5)


def test_bind_and_advertised_address_are_separate() -> None:
    from zmqbus.core.config import advertised_endpoint as _advertised

    assert _advertised("tcp://127.0.0.1:4000", None) == "tcp://127.0.0.1:4000"
    assert _advertised("tcp://0.0.0.0:4000", "10.1.2.3") == "tcp://10.1.2.3:4000"
    assert _advertised("tcp://0.0.0.0:4000", "tcp://gateway:9000") == "tcp://gateway:9000"
    assert _advertised("ipc:///tmp/x.sock", None) == "ipc:///tmp/x.sock"
    with pytest.raises(ValueError, match="advertise"):
        _advertised("tcp://0.0.0.0:4000", None)


async def test_advertised_endpoint_is_announced(forwarder: Forwarder) -> None:
    srv = MessageBroker(*ep(forwarder), rpc_bind="tcp://127.0.0.1:*", rpc_advertise="localhost", heartbeat=0.2)
    srv.serve("adv", lambda m: "ok")
    async with srv, MessageBroker(*ep(forwarder)) as client:
        assert (await client.request("adv", req({}))).content == "ok"  # reached through the advertised name
        assert srv._requests.responder is not None and srv._requests.responder.endpoint.startswith("tcp://localhost:")


# -- separate processes ---------------------------------------------------------


def _responder_main(pub: str, sub: str, record: str, delay: float) -> None:
    """A responder process: records every execution (message id) in ``record``, one line each."""
    import asyncio as aio

    from zmqbus import MessageBroker as Broker

    async def main() -> None:
        stop = aio.Event()
        loop = aio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        out = open(record, "a", buffering=1)
        broker = Broker(pub, sub, name=f"worker-{os.getpid()}", heartbeat=0.2, liveness=3)

        async def work(m: Any) -> dict[str, Any]:
            out.write(f"{m.metadata.message_id} {m.metadata.attempt}\n")
            await aio.sleep(delay)
            return {"i": m.content["i"], "pid": os.getpid()}

        broker.serve("work", work)
        async with broker:
            await stop.wait()
        out.close()

    aio.run(main())


async def _run_load(client: MessageBroker, n: int, in_flight: int, on_done: Any = None) -> list[Any]:
    sem = asyncio.Semaphore(in_flight)
    results: list[Any] = []

    async def one(i: int) -> None:
        async with sem:
            r = await client.request(
                "work", req({"i": i}), timeout=30, retry=RetryPolicy(attempts=5, attempt_timeout=2.0)
            )
            results.append(r.content)
            if on_done:
                on_done(len(results))

    await asyncio.gather(*(one(i) for i in range(n)))
    return results


async def served(client: MessageBroker, content: dict[str, Any], timeout: float = 30.0) -> Any:
    """The first request to a responder process that may still be starting: NoResponder (after the
    documented 0.5 s discovery wait) is retried until ``timeout``; anything else is raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await client.request("work", req(content), timeout=20)
        except NoResponder:
            if time.monotonic() > deadline:
                raise


def read_records(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


async def test_three_responders_kill_one_mid_stream(
    ipc_pair: tuple[str, str], spawn_forwarder: Any, tmp_path: Path
) -> None:
    spawn_forwarder(*ipc_pair, stats_interval=None)
    records = [tmp_path / f"r{i}.txt" for i in range(3)]
    procs = [spawn(_responder_main, *ipc_pair, str(r), 0.01) for r in records]
    try:
        async with MessageBroker(*ipc_pair, name="caller") as client:
            await client.ready(timeout=20)
            # wait until all three instances are known
            await served(client, {"i": -1})
            await wait_until(
                lambda: client.statistics().rpc.get("instances_known") == 3, timeout=20, what="three instances"
            )
            victim = procs[1]
            killed_at = {}

            def maybe_kill(done: int) -> None:
                if done == 300 and not killed_at:
                    os.kill(victim.pid, signal.SIGKILL)
                    killed_at["t"] = time.monotonic()

            started = time.monotonic()
            results = await _run_load(client, 1000, in_flight=30, on_done=maybe_kill)
            elapsed = time.monotonic() - started
            stats = client.statistics().rpc
        assert killed_at, "the victim was killed mid-stream"
        victim.join(5)
        assert not pid_alive(victim.pid)
        ids = [r["i"] for r in results]
        assert sorted(ids) == list(range(1000)), "every request completed exactly once at the caller"
        by_pid = collections.Counter(r["pid"] for r in results)
        executions = [read_records(r) for r in records]
        for i, ex in enumerate(executions):
            dup = [m for m, c in collections.Counter(ex).items() if c > 1]
            assert dup == [], f"responder {i} executed {len(dup)} message id(s) twice"
        across = (
            set(executions[0]) & set(executions[1])
            | set(executions[1]) & set(executions[2])
            | set(executions[0]) & set(executions[2])
        )
        print(
            f"\n1000 requests in {elapsed:.2f} s; replies by pid {dict(by_pid)}; executions per responder "
            f"{[len(e) for e in executions]}; executed on two instances (failed over after the kill): "
            f"{len(across)}; caller: {stats}"
        )
        assert stats["failovers"] >= 1 and stats["retries"] >= 1
        assert len(across) <= 30  # at most what was in flight on the victim
        assert victim.pid not in by_pid or by_pid[victim.pid] < 1000
    finally:
        for p in procs:
            stop_process(p)


async def test_responder_restart_and_none_left(ipc_pair: tuple[str, str], spawn_forwarder: Any, tmp_path: Path) -> None:
    spawn_forwarder(*ipc_pair, stats_interval=None)
    first = spawn(_responder_main, *ipc_pair, str(tmp_path / "a.txt"), 0.0)
    second = None
    try:
        async with MessageBroker(*ipc_pair) as client:
            r = await served(client, {"i": 1})
            assert r.content["pid"] == first.pid
            os.kill(first.pid, signal.SIGKILL)
            first.join(5)
            second = spawn(_responder_main, *ipc_pair, str(tmp_path / "b.txt"), 0.0)
            r = await served(client, {"i": 2})
            assert r.content == {"i": 2, "pid": second.pid}
            stop_process(second)  # graceful: it says goodbye on the bus
            started = time.monotonic()
            with pytest.raises(NoResponder):
                await client.request("work", req({"i": 3}), timeout=20)
            assert time.monotonic() - started < 2.0
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)


async def test_sync_handlers_see_their_request_as_the_current_message(forwarder: Forwarder) -> None:
    from zmqbus.core.message import current_message

    def who(m: ProcessingMessage) -> list[str]:  # runs in a worker thread
        current = current_message.get()
        inherited = MessageMetadata()  # built inside the handler: inherits the request's ids
        return [current.metadata.message_id if current else "", inherited.correlation_id, inherited.causation_id or ""]

    srv = MessageBroker(*ep(forwarder), heartbeat=0.2)
    srv.serve("who", who)
    async with srv, MessageBroker(*ep(forwarder)) as client:
        sent = req({}, correlation_id="wf-who")
        reply = await client.request("who", sent)
        assert reply.content == [sent.metadata.message_id, "wf-who", sent.metadata.message_id]


async def test_close_hands_back_requests_still_queued(forwarder: Forwarder) -> None:
    gate = asyncio.Event()

    async def hold(m: ProcessingMessage) -> str:
        await gate.wait()
        return "held"

    srv = MessageBroker(*ep(forwarder), heartbeat=0.2, max_concurrency=1)
    srv.serve("hold", hold)
    await srv.start()
    await wait_until(lambda: srv._requests.responder is not None, what="responder")
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(srv._requests.responder.endpoint)  # type: ignore[union-attr]
    try:
        for i in range(3):  # one runs, two wait for the single slot
            dealer.send(
                b"REQ\x00hold\x00"
                + msgpack.packb([2, "hold", f"q-{i}", "c", None, "raw", None, time.time(), "raw", 0, 1, None, None, i])
            )
        await wait_until(
            lambda: srv.statistics().rpc["served_executed"] == 1 and srv._requests.responder.core.load == 3,
            what="two queued",
        )  # type: ignore[union-attr]
        closing = asyncio.ensure_future(srv.close())
        replies = []
        for _ in range(2):
            got = await asyncio.to_thread(lambda: dealer.recv_multipart() if dealer.poll(5000) else None)
            assert got is not None, "a queued request was never answered"
            replies.append(got)
        gate.set()
        await closing
        parts = [frames[0].partition(b"\x00") for frames in replies]
        bodies = [msgpack.unpackb(body) for _, _, body in parts]
        assert [kind for kind, _, _ in parts] == [b"ERR", b"ERR"]
        assert sorted(b[4] for b in bodies) == ["q-1", "q-2"]  # causation ids: the queued requests
        assert all(b[13]["code"] == "shutting_down" and b[13]["retryable"] for b in bodies)
    finally:
        dealer.close(0)


@contextlib.asynccontextmanager
async def one_slot(fwd: Forwarder, max_queue: int, handler: Any) -> AsyncIterator[tuple[MessageBroker, MessageBroker]]:
    """A responder running one request at a time with ``max_queue`` waiting ("slow.work": ``handler``), and a
    caller."""
    async with (
        MessageBroker(*ep(fwd), max_concurrency=1, max_queue=max_queue) as srv,
        MessageBroker(*ep(fwd)) as cli,
    ):
        srv.serve("slow.work", handler)
        await srv.ready()
        yield srv, cli


async def test_a_full_queue_refuses_retryably_and_keeps_memory_bounded(forwarder: Forwarder) -> None:
    """max_concurrency=1, max_queue=2, a 0.1 s handler, 10 requests at once: the responder keeps at
    most 3 (1 running, 2 waiting) and answers the rest `overloaded` (retryable, the request never ran);
    callers try again, without using an attempt, until their deadline: every request completes, each
    run exactly once (before: the three attempts were spent in 0.35 s and most of them failed)."""
    ran: list[int] = []
    running = [0, 0]  # now, most at once

    async def slow(m: ProcessingMessage) -> Any:
        ran.append(m.content)
        running[0] += 1
        running[1] = max(running)
        await asyncio.sleep(0.1)
        running[0] -= 1
        return m.content

    async with one_slot(forwarder, 2, slow) as (srv, cli):
        results = await asyncio.gather(
            *(cli.request("slow.work", ProcessingMessage("q", i), timeout=5) for i in range(10)), return_exceptions=True
        )
        assert sorted(r.content for r in results if isinstance(r, ProcessingMessage)) == list(range(10)), results
        assert sorted(ran) == list(range(10))  # each ran once
        assert running[1] == 1
        stats = srv.statistics().rpc
        assert stats["served_overloaded"] > 0 and stats["served_executed"] == 10
        assert cli.statistics().rpc["requeues"] == stats["served_overloaded"]


async def test_an_overloaded_service_past_the_deadline_fails_saying_why(forwarder: Forwarder) -> None:
    went = asyncio.Event()

    async def slow(m: ProcessingMessage) -> Any:
        went.set()
        await asyncio.sleep(0.5)
        return m.content

    async with one_slot(forwarder, 0, slow) as (_, cli):
        first = asyncio.ensure_future(cli.request("slow.work", ProcessingMessage("q", 0), timeout=5))
        await asyncio.wait_for(went.wait(), 5)
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match="waiting"):
            await cli.request("slow.work", ProcessingMessage("q", 1), timeout=0.3)
        assert time.monotonic() - started < 1.0  # the deadline bounds the tries again
        assert (await first).content == 0


async def test_discover_knows_the_responders_before_the_first_request(forwarder: Forwarder) -> None:
    async with MessageBroker(*ep(forwarder), name="srv") as srv, MessageBroker(*ep(forwarder), name="cli") as cli:
        srv.serve("work.echo", lambda m: m.content)
        await srv.ready()
        await cli.discover()  # asks every responder to announce itself now
        await wait_until(lambda: cli.live_instances("work.echo") != [], 5, "the responder known without a request")
        caller = cli._requests.caller
        assert caller is not None
        queries_before = cli.statistics().published
        assert (await cli.request("work.echo", req(7), timeout=5)).content == 7
        assert cli.statistics().published == queries_before  # no discovery query for the first request


async def test_a_burst_of_requests_leaves_together_and_every_reply_comes_back(forwarder: Forwarder) -> None:
    async def slow_echo(m: ProcessingMessage) -> Any:
        if m.content % 2:
            await asyncio.sleep(0.01)  # its reply leaves outside the batch it came in: at once, not held
        return m.content

    async with MessageBroker(*ep(forwarder), name="srv") as srv, MessageBroker(*ep(forwarder), name="cli") as cli:
        srv.serve("work.echo", slow_echo)
        await srv.ready()
        await cli.wait_for_service("work.echo")
        caller = cli._requests.caller
        assert caller is not None
        flushes = 0
        real_flush = caller._flush

        def counting_flush() -> None:
            nonlocal flushes
            flushes += 1
            real_flush()

        caller._flush = counting_flush  # type: ignore[method-assign]
        replies = await asyncio.gather(*(cli.request("work.echo", req(i), timeout=10) for i in range(200)))
        assert [r.content for r in replies] == list(range(200))
        assert flushes <= 3  # 200 requests made in one loop turn left in one flush (a retry would add one)
        assert srv.statistics().rpc["served_undeliverable"] == 0
