"""A redundant bus: two forwarders, every client connected to both; one killed with SIGKILL mid-stream
loses nothing and delivers nothing twice; presence and requests carry on through the other."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from typing import Any

import pytest
from netbed_roles import publisher

from zmqbus import MessageBroker, MessageMetadata, ProcessingMessage
from zmqbus.framework.procs import spawn, stop_process, tcp_endpoints
from zmqbus.testing import Recorder, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def two_forwarders(spawn_forwarder: Any) -> tuple[str, str, list[Any]]:
    (pa, sa), (pb, sb) = tcp_endpoints(), tcp_endpoints()
    procs = [spawn_forwarder(pa, sa, stats_interval=None), spawn_forwarder(pb, sb, stats_interval=None)]
    return f"{pa},{pb}", f"{sa},{sb}", procs


async def test_killing_one_of_two_forwarders_at_10k_msgs_loses_nothing_and_duplicates_nothing(
    spawn_forwarder: Any,
) -> None:
    pub, sub, forwarders = two_forwarders(spawn_forwarder)
    count, rate = 40_000, 10_000.0
    async with MessageBroker(pub, sub, name="ha-subscriber") as receiver:
        got: list[int] = []
        receiver.subscribe("ha", "ha.data", lambda m: got.append(m.content["i"]))
        await receiver.ready(20)
        proc = spawn(publisher, pub, sub, "ha.data", count, rate, name="ha-publisher")
        try:
            await wait_until(lambda: len(got) >= count // 4, timeout=30, what="a quarter of the stream")
            os.kill(forwarders[0].pid, signal.SIGKILL)  # mid-stream, at 10,000 msg/s
            killed_at = len(got)
            await wait_until(lambda: len(got) >= count, timeout=60, what="every message")
            await asyncio.to_thread(proc.join, 30)
        finally:
            stop_process(proc, 5)
        # No wait for max_skew (2 s) is needed: every number arrived, so none can be counted lost later,
        # and one counted lost before its late copy came would already show in gaps.
        stats = receiver.statistics()
    assert killed_at < count, "the forwarder died mid-stream"
    assert len(got) == count and sorted(got) == list(range(count)), "each message exactly once"
    reordered = sum(1 for a, b in itertools.pairwise(got) if b < a)  # a late copy through the slower forwarder
    assert reordered < count // 100, f"{reordered} delivered after a later one"
    assert stats.gaps == 0, "nothing counted lost"
    assert stats.duplicates > 0, "both forwarders carried the stream (their copies were dropped)"
    assert proc.exitcode == 0


async def test_presence_and_requests_carry_on_through_the_other_forwarder(spawn_forwarder: Any) -> None:
    pub, sub, forwarders = two_forwarders(spawn_forwarder)
    async with (
        MessageBroker(pub, sub, name="svc", heartbeat=0.2) as responder,
        MessageBroker(pub, sub, name="caller") as caller,
    ):
        responder.serve("ha.echo", lambda m: m.content)
        await responder.ready(20)
        await caller.wait_for_service("ha.echo", timeout=20)
        os.kill(forwarders[1].pid, signal.SIGKILL)
        forwarders[1].join(5)
        for i in range(20):
            reply = await caller.request("ha.echo", ProcessingMessage("ha.echo", {"i": i}), timeout=5)
            assert reply.content == {"i": i}
        # a new caller discovers the responder through the forwarder that is left
        async with MessageBroker(pub, sub, name="late") as late:
            assert await late.wait_for_service("ha.echo", timeout=10) == 1
        # presence keeps flowing: the instance stays alive in the directory past its liveness (3 x 0.2 s),
        # checked at every announcement it would otherwise have missed
        started = time.monotonic()
        while time.monotonic() - started < 1.2:
            assert caller.live_instances("ha.echo")
            await asyncio.sleep(0.1)
        events = Recorder()
        responder.subscribe("t", "ha.event", events)
        await responder.ready(10)
        await caller.publish(ProcessingMessage("ha.event", {}, MessageMetadata()))
        await events.wait_for()
        assert caller.statistics().gaps == 0


def test_the_readmes_redundant_bus_commands(tmp_path: Any) -> None:
    """The README's four lines, as written (its ports moved to free ones): two forwarders, then
    `zmqbus watch` through both sees a message once."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    block = re.search(r"<!-- redundant-bus -->\n\s*```\n(.*?)```", text, re.S)
    assert block is not None
    lines = [line.strip() for line in block.group(1).strip().splitlines()]
    assert len(lines) == 4 and lines[-1] == "zmqbus watch"
    ports = {p: str(tcp_endpoints()[0].rsplit(":", 1)[1]) for p in ("5570", "5571", "5580", "5581")}
    for old, new in ports.items():
        lines = [line.replace(f":{old}", f":{new}") for line in lines]
    env = dict(os.environ)
    for assignment in lines[2].removeprefix("export ").split():
        key, _, value = assignment.partition("=")
        env[key] = value
    cli = [sys.executable, "-m", "zmqbus.cli"]
    procs = [
        subprocess.Popen(
            cli + line.removeprefix("zmqbus ").removesuffix(" &").split(), stderr=subprocess.PIPE, text=True
        )
        for line in lines[:2]
    ]
    watch = subprocess.Popen(
        cli + ["watch", "-n", "2", "--timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    procs.append(watch)  # ended by pid below, whatever happens
    try:
        assert watch.stderr is not None
        assert "watching" in watch.stderr.readline() or "watching" in watch.stderr.readline()
        for topic in ("ha.first", "ha.second"):
            sent = subprocess.run(
                cli + ["send", topic, "--content", '{"n": 1}'], env=env, capture_output=True, text=True, timeout=30
            )
            assert sent.returncode == 0, sent.stderr
        out, _ = watch.communicate(timeout=40)
        # through two forwarders, each delivered once: a duplicate would have been the second line
        assert [line.split()[1] for line in out.splitlines()] == ["ha.first", "ha.second"], out  # after the time
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=10)
