"""Latency percentiles, shared by the demo's summary and the benchmarks (pure)."""
from __future__ import annotations

from collections.abc import Sequence

__all__ = ["percentiles"]


def percentiles(samples: Sequence[float], scale: float = 1e6) -> dict[str, float]:
    """p50, p99 and p99.9 (nearest rank) and the max of ``samples``, times ``scale``."""
    if not samples:
        return {"p50": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0}
    ordered = sorted(samples)
    n = len(ordered)

    def rank(q: float) -> float:
        return round(ordered[min(n - 1, max(0, int(q * n + 0.5) - 1))] * scale, 1)

    return {"p50": rank(0.50), "p99": rank(0.99), "p999": rank(0.999), "max": round(ordered[-1] * scale, 1)}
