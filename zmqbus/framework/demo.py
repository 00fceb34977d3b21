"""``zmqbus demo``: the example workflow end to end, on an embedded default.

Starts a forwarder and every component of ``components/`` as separate
processes (error handler, state tracker, ingest manager, document handler and
three chunk analyzers) on ipc endpoints in a temporary directory, submits
documents, shows each workflow as it completes, and ends with a summary:
workflows completed and failed, throughput and latency, what the error handler
and the state tracker saw.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from ..bus.broker import MessageBroker
from ..core.config import ipc_endpoints
from ..core.message import MessageMetadata, ProcessingMessage
from ..core.stats import percentiles
from ..io.aio import wait_event
from ..io.security import FORWARDER_KEY_NAME, keygen
from .procs import environment, tcp_endpoints
from .runner import ComponentSpec, Topology
from .supervisor import Supervisor

__all__ = ["run_demo", "demo_topology", "make_document", "DEMO_COMPONENTS"]

_WORDS = (
    "message broker component manager handler processor context state error retry queue topic "
    "subscriber publisher forwarder correlation workflow chunk document latency throughput"
).split()


def _secure_env(tmp: str) -> dict[str, str]:
    folder = os.path.join(tmp, "keys")
    keygen(folder, FORWARDER_KEY_NAME, allow=False)
    keygen(folder, "demo")
    return {"ZMQBUS_KEYS": folder, "ZMQBUS_KEY_NAME": "demo"}


#: The example workflow's components, in start order (the analyzers last: they run as replicas).
DEMO_COMPONENTS = (
    "zmqbus.components.error_handler:ErrorHandler",
    "zmqbus.components.state_tracker:StateTracker",
    "zmqbus.components.ingest:IngestManager",
    "zmqbus.components.ingest:DocumentHandler",
    "zmqbus.components.ingest:ChunkAnalyzer",
)


def demo_topology(pub: str, sub: str, analyzers: int = 3) -> Topology:
    *once, analyzer = DEMO_COMPONENTS
    return Topology(pub, sub, True, [*map(ComponentSpec, once), ComponentSpec(analyzer, replicas=analyzers)])


def make_document(i: int, words: int = 300) -> dict[str, Any]:
    """A deterministic document of ``words`` words, different for every ``i``."""
    x = i * 2654435761 % 2**32 + 1
    picked = []
    for _ in range(words):
        x = (1103515245 * x + 12345) % 2**31
        picked.append(_WORDS[x % len(_WORDS)])
    text = " ".join(picked)
    return {"document_id": f"doc-{i:04d}", "text": text, "chunk_words": 50}


async def submit_and_wait(
    pub: str, sub: str, documents: list[dict[str, Any]], timeout: float, echo: Callable[[str], None]
) -> dict[str, Any]:
    """Publish ``documents`` as ingest requests; wait for every outcome; gather the infrastructure's view."""
    outcomes: dict[str, tuple[str, Any, float]] = {}
    done = asyncio.Event()
    sent_at: dict[str, float] = {}

    def on_outcome(msg: ProcessingMessage) -> None:
        cid = msg.metadata.correlation_id
        if cid not in sent_at or cid in outcomes:
            return
        kind = "completed" if msg.type_name == "ingest.complete" else "failed"
        outcomes[cid] = (kind, msg.content, time.monotonic() - sent_at[cid])
        c = msg.content
        if kind == "completed":
            echo(
                f"  [{len(outcomes):>3}/{len(documents)}] {c['document_id']} completed: {c['chunks']} chunks, "
                f"{c['words']} words, by {len(c['analyzed_by'])} analyzer(s), sha256 {c['sha256'][:12]}..."
            )
        else:
            echo(f"  [{len(outcomes):>3}/{len(documents)}] {cid} FAILED: {c}")
        if len(outcomes) == len(documents):
            done.set()

    async with MessageBroker(pub, sub, name="demo-client") as client:
        client.subscribe("demo-client", "ingest.complete", on_outcome)
        client.subscribe("demo-client", "ingest.failed", on_outcome)
        await client.ready(timeout=30)
        # wait until the workflow's services answer, so no request is lost to start-up
        await _until_up(
            client,
            ["error_handler", "state_tracker", "ingest_manager", "document_handler", "chunk_analyzer"],
            timeout=60,
        )
        started = time.monotonic()
        for doc in documents:
            msg = ProcessingMessage(
                "ingest.request",
                doc,
                MessageMetadata(
                    correlation_id=f"wf-{doc['document_id']}",
                    source_component="demo-client",
                    target_component="ingest_manager",
                ),
            )
            sent_at[msg.metadata.correlation_id] = time.monotonic()
            await client.publish(msg)
        if not await wait_event(done, timeout):
            echo(f"  timed out after {timeout:g} s with {len(outcomes)}/{len(documents)} outcomes")
        elapsed = time.monotonic() - started
        await _until_tracked(client, {cid: kind for cid, (kind, _, _) in outcomes.items()}, timeout=10)
        failed = sum(kind == "failed" for kind, _, _ in outcomes.values())
        errors = await _errors_reported(client, failed, timeout=10)
        states = (await client.request("state.query", ProcessingMessage("state.query", {}), timeout=10)).content
        per_workflow = {
            cid: (
                await client.request(
                    "state.query", ProcessingMessage("state.query", {"correlation_id": cid}), timeout=10
                )
            ).content
            for cid in list(sent_at)[:200]
        }
    latencies = [o[2] for o in outcomes.values()]
    pct = percentiles(latencies, scale=1000)  # ms
    return {
        "workflows": len(documents),
        "completed": sum(1 for o in outcomes.values() if o[0] == "completed"),
        "failed": sum(1 for o in outcomes.values() if o[0] == "failed"),
        "missing": len(documents) - len(outcomes),
        "seconds": round(elapsed, 3),
        "workflows_per_s": round(len(outcomes) / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_p50_ms": pct["p50"] if latencies else None,
        "latency_p99_ms": pct["p99"] if latencies else None,
        "latency_max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "errors": errors,
        "states": states,
        "per_workflow": per_workflow,
        "outcomes": {cid: o[0] for cid, o in outcomes.items()},
    }


async def _until_tracked(client: MessageBroker, outcomes: dict[str, str], timeout: float) -> None:
    """Wait until the state tracker has the manager's final state for every finished workflow.

    Outcomes and status updates travel on different topics, so one can overtake
    the other; asking beats sleeping.
    """
    deadline = time.monotonic() + timeout
    while outcomes:
        view = (
            await client.request(
                "state.query", ProcessingMessage("state.query", {"component": "ingest_manager"}), timeout=10
            )
        ).content
        if all(view.get(cid) == kind for cid, kind in outcomes.items()):
            return
        if time.monotonic() > deadline:
            return  # report what the tracker has; the summary shows any difference
        await asyncio.sleep(0.02)


async def _errors_reported(client: MessageBroker, failed: int, timeout: float) -> dict[str, Any]:
    """The error handler's statistics once it has a report for each failed workflow (at least one root
    cause each), or what it has after ``timeout``: reports travel on the bus, the failures they explain
    came back peer to peer, so a report can arrive after its outcome."""
    deadline = time.monotonic() + timeout
    while True:
        stats: dict[str, Any] = (
            await client.request("errors.stats", ProcessingMessage("errors.stats", {}), timeout=10)
        ).content
        if stats.get("total", 0) >= failed or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.02)


