"""Operating, the rest (issue 25): hung components restarted, failed workflows dead-lettered and replayed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_ops import acli

from zmqbus.components.error_handler import ErrorHandler
from zmqbus.components.ingest import ChunkAnalyzer, DocumentHandler, IngestManager
from zmqbus.framework.procs import tcp_endpoints
from zmqbus.testing import TestBus, wait_until

from conftest import end_process, pid_alive

CLI = [sys.executable, "-m", "zmqbus.cli"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_up_restarts_a_component_that_stops_answering_its_liveness_check(tmp_path: Path) -> None:
    pub, sub = tcp_endpoints()
    topo = tmp_path / "topology.toml"
    topo.write_text(
        f'[bus]\npub = "{pub}"\nsub = "{sub}"\n[[component]]\nclass = "zmqbus.components.ingest:ChunkAnalyzer"\n'
    )
    proc = subprocess.Popen([*CLI, "up", str(topo), "--hung-after", "2"], stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def wait_for(pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in list(lines):
                if found := re.search(pattern, line):
                    return found
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{''.join(lines)}"
            time.sleep(0.05)

    try:
        first = int(wait_for(r"started ChunkAnalyzer#1 \(pid (\d+)\)").group(1))
        wait_for(rf"chunk_analyzer ready \(pid {first}\)")
        os.kill(first, signal.SIGSTOP)  # alive, but its event loop no longer turns
        stopped = time.monotonic()
        wait_for(rf"ChunkAnalyzer#1 \(pid {first}\) stopped answering its liveness check")
        second = int(wait_for(r"restarted ChunkAnalyzer#1 \(pid (\d+)\)").group(1))
        noticed = time.monotonic() - stopped
        wait_for(rf"chunk_analyzer ready \(pid {second}\)")
        assert second != first and not pid_alive(first), "the hung process was killed"
        assert noticed < 2 + 1 + 10, f"noticed after {noticed:.1f} s"
    finally:
        end_process(proc)
        reader.join(10)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 143, "".join(lines)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_failed_workflow_is_dead_lettered_and_dlq_replay_runs_it_again(bus: TestBus) -> None:
    """README: the message that began a workflow ended by fail_process is dead-lettered, and
    `zmqbus dlq replay` runs the workflow again."""
    errors, *_ = await bus.start_all(ErrorHandler, IngestManager, DocumentHandler, ChunkAnalyzer)
    failed = await bus.record("ingest.failed")
    doc = {"document_id": "doomed", "text": "one two three", "fail": "fatal"}
    await bus.publish("ingest.request", doc, correlation_id="wf-doomed")
    await failed.wait_for(correlation_id="wf-doomed", timeout=20)
    await wait_until(lambda: len(errors.dead_letters) == 1, what="the workflow's dead letter")
    listed = json.loads((await acli(bus, "dlq", "ls", "--json", "--type", "ingest.request")).stdout)
    assert [(x["component"], x["correlation_id"]) for x in listed] == [("ingest_manager", "wf-doomed")]
    assert listed[0]["reason"].startswith("workflow failed: ValueError") and listed[0]["at"] > 0
    replayed = await acli(bus, "dlq", "replay", listed[0]["message_id"])
    assert replayed.returncode == 0, replayed.stderr
    await failed.wait_for(correlation_id="wf-doomed", count=2, timeout=20)  # it ran again (and failed again)
    assert errors.total == 2  # once per run: the analyzer's report (the manager's is the same root cause)
    await wait_until(lambda: len(errors.dead_letters) == 1, what="the second run's dead letter")
    purged = await acli(bus, "dlq", "purge", "--all", "--component", "ingest_manager")
    assert purged.returncode == 0 and "purged 1 dead letter(s)" in purged.stdout, purged.stderr
    assert (await acli(bus, "dlq", "ls")).stdout.strip() == "no dead letters"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_zmqbus_tracing_turns_tracing_on_without_code(spawn_forwarder: Any) -> None:
    """README: `ZMQBUS_TRACING=console zmqbus run module:Class` traces the component, service.name its name."""
    import asyncio

    from zmqbus import MessageBroker, ProcessingMessage

    pub, sub = tcp_endpoints()
    spawn_forwarder(pub, sub, stats_interval=None)
    env = dict(os.environ, ZMQBUS_PUB=pub, ZMQBUS_SUB=sub, ZMQBUS_TRACING="console")
    env.pop("OTEL_SERVICE_NAME", None)
    proc = subprocess.Popen(
        [*CLI, "run", "zmqbus.components.ingest:ChunkAnalyzer"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        async def ask() -> Any:
            async with MessageBroker(pub, sub) as b:
                await b.wait_for_service("ingest.analyze", timeout=30)
                chunk = {"document_id": "d", "index": 0, "text": "a b a"}
                return (await b.request("ingest.analyze", ProcessingMessage("ingest.analyze", chunk))).content

        assert asyncio.run(ask())["words"] == 3
    finally:
        end_process(proc)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 143, err
    assert '"service.name": "chunk_analyzer"' in out and '"name": "process ingest.analyze"' in out, out[-2000:]
    bad = subprocess.run(
        [*CLI, "run", "zmqbus.components.ingest:ChunkAnalyzer"],
        env=dict(env, ZMQBUS_TRACING="jaeger"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "ZMQBUS_TRACING='jaeger': use one of console, otlp" in bad.stderr, bad.stderr


# -- who is serving, and how it goes: ls, ping, ls --stats, stable labels, per-replica ports -----------


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_ls_and_ping_name_each_instances_process_and_ls_stats_sums_their_counters(bus: TestBus) -> None:
    spawned = await bus.spawn("zmqbus.components.ingest:ChunkAnalyzer", replicas=2)
    chunk = {"document_id": "d", "index": 0, "text": "a b a"}
    for _ in range(20):
        await bus.request("ingest.analyze", chunk)
    table = json.loads((await acli(bus, "ls", "--json")).stdout)["ingest.analyze"]
    assert sorted(i["pid"] for i in table) == sorted(spawned.pids)
    assert all(i["host"] and i["version"] and 0 <= i["uptime"] < 120 for i in table)
    ping = await acli(bus, "ping", "--service", "ingest.analyze")
    assert ping.returncode == 0 and all(f"pid {pid}@" in ping.stdout for pid in spawned.pids), ping.stdout
    figures = json.loads((await acli(bus, "ls", "--stats", "--json")).stdout)["ingest.analyze"]
    assert (figures["instances"], figures["requests"], figures["errors"]) == (2, 20, 0)
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] < 1000
    text = (await acli(bus, "ls", "--stats")).stdout
    assert text.splitlines()[0].split() == ["SERVICE", "INSTANCES", "REQUESTS", "ERRORS", "P50", "P99"]


def _two_free_ports() -> int:
    """A port p with p + 1 free too, a moment ago (replica 1 and 2 of a metrics base port)."""
    import socket

    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)
    raise AssertionError("no two consecutive free ports")


def _scrape(port: int, timeout: float = 30.0) -> dict[str, Any]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + timeout
    while True:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            return {f.name: f for f in text_string_to_metric_families(text)}
        except OSError:
            assert time.monotonic() < deadline, f"nothing on port {port}"
            time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_replicas_serve_metrics_on_their_own_ports_with_labels_that_survive_a_restart(spawn_forwarder: Any) -> None:
    pub, sub = tcp_endpoints()
    spawn_forwarder(pub, sub, stats_interval=None)
    base = _two_free_ports()
    env = dict(os.environ, ZMQBUS_PUB=pub, ZMQBUS_SUB=sub)

    def labels_and_ids() -> list[tuple[tuple[tuple[str, str], ...], str]]:
        out = []
        for port in (base, base + 1):
            info = _scrape(port)["zmqbus_client_info"].samples[0].labels
            out.append((tuple(sorted((k, v) for k, v in info.items() if k != "client_id")), info["client_id"]))
        return out

    runs = []
    for _ in range(2):  # a restart: the same labels, a new client id
        proc = subprocess.Popen(
            [*CLI, "run", "zmqbus.components.ingest:ChunkAnalyzer", "--replicas", "2", "--metrics-port", str(base)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            runs.append(labels_and_ids())
        finally:
            end_process(proc)
        assert proc.returncode == 143
    (first, second) = runs
    assert [dict(labels)["replica"] for labels, _ in first] == ["1", "2"]
    assert all(dict(labels)["name"] == "chunk_analyzer" for labels, _ in first)
    assert [labels for labels, _ in first] == [labels for labels, _ in second]
    assert [cid for _, cid in first] != [cid for _, cid in second]


@pytest.mark.slow
async def test_watch_prints_times_and_send_repeat_its_rate(bus: TestBus) -> None:
    import asyncio

    watching = asyncio.ensure_future(acli(bus, "watch", "clock.#", "-n", "3", "--timeout", "30"))
    while not watching.done():  # until the watcher (its own process, subscribing meanwhile) has seen 3
        await bus.publish("clock.tick", {})
        await asyncio.wait([watching], timeout=0.2)
    sent = await acli(bus, "send", "clock.tick", "--repeat", "3")
    assert sent.returncode == 0 and re.search(r"sent 3 x clock.tick in [\d.]+ s, [\d,]+ msg/s", sent.stderr), (
        sent.stderr
    )
    watched = await watching
    lines = watched.stdout.splitlines()
    assert len(lines) == 3 and all(re.match(r"\d\d:\d\d:\d\d\.\d{3}  clock\.tick  ", line) for line in lines), lines
