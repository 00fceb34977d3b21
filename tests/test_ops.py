"""The operator's commands (ls, req, ping, stats, dlq, up --check) as real processes against a real bus.

The bus and its components run in the test (the kit's ``bus``); each command
runs as ``python -m zmqbus.cli`` in a thread, so the components keep serving.
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

from zmqbus import Component, ProcessingMessage, Processor, on, service
from zmqbus.components.error_handler import ErrorHandler
from zmqbus.framework.procs import tcp_endpoints
from zmqbus.testing import TestBus, wait_until

CLI = [sys.executable, "-m", "zmqbus.cli"]

pytestmark = pytest.mark.slow


class Doubler(Processor):
    @service("math.double")
    async def double(self, message: ProcessingMessage) -> Any:
        if message.content.get("x") is None:
            raise KeyError("x")
        return message.content["x"] * 2


class Picky(Component):
    """Dead-letters what it cannot read."""

    @on("orders.new")
    async def new(self, message: ProcessingMessage) -> None:
        raise ValueError(f"unreadable order {message.content!r}")


def cli(
    bus: TestBus | None,
    *args: str,
    timeout: float = 30,
    cwd: str | None = None,
    endpoints: tuple[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    pub, sub = endpoints or (bus.pub_endpoint, bus.sub_endpoint)  # type: ignore[union-attr]
    env = dict(os.environ, ZMQBUS_PUB=pub, ZMQBUS_SUB=sub)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


async def acli(bus: TestBus | None, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, bus, *args, **kw)


async def test_ls_lists_services_and_their_instances(bus: TestBus) -> None:
    first, second = await bus.start_all(Doubler, Doubler)
    done = await acli(bus, "ls", "--json")
    assert done.returncode == 0, done.stderr
    table = json.loads(done.stdout)
    assert {i["instance"] for i in table["math.double"]} == {
        first.message_broker.client_id,
        second.message_broker.client_id,
    }
    assert all(i["endpoint"].startswith("tcp://") and i["load"] == 0 for i in table["math.double"])
    text = (await acli(bus, "ls")).stdout
    assert text.splitlines()[0].split() == [
        "SERVICE",
        "INSTANCE",
        "PID",
        "HOST",
        "VERSION",
        "UP",
        "ENDPOINT",
        "LOAD",
        "SEEN",
    ]
    assert all(i["pid"] == os.getpid() and i["host"] and i["version"] for i in table["math.double"])
    assert sum(line.startswith("math.double ") for line in text.splitlines()) == 2


async def test_req_prints_the_reply_and_tells_outcomes_apart(bus: TestBus) -> None:
    await bus.start(Doubler)
    ok = await acli(bus, "req", "math.double", "--content", '{"x": 21}')
    assert (ok.returncode, json.loads(ok.stdout)) == (0, 42), ok.stderr
    full = json.loads(
        (await acli(bus, "req", "math.double", "--content", '{"x": 1}', "--json", "--correlation-id", "c-9")).stdout
    )
    assert full["content"] == 2 and full["correlation_id"] == "c-9"
    remote = await acli(bus, "req", "math.double", "--content", "{}")
    assert remote.returncode == 3 and "RemoteError" in remote.stderr and "KeyError" in remote.stderr
    assert "Traceback" not in remote.stderr
    missing = await acli(bus, "req", "no.such.service", "--timeout", "1")
    assert missing.returncode == 4 and "NoResponder" in missing.stderr
    with bus.stall("math.double", 5.0):
        slow = await acli(bus, "req", "math.double", "--content", '{"x": 1}', "--timeout", "1")
    assert slow.returncode == 5 and "RequestTimeout" in slow.stderr
    bad = await acli(bus, "req", "math.double", "--content", "{x")
    assert bad.returncode == 2 and "not JSON" in bad.stderr


async def test_ping_is_a_health_probe(bus: TestBus) -> None:
    await bus.start(Doubler)
    healthy = await acli(bus, "ping", "--service", "math.double")
    assert healthy.returncode == 0, healthy.stderr
    assert "forwarder" in healthy.stdout and "service math.double: ok, 1 instance(s)" in healthy.stdout
    sick = await acli(bus, "ping", "--service", "math.triple", "--timeout", "1")
    assert sick.returncode == 4 and "math.triple" in sick.stderr
    started = time.monotonic()
    nobody = await acli(None, "ping", "--timeout", "1.5", endpoints=tcp_endpoints())
    assert nobody.returncode == 1 and "BusTimeout" in nobody.stderr
    assert time.monotonic() - started < 1.5 + 5, "the timeout is the whole command's"
    assert "waiting for the forwarder at" in nobody.stderr


async def test_stats_answers_at_once_and_watches(bus: TestBus) -> None:
    """The kit's forwarder publishes no periodic statistics (stats_interval None): it answers the query."""
    await bus.publish("some.thing", {})
    started = time.monotonic()
    done = await acli(bus, "stats", "--json")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 4, "answered at once, not at the next report"
    assert json.loads(done.stdout)["frames_in"] >= 1
    assert json.loads(done.stdout)["connections_live"] >= 1  # this command's own connection at least
    watched = await acli(bus, "stats", "--watch", "--interval", "0.2", "--timeout", "1.5", "--json")
    assert watched.returncode == 0, watched.stderr
    reports = [json.loads(line) for line in watched.stdout.splitlines()]
    assert len(reports) >= 3 and "frames_in_per_s" not in reports[0]
    assert all(r["frames_in_per_s"] >= 0 and "bytes_out_per_s" in r for r in reports[1:])  # rates from the 2nd


