"""The example workflow (zmqbus.components.ingest) tested the way a user tests theirs: with the test kit.

tests/test_workflow.py runs the same workflow as ``zmqbus up`` runs it (a
supervisor, every component a process); here the components run in the test's
process on the kit's ``bus``, except where a process must be killed.
"""

from __future__ import annotations

import asyncio

import pytest

from zmqbus import RetryPolicy
from zmqbus.components.error_handler import ErrorHandler
from zmqbus.components.ingest import ChunkAnalyzer, DocumentHandler, IngestManager
from zmqbus.components.state_tracker import StateTracker
from zmqbus.framework.demo import make_document
from zmqbus.testing import TestBus, wait_until


async def test_a_document_goes_through_and_a_bad_one_is_reported(bus: TestBus) -> None:
    await bus.start_all(IngestManager, DocumentHandler, ChunkAnalyzer, ChunkAnalyzer, ErrorHandler, StateTracker)
    # the handler must know both analyzers before the chunks go out (each announced itself, but the
    # handler may not have heard the second yet on a loaded machine: then all chunks went to one)
    await bus.components[1].message_broker.wait_for_service("ingest.analyze", instances=2, timeout=10)
    outcomes, errors = await bus.record("ingest.*"), await bus.record("error.#")
    await bus.publish("ingest.request", make_document(1, words=120), correlation_id="d1")
    done = await outcomes.wait_for(message_type="ingest.complete", correlation_id="d1", timeout=20)
    assert (done.content["chunks"], done.content["words"]) == (3, 120)
    assert len(done.content["analyzed_by"]) == 2, "both analyzers took chunks"
    # the result and the state change are two messages to two subscribers: the tracker may hear "completed"
    # a moment after the result is seen here
    for _ in range(100):
        states = await bus.request("state.query", {"correlation_id": "d1"})
        if states["ingest_manager"]["state"] == "completed":
            break
        await asyncio.sleep(0.02)
    assert states["ingest_manager"]["state"] == "completed"

    await bus.publish("ingest.request", dict(make_document(2, words=60), fail="fatal"), correlation_id="d2")
    failed = await outcomes.wait_for(message_type="ingest.failed", correlation_id="d2", timeout=20)
    assert failed.content["error_type"] == "ValueError"
    first = await errors.wait_for(correlation_id="d2")
    assert (first.content["error_type"], first.content["component"]) == ("ValueError", "chunk_analyzer")
    await errors.assert_none(within=0.3, correlation_id="d2", predicate=lambda m: m is not first)  # once per root
    await wait_until(lambda: bus.components[0].active_processes.get("d2") is None, what="the context cleaned up")


async def test_a_failing_then_a_stalled_analyzer(bus: TestBus) -> None:
    await bus.start_all(IngestManager, DocumentHandler, ChunkAnalyzer)
    outcomes = await bus.record("ingest.*")
    with bus.fail("ingest.analyze", RuntimeError("disk full"), times=1):
        await bus.publish("ingest.request", make_document(3, words=50), correlation_id="d3")
        failed = await outcomes.wait_for(message_type="ingest.failed", correlation_id="d3", timeout=20)
    assert "disk full" in failed.content["error"]
    chunk = {"document_id": "d", "index": 0, "text": "x y"}
    with bus.stall("ingest.analyze", 0.3):
        assert (await bus.request("ingest.analyze", chunk, timeout=5))["words"] == 2


@pytest.mark.timeout(90)
async def test_an_analyzer_process_killed_and_the_workflow_completes(bus: TestBus) -> None:
    await bus.start_all(IngestManager, DocumentHandler)
    doomed = await bus.spawn("zmqbus.components.ingest:ChunkAnalyzer")
    await bus.spawn("zmqbus.components.ingest:ChunkAnalyzer")
    outcomes = await bus.record("ingest.complete")
    await bus.kill(doomed)
    await bus.publish("ingest.request", make_document(4, words=200), correlation_id="d4")
    done = await outcomes.wait_for(correlation_id="d4", timeout=60)
    assert done.content["chunks"] == 4 and len(done.content["analyzed_by"]) == 1
    assert RetryPolicy  # the handler's requests retry (attempts 4, 10 s each) onto the live analyzer
