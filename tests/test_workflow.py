"""The example workflow with real processes: every component and the forwarder supervised,
as ``zmqbus demo`` / ``zmqbus up`` run them. Every process is ended by pid at teardown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from zmqbus import MessageBroker, ProcessingMessage
from zmqbus.core.config import ipc_endpoints
from zmqbus.framework.demo import demo_topology, make_document, submit_and_wait
from zmqbus.framework.runner import load_topology
from zmqbus.framework.supervisor import Supervisor
from zmqbus.testing import wait_until

pytestmark = pytest.mark.timeout(120)


class Running:
    def __init__(self, tmp: str) -> None:
        self.pub, self.sub = ipc_endpoints(tmp)
        self.events: list[str] = []
        self.sup = Supervisor(
            demo_topology(self.pub, self.sub, analyzers=3), log_level=logging.ERROR, on_event=self.events.append
        )
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self.sup.run_until, args=(self._stop.is_set, 0.05), daemon=True)

    def start(self) -> None:
        self.sup.start()
        self._watch.start()

    def stop(self) -> None:
        self._stop.set()
        self._watch.join(5)
        self.sup.stop()

    def pid(self, label: str) -> int:
        pid = self.sup.pids()[label]
        assert pid is not None
        return pid

    async def run(self, docs: list[dict[str, Any]], timeout: float = 60) -> dict[str, Any]:
        return await submit_and_wait(self.pub, self.sub, docs, timeout, lambda line: None)

    async def status(self, component: str) -> dict[str, Any]:
        async with MessageBroker(self.pub, self.sub) as client:
            reply = await client.request(
                f"{component}.status", ProcessingMessage(f"{component}.status", {}), timeout=20
            )
            return reply.content  # type: ignore[no-any-return]


@pytest.fixture
def running(tmp_path: Any) -> Iterator[Running]:
    r = Running(str(tmp_path))
    r.start()
    yield r
    r.stop()


def doc(i: int, **extra: Any) -> dict[str, Any]:
    d = make_document(i, words=120)
    d.update(extra)
    return d


async def test_happy_path_and_the_state_trackers_view(running: Running) -> None:
    s = await running.run([doc(i) for i in range(5)])
    assert (s["completed"], s["failed"], s["missing"]) == (5, 0, 0)
    assert s["errors"]["total"] == 0 and s["errors"]["dead_letters"] == 0
    for cid, outcome in s["outcomes"].items():
        assert outcome == "completed"
        assert s["per_workflow"][cid]["ingest_manager"]["state"] == "completed"  # tracker == reality
    assert s["states"]["by_state"] == {"completed": 5}
    manager = await running.status("ingest_manager")
    assert manager["active_processes"] == 0 and manager["completed"] == 5


async def test_transient_processor_failure_is_retried(running: Running) -> None:
    s = await running.run([doc(1, fail="transient"), doc(2)])
    assert (s["completed"], s["failed"]) == (2, 0)
    handler = await running.status("document_handler")
    assert handler["rpc"]["retries"] >= 1  # the retryable error was retried on a processor
    assert s["errors"]["total"] == 0  # recovered work is not an error


async def test_fatal_processor_failure_fails_the_workflow_and_cleans_up(running: Running) -> None:
    s = await running.run([doc(1, fail="fatal"), doc(2)])
    assert (s["completed"], s["failed"]) == (1, 1)
    failed = [cid for cid, o in s["outcomes"].items() if o == "failed"]
    assert failed == ["wf-doc-0001"]
    assert s["per_workflow"]["wf-doc-0001"]["ingest_manager"]["state"] == "failed"
    assert s["per_workflow"]["wf-doc-0002"]["ingest_manager"]["state"] == "completed"
    errors = s["errors"]
    # one root cause, reported once, where it happened (not again by the handler and the manager)
    assert (errors["total"], errors["by_type"], errors["by_component"]) == (1, {"ValueError": 1}, {"chunk_analyzer": 1})
    assert any(e["correlation_id"] == "wf-doc-0001" for e in errors["recent"])
    manager = await running.status("ingest_manager")
    assert manager["active_processes"] == 0 and manager["failed"] == 1


@pytest.mark.slow
async def test_processor_killed_mid_work_is_replaced_and_the_workflow_completes(running: Running) -> None:
    assert (await running.run([doc(0)]))["completed"] == 1  # warm up the handler's directory...
    deadline = time.monotonic() + 30
    while (await running.status("document_handler"))["rpc"].get("instances_known", 0) < 7:
        assert time.monotonic() < deadline, "the handler never saw all seven instances"
        await asyncio.sleep(0.1)  # ... until it knows all three analyzers (and the other four)
    work = asyncio.ensure_future(
        running.run([doc(1, fail="slow", slow_seconds=1.5), doc(2, fail="slow", slow_seconds=1.5)], timeout=90)
    )
    victim = running.pid("ChunkAnalyzer#1")
    # Wait until the handler has 6+ chunk requests in flight: spread by fewest
    # outstanding over three analyzers, the victim then holds some of them.
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "the chunks never got in flight"
        handler = await running.status("document_handler")
        if handler["rpc"].get("in_flight", 0) >= 6:
            break
        await asyncio.sleep(0.05)
    os.kill(victim, signal.SIGKILL)
    s = await work
    assert (s["completed"], s["failed"], s["missing"]) == (2, 0, 0)
    handler = await running.status("document_handler")
    assert handler["rpc"]["failovers"] + handler["rpc"]["retries"] >= 1
    # the supervisor restarted the killed analyzer
    await wait_until(lambda: running.pid("ChunkAnalyzer#1") != victim, timeout=20, what="the analyzer restarted")
    assert any("ChunkAnalyzer#1" in e and "restarting" in e for e in running.events)


@pytest.mark.slow
async def test_supervisor_restarts_a_crashed_component(running: Running) -> None:
    s = await running.run([doc(1)])
    assert s["completed"] == 1
    victim = running.pid("DocumentHandler#1")
    os.kill(victim, signal.SIGKILL)
    await wait_until(lambda: running.pid("DocumentHandler#1") != victim, timeout=20, what="the handler restarted")
    s = await running.run([doc(2), doc(3)])  # served by the restarted handler
    assert (s["completed"], s["failed"]) == (2, 0)


def test_topology_file(tmp_path: Any) -> None:
    path = tmp_path / "topology.toml"
    path.write_text(
        '[bus]\npub = "ipc:///tmp/x.pub"\nsub = "ipc:///tmp/x.sub"\n\n'
        '[[component]]\nclass = "zmqbus.components.ingest:ChunkAnalyzer"\nreplicas = 2\n'
    )
    topo = load_topology(str(path))
    assert (topo.pub, topo.sub, topo.forwarder) == ("ipc:///tmp/x.pub", "ipc:///tmp/x.sub", True)
    assert [(c.cls, c.replicas) for c in topo.components] == [("zmqbus.components.ingest:ChunkAnalyzer", 2)]
    path.write_text('[[component]]\nclass = "nowhere:Nothing"\n')
    with pytest.raises(ValueError, match="cannot load"):
        load_topology(str(path))
    path.write_text('[[component]]\nclass = "zmqbus:MessageBroker"\n')
    with pytest.raises(ValueError, match="not a zmqbus Component"):
        load_topology(str(path))


@pytest.mark.slow
def test_supervisor_gives_up_on_a_crash_loop(tmp_path: Any) -> None:
    from zmqbus.framework.runner import ComponentSpec, Topology

    events: list[str] = []
    pub, sub = ipc_endpoints(str(tmp_path))
    sup = Supervisor(Topology(pub, sub, False, [ComponentSpec("crashy:Crashy")]), crash_limit=2, on_event=events.append)
    sup.start()
    try:
        deadline = time.monotonic() + 30
        while not any("crash-loops" in e for e in events):
            assert time.monotonic() < deadline, events
            sup.check()
            time.sleep(0.05)
    finally:
        sup.stop()
    assert sum("restarted" in e for e in events) == 2
