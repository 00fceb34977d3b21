"""The example workflow: document ingestion.

::

    client --ingest.request--> IngestManager --request ingest.split--> DocumentHandler
                                                                        |  request ingest.analyze (one per chunk,
                                                                        v  competing instances)
                                                                  ChunkAnalyzer x N
    IngestManager --ingest.complete / ingest.failed--> anyone    (status.* -> state_tracker, error.* -> error_handler)

The guide's checklist, item by item:

* context and message types: :class:`IngestType` (and the services' names);
  one :class:`~zmqbus.core.workflow.ComponentContext` per workflow, in the manager's
  ``active_processes``;
* handlers for all message types: ``ingest.request`` (the manager),
  ``ingest.split`` (the handler), ``ingest.analyze`` (the processors);
  ``ingest.complete`` / ``ingest.failed`` are the workflow's outputs;
* no direct component calls: every step is a message or a request over the bus;
* error handling: a processor's retryable errors are retried by the handler's
  requests, fatal ones reach the error handler and fail the workflow;
* state management: CREATED -> PROCESSING -> WAITING -> PROCESSING ->
  COMPLETED or FAILED, validated, each change sent to the state tracker;
* cleanup: a finished workflow's context is removed at once, a stale one is
  cancelled after the manager's ``context_ttl``.

A document's content is ``{"document_id": str, "text": str}`` plus optional
``"chunk_words"`` (words per chunk, default 50) and, for demonstrations and
tests, ``"fail"``: ``"transient"`` (the first chunk's first try raises a
retryable error), ``"fatal"`` (the first chunk raises ValueError) or
``"slow"`` (every chunk takes ``"slow_seconds"``).
"""

from __future__ import annotations

import collections
import hashlib
import re
import time
from enum import Enum
from typing import Any

from zmqbus import (
    ComponentState,
    Handler,
    Manager,
    ProcessingMessage,
    Processor,
    RetryableError,
    RetryPolicy,
    on,
    service,
)

SPLIT_SERVICE = "ingest.split"
ANALYZE_SERVICE = "ingest.analyze"


class IngestType(str, Enum):
    INGEST_REQUEST = "ingest.request"
    INGEST_COMPLETE = "ingest.complete"
    INGEST_FAILED = "ingest.failed"


class IngestManager(Manager):
    """Accepts ingest requests, runs one workflow per document, publishes the outcome."""

    component_name = "ingest_manager"
    message_types = (IngestType,)

    @on(f"{IngestType.INGEST_REQUEST.value}.#")
    async def _handle_ingest_request(self, message: ProcessingMessage) -> None:
        content = message.content
        if not (
            isinstance(content, dict)
            and isinstance(content.get("document_id"), str)
            and isinstance(content.get("text"), str)
        ):
            raise ValueError(f"invalid ingest request: {content!r}")  # fatal: error handler + dead letter
        ctx = await self.begin_process(message, document_id=content["document_id"])
        # Run the workflow as a task: dispatch goes on while it waits on other components.
        self.spawn(self._run_workflow(ctx, message))

    async def _run_workflow(self, ctx: Any, message: ProcessingMessage) -> None:
        content = message.content
        started = time.monotonic()
        try:
            await self.update_state(ctx, ComponentState.WAITING, step="split")
            summary = await self.request(
                SPLIT_SERVICE, content, timeout=120, retry=RetryPolicy(attempts=3, attempt_timeout=None)
            )
            await self.update_state(ctx, ComponentState.PROCESSING, step="aggregate")
            summary["seconds"] = round(time.monotonic() - started, 4)
            await self.complete_process(ctx, IngestType.INGEST_COMPLETE, summary)
        except Exception as exc:
            await self.report_error(message, exc)
            await self.fail_process(ctx, IngestType.INGEST_FAILED, exc)


class DocumentHandler(Handler):
    """Splits a document into chunks, has Processors analyse them, aggregates the results."""

    component_name = "document_handler"

    @service(SPLIT_SERVICE)
    async def split(self, message: ProcessingMessage) -> dict[str, Any]:
        doc = message.content
        words = doc["text"].split()
        size = max(1, int(doc.get("chunk_words", 50)))
        chunks = [" ".join(words[i : i + size]) for i in range(0, len(words), size)] or [""]
        fail = doc.get("fail")
        items = [
            {
                "document_id": doc["document_id"],
                "index": i,
                "text": text,
                "fail": fail if (i == 0 or fail == "slow") else None,
                "slow_seconds": doc.get("slow_seconds", 0.5),
            }
            for i, text in enumerate(chunks)
        ]
        results = await self.process_all(
            ANALYZE_SERVICE, items, timeout=60, retry=RetryPolicy(attempts=4, attempt_timeout=10.0)
        )
        counts: collections.Counter[str] = collections.Counter()
        for r in results:
            counts.update(dict(r["counts"]))
        digest = hashlib.sha256("".join(r["sha256"] for r in results).encode()).hexdigest()
        return {
            "document_id": doc["document_id"],
            "chunks": len(results),
            "words": sum(r["words"] for r in results),
            "top_words": counts.most_common(5),
            "sha256": digest,
            "analyzed_by": sorted({r["by"] for r in results}),
        }


class ChunkAnalyzer(Processor):
    """Counts words and hashes one chunk (CPU work, run in a worker thread)."""

    component_name = "chunk_analyzer"

    @service(ANALYZE_SERVICE)
    def analyze(self, message: ProcessingMessage) -> dict[str, Any]:
        chunk = message.content
        fail = chunk.get("fail")
        if fail == "transient" and message.metadata.attempt == 1:
            raise RetryableError(f"chunk {chunk['index']}: simulated transient failure")
        if fail == "fatal":
            raise ValueError(f"chunk {chunk['index']}: simulated fatal failure")
        if fail == "slow":
            time.sleep(float(chunk.get("slow_seconds", 0.5)))
        words = re.findall(r"\w+", chunk["text"].lower())
        counts = collections.Counter(words)
        return {
            "index": chunk["index"],
            "words": len(words),
            "counts": counts.most_common(20),
            "sha256": hashlib.sha256(chunk["text"].encode()).hexdigest(),
            "by": self.message_broker.client_id,
        }