def test_commands_say_they_wait_honour_their_timeout_and_sigterm() -> None:
    endpoints = tcp_endpoints()  # nothing listens there
    started = time.monotonic()
    done = cli(None, "watch", "--timeout", "3", endpoints=endpoints)
    elapsed = time.monotonic() - started
    assert done.returncode == 1 and "BusTimeout" in done.stderr and "Traceback" not in done.stderr
    assert "waiting for the forwarder at" in done.stderr
    assert elapsed < 3 + 4, f"watch --timeout 3 took {elapsed:.1f} s"

    env = dict(os.environ, ZMQBUS_PUB=endpoints[0], ZMQBUS_SUB=endpoints[1])
    proc = subprocess.Popen([*CLI, "watch"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        assert "waiting for the forwarder" in proc.stderr.readline()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=5)


def test_global_options_are_taken_after_the_command_too() -> None:
    done = cli(None, "watch", "--timeout", "0.5", "--log-level", "info", endpoints=tcp_endpoints())
    assert "No such option" not in done.stderr and done.returncode == 1
    assert "BusTimeout" in done.stderr


async def test_run_finds_a_module_in_the_current_folder_and_says_it_is_up(bus: TestBus, tmp_path: Path) -> None:
    (tmp_path / "orders.py").write_text(
        "from zmqbus import Processor, service\n\n"
        "class Echo(Processor):\n"
        "    @service('echo')\n"
        "    async def echo(self, message):\n"
        "        return message.content\n"
    )
    env = dict(os.environ, ZMQBUS_PUB=bus.pub_endpoint, ZMQBUS_SUB=bus.sub_endpoint)
    proc = subprocess.Popen([*CLI, "run", "orders:Echo"], cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        line = await asyncio.to_thread(proc.stderr.readline)
        assert line.startswith("zmqbus run: echo ready (pid"), line
        assert "serving echo, echo.status" in line
        assert await bus.request("echo", {"a": 1}) == {"a": 1}
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 10)
        proc.communicate(timeout=5)
    assert proc.returncode == 143


async def test_dead_letters_survive_the_error_handlers_restart_and_are_replayed(bus: TestBus, tmp_path: Path) -> None:
    path = str(tmp_path / "dead.jsonl")
    await bus.start(Picky)
    handler = await bus.start(ErrorHandler, dead_letters=path)
    await bus.publish("orders.new", {"id": 1}, correlation_id="o-1")
    await wait_until(lambda: len(handler.dead_letters) == 1, what="a dead letter")
    listed = json.loads((await acli(bus, "dlq", "ls", "--json")).stdout)
    assert [(x["component"], x["correlation_id"]) for x in listed] == [("picky", "o-1")]
    message_id = listed[0]["message_id"]

    await bus.stop(handler)
    restarted = await bus.start(ErrorHandler, dead_letters=path)
    assert list(restarted.dead_letters) == [message_id], "kept across the restart"
    shown = await acli(bus, "dlq", "show", message_id)
    assert shown.returncode == 0 and json.loads(shown.stdout)["content"] == {"id": 1}
    orders = await bus.record("orders.new")
    replayed = await acli(bus, "dlq", "replay", message_id)
    assert replayed.returncode == 0 and f"replayed {message_id}" in replayed.stdout
    assert (await orders.wait_for(correlation_id="o-1")).content == {"id": 1}
    await wait_until(lambda: message_id not in restarted.dead_letters)
    missing = await acli(bus, "dlq", "show", message_id)
    assert missing.returncode == 1 and "no dead letter" in missing.stderr
    text = (await acli(bus, "dlq", "ls")).stdout  # the replayed order failed again: a new dead letter
    assert "picky  orders.new  cid=o-1  ValueError: unreadable order" in text


def test_up_check_names_every_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[bus]\nsubs = "ipc:///x"\nforwarder = "yes"\n\n[[components]]\nclass = "a:B"\n\n'
        '[[component]]\nclass = "zmqbus.components.ingest:ChunkAnalyzer"\nreplica = 2\n'
    )
    for args in (("up", "--check", str(bad)), ("up", str(bad))):
        done = cli(None, *args, endpoints=tcp_endpoints(), timeout=30)
        assert done.returncode == 1, done.stderr
        assert "4 error(s)" in done.stderr
        assert "unknown key 'components' in the file (did you mean 'component'?)" in done.stderr
        assert "unknown key 'subs' in [bus] (did you mean 'sub'?); valid keys: pub, sub," in done.stderr
        assert "[bus]: forwarder must be true or false, not 'yes'" in done.stderr
        assert "unknown key 'replica' in component #1" in done.stderr
        assert "zmqbus up:" not in done.stderr, "nothing started"
    shipped = Path(__file__).parent.parent / "topology.toml"
    ok = cli(None, "up", "--check", str(shipped), endpoints=tcp_endpoints())
    assert ok.returncode == 0 and "valid; a forwarder and 5 component(s), 7 process(es)" in ok.stdout
    assert "replicas = an integer" in cli(None, "up", "--help", endpoints=tcp_endpoints()).stdout


