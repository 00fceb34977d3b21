"""Helpers shared by the benchmarks: percentiles, pacing, message shapes, process runs."""
from __future__ import annotations

import multiprocessing
import multiprocessing.process
import queue
import time
from typing import Any, Callable, Sequence

from ..procs import stop_process

__all__ = ["Progress", "percentiles", "pace", "guide_content", "sized_content", "collect", "DATA_TOPIC"]

#: The topic every pub/sub benchmark publishes on.
DATA_TOPIC = "bench.component.process.request"

Progress = Callable[[str], None]


def guide_content(size: int = 180) -> dict[str, Any]:
    """A guide-shaped content dict of roughly ``size`` encoded bytes (at least about 90)."""
    filler = max(0, size - 90)
    return {"document_id": "doc-000123", "chunk_index": 7, "text": "x" * filler,
            "options": {"lang": "en", "normalize": True}}


def sized_content(size: int) -> dict[str, Any]:
    """Content that msgpack-encodes to exactly ``size`` bytes for sizes of 32 and up."""
    # fixmap(1) + fixstr "text" (5 bytes) + a str header of 1, 2, 3 or 5 bytes
    n = max(0, size - 7)
    header = 1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5
    return {"text": "x" * max(0, size - 6 - header)}


def percentiles(samples: Sequence[float], scale: float = 1e6) -> dict[str, float]:
    """p50, p99 and p99.9 (nearest rank) and the max of ``samples``, times ``scale``."""
    if not samples:
        return {"p50": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0}
    ordered = sorted(samples)
    n = len(ordered)

    def rank(q: float) -> float:
        return round(ordered[min(n - 1, max(0, int(q * n + 0.5) - 1))] * scale, 1)

    return {"p50": rank(0.50), "p99": rank(0.99), "p999": rank(0.999), "max": round(ordered[-1] * scale, 1)}


def pace(start: float, sent: int, rate: float, clock: Callable[[], float] = time.perf_counter) -> None:
    """Sleep until message number ``sent`` is due at ``rate`` messages per second.

    A sender that fell behind (a sleep overshoots by tens of microseconds) is
    not made to wait, so the average rate holds; latency is measured from each
    message's own send time, so pacing jitter never counts as latency.
    """
    wait = start + sent / rate - clock()
    if wait > 0:
        time.sleep(wait)


def collect(procs: Sequence[multiprocessing.process.BaseProcess], results: Any, expected: int,
            timeout: float) -> list[Any]:
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
