"""The test kit (zmqbus.testing): its plugin without a conftest, its recorders, its faults on the real transport."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zmqbus import Processor, RemoteError, RequestTimeout, RetryPolicy, ZmqbusError, service
from zmqbus.testing import Recorder, TestBus, wait_until


class Doubler(Processor):
    @service("math.double")
    async def double(self, message):  # type: ignore[no-untyped-def]
        return message.content["x"] * 2


@pytest.mark.slow
def test_the_plugin_needs_no_conftest(tmp_path: Path) -> None:
    """A user's folder with one test file and nothing else: the installed plugin gives ``bus`` and runs
    ``async def`` tests; plain tests are left alone."""
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent("""
        from zmqbus import Processor, service

        class Echo(Processor):
            @service("echo")
            async def echo(self, message):
                return message.content

        async def test_echo(bus):
            await bus.start(Echo)
            assert await bus.request("echo", {"a": 1}) == {"a": 1}

        def test_plain():
            assert True
    """)
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


async def test_a_recorder_says_what_it_got_when_a_wait_fails(bus: TestBus) -> None:
    rec = await bus.record("kit.#")
    await bus.publish("kit.a", {"n": 1}, correlation_id="c-1", target="someone")
    got = await rec.wait_for(message_type="kit.a", correlation_id="c-1", target="someone", source="test")
    assert got.content == {"n": 1} and rec.assert_published(content={"n": 1}) is got
    with pytest.raises(
        AssertionError,
        match=r"1 message\(s\) on 'kit.#' with correlation_id='c-2': 0 matched; "
        r"recorded 1: \[kit.a\(correlation_id='c-1'",
    ):
        await rec.wait_for(correlation_id="c-2", timeout=0.2)
    with pytest.raises(AssertionError, match=r"no message on 'kit\.#' with message_type='kit\.b'"):
        rec.assert_published(message_type="kit.b")
    with pytest.raises(AssertionError, match="1 unexpected message"):
        await rec.assert_none(within=0.05, message_type="kit.a")
    with pytest.raises(TypeError, match="cannot match on \\['colour'\\]"):
        rec.matching(colour="red")
    await bus.publish("kit.a", {"n": 2})
    await rec.wait_for(count=2)
    assert [m.content["n"] for m in rec.matching(message_type="kit.a")] == [1, 2]


async def test_failing_and_stalling_a_service(bus: TestBus) -> None:
    await bus.start(Doubler)
    assert await bus.request("math.double", {"x": 2}) == 4
    with bus.fail("math.double", ValueError("boom"), times=1):
        with pytest.raises(RemoteError, match="boom"):
            await bus.request("math.double", {"x": 2}, retry=RetryPolicy(attempts=1))
        assert await bus.request("math.double", {"x": 3}) == 6  # only the first call failed
    with bus.stall("math.double", 2.0):
        with pytest.raises(RequestTimeout):
            await bus.request("math.double", {"x": 2}, timeout=0.3)
    assert await bus.request("math.double", {"x": 5}) == 10  # restored
    with pytest.raises(ZmqbusError, match="no component started in this process serves 'nope'"):
        with bus.fail("nope"):
            pass


async def test_a_restarted_forwarder_and_the_bus_flows_again(bus: TestBus) -> None:
    rec = await bus.record("kit.#")
    await bus.publish("kit.before", {})
    await rec.wait_for(message_type="kit.before")
    await bus.restart_forwarder(downtime=0.1)
    await bus.publish("kit.after", {})
    await rec.wait_for(message_type="kit.after")
    assert bus.forwarder is not None and bus.forwarder.statistics().frames_in >= 1


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_spawned_component_processes_and_a_kill_9(bus: TestBus) -> None:
    """Two analyzer processes; one is killed with SIGKILL; requests fail over to the other."""
    first = await bus.spawn("zmqbus.components.ingest:ChunkAnalyzer")
    second = await bus.spawn("zmqbus.components.ingest:ChunkAnalyzer")
    assert len(bus.client.live_instances("chunk_analyzer.status")) == 2
    chunk = {"document_id": "d", "index": 0, "text": "a b a"}
    by = {(await bus.request("ingest.analyze", chunk))["by"] for _ in range(6)}
    assert len(by) == 2, "both processes served"
    await bus.kill(first)
    assert first.alive() == 0 and second.alive() == 1
    retry = RetryPolicy(attempts=4, attempt_timeout=1.0)
    for _ in range(4):
        reply = await bus.request("ingest.analyze", chunk, timeout=8.0, retry=retry)
        assert reply["words"] == 3
    await wait_until(
        lambda: len(bus.client.live_instances("chunk_analyzer.status")) == 1,
        timeout=10,
        what="the killed instance to drop out of the directory",
    )


async def test_outside_pytest_a_test_bus_is_a_context_manager() -> None:
    async with TestBus() as bus:
        await bus.start(Doubler)
        assert await bus.request("math.double", {"x": 21}) == 42
        folder = os.path.dirname(bus.pub_endpoint.removeprefix("ipc://"))
    assert bus.forwarder is None and not os.path.exists(folder)
    with pytest.raises(ZmqbusError, match="closed"):
        await bus.record("x")


def test_recorders_stand_alone() -> None:
    rec = Recorder()
    assert rec.pattern == "#" and rec.matching() == []


# -- faults go through the component's own path (issue 23) ------------------------------------


async def test_an_injected_failure_is_reported_counted_and_logged_like_a_real_one(
    bus: TestBus, caplog: pytest.LogCaptureFixture
) -> None:
    from kit_components import Loans

    from zmqbus.components.error_handler import ErrorHandler

    loans, errors = await bus.start_all(Loans, ErrorHandler)
    reports = await bus.record("error.#")
    once = RetryPolicy(attempts=1)
    with pytest.raises(RemoteError, match="may not be lent"):  # the real failure
        await bus.request("loans.reserve", {"book": "forbidden"}, retry=once, correlation_id="real")
    with bus.fail("loans.reserve", ValueError("injected: the shelf is on fire")):
        with pytest.raises(RemoteError, match="the shelf is on fire") as injected:
            await bus.request("loans.reserve", {"book": "b-1"}, retry=once, correlation_id="fake")
    assert injected.value.error_type == "ValueError"
    real = await reports.wait_for(correlation_id="real")
    fake = await reports.wait_for(correlation_id="fake")
    assert real.topic == fake.topic == "error.loans" and real.content["error_type"] == fake.content["error_type"]
    await wait_until(lambda: errors.total == 2, what="both failures counted by the error handler")
    assert loans.metrics.failed == 2 and loans.reserved == []
    assert sum("service loans.reserve raised ValueError" in r.getMessage() for r in caplog.records) >= 1
    assert await bus.request("loans.reserve", {"book": "b-2"}) is not None and loans.reserved == ["b-2"]


async def test_a_stall_past_the_deadline_never_runs_the_handler(bus: TestBus) -> None:
    """README: a responder skips work whose deadline has passed; a stall is abandoned at it."""
    from kit_components import Loans

    loans = await bus.start(Loans)
    with bus.stall("loans.reserve", 0.6):
        with pytest.raises(RequestTimeout):
            await bus.request("loans.reserve", {"book": "b-1"}, timeout=0.2, retry=RetryPolicy(attempts=1))
        await wait_until(
            lambda: loans.message_broker.statistics().rpc["served_abandoned"] == 1, what="the stall abandoned"
        )
        await asyncio.sleep(0.6)  # past the stall's end: the handler would have run by now
    assert loans.reserved == []
    left = await bus.request("loans.reserve", {"book": "b-2"}, timeout=4.0)
    assert 3.0 < left["left"] <= 4.0  # the handler sees its deadline: time_left()


async def test_deadlines_cancel_async_handlers_unless_the_service_says_otherwise(bus: TestBus) -> None:
    from kit_components import Loans

    loans = await bus.start(Loans)
    once = RetryPolicy(attempts=1)
    with pytest.raises(RequestTimeout):
        await bus.request("loans.slow", {"book": "s-1", "seconds": 5}, timeout=0.3, retry=once)
    await wait_until(lambda: loans.cancelled == ["s-1"], what="the slow handler cancelled at its deadline")
    with pytest.raises(RequestTimeout):
        await bus.request("loans.stubborn", {"book": "t-1", "seconds": 0.5}, timeout=0.2, retry=once)
    with pytest.raises(RequestTimeout):  # sync: a thread is never cancelled; it reads time_left() itself
        await bus.request("loans.sync", {"seconds": 0.4}, timeout=0.2, retry=once)
    await wait_until(lambda: len(loans.finished) == 2, what="the stubborn and the sync handler to finish")
    assert sorted(loans.finished) == ["sync left=0.0", "t-1"] and loans.cancelled == ["s-1"]
    rpc = loans.message_broker.statistics().rpc
    assert rpc["served_abandoned"] == 1
    assert await bus.request("loans.slow", {"book": "s-2", "seconds": 0.05}) == "done"  # in time: untouched


# -- stand-ins and recorded requests --------------------------------------------------------------


async def test_one_component_alone_with_its_services_mocked(bus: TestBus) -> None:
    from kit_components import Desk

    catalog = await bus.mock_service("catalog.find", lambda m: {"id": "book-" + m.content["title"]})
    loans = await bus.mock_service("loans.reserve", {"ok": True})
    made = bus.requests("#")
    await bus.start(Desk)
    assert await bus.request("desk.lend", {"title": "dune"}) == {"lent": "book-dune"}
    assert [c.content for c in catalog.calls] == [{"title": "dune"}]
    assert (await loans.wait_for()).content == {"book": "book-dune"}
    assert [m.topic for m in made.matching(source="desk")] == ["catalog.find", "loans.reserve"]
    assert (
        made.assert_published(topic="loans.reserve").metadata.correlation_id == catalog.calls[0].metadata.correlation_id
    )
    loans.reply = ValueError("no copies left")
    with pytest.raises(RemoteError, match="no copies left"):
        await bus.request("desk.lend", {"title": "emma"}, retry=RetryPolicy(attempts=1))
    assert len(loans.calls) == 2 and len(bus.requests("loans.*").messages) == 0  # a new recorder starts empty
    with pytest.raises(ZmqbusError, match="served already"):
        await bus.mock_service("catalog.find", {})


# -- spawn: a child that dies at start-up is reported at once -------------------------------------


@pytest.mark.slow
async def test_spawn_reports_a_child_that_dies_at_start_up_at_once(bus: TestBus) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ZmqbusError, match=r"exited with code 1") as failed:
        await bus.spawn("kit_components:BrokenAtStart")
    assert loop.time() - started < 5.0, "reported when the child exited, not after the 10 s timeout"
    assert "RuntimeError: the catalog database is unreachable" in str(failed.value)  # its last lines
    assert "opening the catalog database" in bus.spawned[0].output()  # all it wrote


@pytest.mark.slow
def test_spawn_works_from_a_script_on_standard_input(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import asyncio
        from zmqbus.testing import TestBus

        async def main():
            async with TestBus() as bus:
                spawned = await bus.spawn("zmqbus.components.ingest:ChunkAnalyzer")
                chunk = {"document_id": "d", "index": 0, "text": "a b a"}
                assert (await bus.request("ingest.analyze", chunk))["words"] == 3
                print("served by pid", spawned.pids[0])

        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "served by pid" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_spawned_replica_ends_when_its_test_process_dies(tmp_path: Path) -> None:
    """zmqbus.testing.spawning: a replica whose parent dies is told to stop within a second and is
    killed 5 s later if it has not ended: a killed test run leaves no process behind. Checked from
    outside both: the parent is killed with SIGKILL, the replica watched by pid."""
    import signal
    import time

    from conftest import end_process, pid_alive

    script = textwrap.dedent("""
        import asyncio, sys
        from zmqbus.testing import TestBus

        async def main():
            bus = TestBus()
            spawned = await bus.spawn("zmqbus.components.ingest:ChunkAnalyzer")
            print(spawned.pids[0], flush=True)
            await asyncio.sleep(120)  # killed before this ends

        asyncio.run(main())
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    replica = 0
    try:
        assert parent.stdout is not None
        replica = int(parent.stdout.readline())
        assert pid_alive(replica)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10  # SIGTERM within 0.5 s, its own SIGKILL 5 s after at most
        while pid_alive(replica) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(replica), "the replica outlived its parent"
    finally:
        end_process(parent, signal.SIGKILL, 5)
        if parent.stdout is not None:
            parent.stdout.close()
        if replica and pid_alive(replica):
            os.kill(replica, signal.SIGKILL)