async def _until_up(client: MessageBroker, components: list[str], timeout: float) -> None:
    """Wait until every component answers its ``<name>.status`` service."""
    deadline = time.monotonic() + timeout
    for name in components:
        while True:
            try:
                await client.request(f"{name}.status", ProcessingMessage(f"{name}.status", {}), timeout=5)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


def run_demo(
    workflows: int = 10,
    analyzers: int = 3,
    echo: Callable[[str], None] = print,
    timeout: float = 120.0,
    secure: bool = False,
) -> dict[str, Any]:
    """Run the example workflow end to end and return the summary.

    ``secure``: CURVE on every socket (tcp loopback), with a key folder made
    for the run: the forwarder's pair and one member pair every process uses.
    """
    # The demo's components keep their state (dead letters) in its temporary folder: nothing is left behind.
    with (
        tempfile.TemporaryDirectory(prefix="zmqbus-demo-") as tmp,
        environment({"ZMQBUS_STATE_DIR": tmp, **(_secure_env(tmp) if secure else {})}),
    ):
        if secure:
            pub, sub = tcp_endpoints()
        else:
            pub, sub = ipc_endpoints(tmp)
        echo(
            f"zmqbus demo: forwarder and {4 + analyzers} component processes on {pub} / {sub}"
            + (" (CURVE: encrypted, allowed keys only)" if secure else "")
        )
        sup = Supervisor(demo_topology(pub, sub, analyzers), log_level=logging.ERROR, on_event=lambda text: None)
        stop = threading.Event()
        watcher = threading.Thread(target=sup.run_until, args=(stop.is_set,), daemon=True)
        sup.start()
        watcher.start()
        try:
            documents = [make_document(i) for i in range(workflows)]
            summary = asyncio.run(submit_and_wait(pub, sub, documents, timeout, echo))
        finally:
            stop.set()
            watcher.join(5)
            sup.stop()
    echo(
        f"summary: {summary['completed']}/{workflows} workflows completed, {summary['failed']} failed, "
        f"{summary['missing']} missing, in {summary['seconds']} s ({summary['workflows_per_s']} workflows/s, "
        f"latency p50 {summary['latency_p50_ms']} ms, max {summary['latency_max_ms']} ms)"
    )
    echo(
        f"error handler: {summary['errors']['total']} error(s) {summary['errors']['by_type'] or ''}, "
        f"{summary['errors']['dead_letters']} dead letter(s); state tracker: {summary['states']}"
    )
    return summary
