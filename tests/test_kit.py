"""The test kit (zmqbus.testing): its plugin without a conftest, its recorders, its faults on the real transport."""

from __future__ import annotations

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