@pytest.mark.parametrize(
    "data,error",
    [
        ({"component": [{"class": "m:C", "replicas": 0}]}, "replicas must be at least 1, not 0"),
        ({"component": [{"name": "x"}]}, "has no 'class'"),
        ({"component": {"class": "m:C"}}, "write [[component]], not [component]"),
        ({"component": [{"class": "nocolon"}]}, "class must be module:Class"),
        ({"bus": {"pub": 5570}}, "[bus]: pub must be a string, not 5570"),
    ],
)
def test_topology_errors(data: dict[str, Any], error: str) -> None:
    from zmqbus.core.topology import topology_errors

    assert any(error in e for e in topology_errors(data)), topology_errors(data)


async def test_the_forwarder_answers_a_flood_of_statistics_queries_at_most_20_times_a_second(bus: TestBus) -> None:
    """PROTOCOL.md section 6: a query makes the forwarder publish its statistics, rate-limited."""
    from zmqbus.bus.forwarder import QUERY_TOPIC, STATS_TOPIC

    reports = await bus.record(STATS_TOPIC)
    started = time.monotonic()
    for _ in range(200):
        await bus.client.publish(ProcessingMessage(QUERY_TOPIC, {}))
    await reports.wait_for()
    await asyncio.sleep(0.5)  # the bound is per second: let the flood's window pass
    elapsed = time.monotonic() - started
    assert 1 <= len(reports.messages) <= 1 + 20 * elapsed, (len(reports.messages), elapsed)
