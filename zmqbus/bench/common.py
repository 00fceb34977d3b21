"""Helpers shared by the benchmarks: percentiles, pacing, message shapes, process runs."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.process
import queue
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..framework.procs import stop_process
from ..io.aio import wait_event

__all__ = [
    "Progress",
    "pace",
    "guide_content",
    "sized_content",
    "collect",
    "DATA_TOPIC",
    "keep_best",
    "rounded",
    "wait_readable",
    "wait_idle",
]

#: The topic every pub/sub benchmark publishes on.
DATA_TOPIC = "bench.component.process.request"

Progress = Callable[[str], None]


def guide_content(size: int = 180) -> dict[str, Any]:
    """A guide-shaped content dict of roughly ``size`` encoded bytes (at least about 90)."""
    filler = max(0, size - 90)
    return {
        "document_id": "doc-000123",
        "chunk_index": 7,
        "text": "x" * filler,
        "options": {"lang": "en", "normalize": True},
    }


def sized_content(size: int) -> dict[str, Any]:
    """Content that msgpack-encodes to exactly ``size`` bytes for sizes of 32 and up."""
    # fixmap(1) + fixstr "text" (5 bytes) + a str header of 1, 2, 3 or 5 bytes
    n = max(0, size - 7)
    header = 1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5
    return {"text": "x" * max(0, size - 6 - header)}


def pace(start: float, sent: int, rate: float, clock: Callable[[], float] = time.perf_counter) -> None:
    """Sleep until message number ``sent`` is due at ``rate`` messages per second.

    A sender that fell behind (a sleep overshoots by tens of microseconds) is
    not made to wait, so the average rate holds; latency is measured from each
    message's own send time, so pacing jitter never counts as latency.
    """
    wait = start + sent / rate - clock()
    if wait > 0:
        time.sleep(wait)


def collect(
    procs: Sequence[multiprocessing.process.BaseProcess], results: Any, expected: int, timeout: float
) -> list[Any]:
    """Read ``expected`` results from ``results``, then stop ``procs`` (by pid, last first).

    Raises RuntimeError naming the process that died if a result never comes.
    """
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expected:
            try:
                got.append(results.get(timeout=0.5))
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"benchmark process {dead[0].name} exited with {dead[0].exitcode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"benchmark gave no result within {timeout:g} s") from None
    finally:
        for proc in reversed(procs):
            stop_process(proc, timeout=3.0)
    return got


def keep_best(best: dict[str, float], res: dict[str, float]) -> None:
    """Fold one round into ``best``: the highest rate (``*req_s``), the lowest latency otherwise."""
    for key, value in res.items():
        best[key] = max(best[key], value) if key.endswith("req_s") else min(best[key], value)


def rounded(figures: dict[str, float]) -> dict[str, float]:
    """Rates to whole numbers, latencies to 0.1 us."""
    return {k: round(v) if k.endswith("req_s") else round(v, 1) for k, v in figures.items()}


async def wait_readable(sock: Any, woke: asyncio.Event, timeout: float | None = None) -> bool:
    """The raw baselines' slow path, after ``zmq.Again``: wait until ``sock`` may be readable.

    ``woke`` is set by ``loop.add_reader`` on the socket's FD. ZeroMQ's FD is
    edge-triggered, so EVENTS is read first (which also re-arms it). False on
    timeout. Called only when the socket is drained, never per message, so the
    raw loops stay what a user would write inline.
    """
    import zmq

    woke.clear()
    if int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
        return True
    if timeout is None:
        await woke.wait()  # no timer, no extra task: as cheap as the inline loop it replaces
        return True
    return await wait_event(woke, timeout)


async def wait_idle(done: asyncio.Event, count: Callable[[], int], idle: float) -> None:
    """Return when ``done`` is set, or when ``count()`` has not moved for ``idle`` seconds."""
    seen = -1
    while not done.is_set() and seen != count():
        seen = count()
        await wait_event(done, idle)


#: A key folder (``forwarder`` and ``client`` pairs): the raw sides use CURVE too (``--secure``).
RAW_CURVE_ENV = "ZMQBUS_BENCH_CURVE"
#: Set: the zmqbus side's processes trace every message (``bench pubsub --trace``).
TRACE_ENV = "ZMQBUS_BENCH_TRACE"


class _DropSpans:
    """An OpenTelemetry span exporter that keeps nothing: tracing's cost without an exporter's I/O."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def maybe_trace() -> None:
    """In a bench process: turn zmqbus tracing on (SDK tracer, batched to :class:`_DropSpans`) when
    ``$ZMQBUS_BENCH_TRACE`` is set."""
    import os

    if not os.environ.get(TRACE_ENV):
        return
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from ..bus import tracing

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_DropSpans()))  # type: ignore[arg-type]
    tracing.enable(provider)


def raw_curve(sock: Any, server: bool) -> None:
    """Make a raw side's socket a CURVE server or client when ``$ZMQBUS_BENCH_CURVE`` names a key
    folder (the same cipher as zmqbus's; no allow-list, which costs only at the handshake)."""
    import os

    folder = os.environ.get(RAW_CURVE_ENV)
    if not folder:
        return
    import zmq

    from ..io.security import load_keys

    fwd = load_keys(folder, "forwarder", server=False)
    if server:
        sock.curve_server = True
        sock.setsockopt(zmq.CURVE_SECRETKEY, fwd.secret)
    else:
        client = load_keys(folder, "client")
        sock.setsockopt(zmq.CURVE_SERVERKEY, fwd.public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, client.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, client.secret)


def bench_keys(folder: str) -> str:
    """Make a key folder for a secure benchmark run (the forwarder's pair and a ``client`` pair), and a
    policy beside it (``policy.toml``) that restricts ``client`` to the benchmark's topics."""
    import os

    from ..io.security import keygen

    keygen(folder, "forwarder", allow=False)
    keygen(folder, "client")
    with open(os.path.join(folder, "policy.toml"), "w") as f:
        f.write(
            '[keys.client]\npublish = ["bench.#"]\nsubscribe = ["bench.#"]\ncall = ["bench.#"]\nserve = ["bench.#"]\n'
        )
    return folder
