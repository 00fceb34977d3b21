"""Latency percentiles (the demo's summary, the benchmarks) and a fixed-bucket histogram (metrics). Pure."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["percentiles", "Histogram", "LATENCY_BUCKETS"]

#: Seconds: from 100 us (a request on one host) to 10 s (OpenTelemetry's duration buckets, finer at the low end).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)


class Histogram:
    """Counts of observations per bucket (upper bounds inclusive, as Prometheus's ``le``), their sum and count.

    ``observe`` is a bisect and three additions: cheap enough for every request.
    """

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count of observations <= le)`` per bound, then ``("+Inf", count)``."""
        out, running = [], 0
        for bound, n in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def percentiles(samples: Sequence[float], scale: float = 1e6) -> dict[str, float]:
    """p50, p99 and p99.9 (nearest rank) and the max of ``samples``, times ``scale``."""
    if not samples:
        return {"p50": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0}
    ordered = sorted(samples)
    n = len(ordered)

    def rank(q: float) -> float:
        return round(ordered[min(n - 1, max(0, int(q * n + 0.5) - 1))] * scale, 1)

    return {"p50": rank(0.50), "p99": rank(0.99), "p999": rank(0.999), "max": round(ordered[-1] * scale, 1)}
