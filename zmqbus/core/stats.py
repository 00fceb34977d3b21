"""Latency percentiles (the demo's summary, the benchmarks) and a fixed-bucket histogram (metrics). Pure."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = [
    "percentiles",
    "Histogram",
    "LATENCY_BUCKETS",
    "ServiceCalls",
    "REQUEST_OUTCOMES",
    "SERVED_BY_SERVICE",
]

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

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) as Prometheus's ``histogram_quantile`` estimates it: linear within the
        bucket that holds it; the highest finite bound when it falls above them; None with no observation."""
        if not self.count:
            return None
        rank, running, lower = q * self.count, 0, 0.0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            if n and running + n >= rank:
                return lower + (bound - lower) * (rank - running) / n
            running += n
            lower = bound
        return self.bounds[-1]

    def merge(self, counts: list[int], total: float) -> None:
        """Add another histogram's per-bucket ``counts`` (same bounds) and sum."""
        for i, n in enumerate(counts[: len(self.counts)]):
            self.counts[i] += int(n)
        self.sum += total
        self.count += sum(int(n) for n in counts[: len(self.counts)])

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count of observations <= le)`` per bound, then ``("+Inf", count)``."""
        out, running = [], 0
        for bound, n in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


#: How a request ends, as the caller counts it: every one of these is a series from the first request on.
REQUEST_OUTCOMES = ("ok", "remote_error", "no_responder", "timeout", "error")
#: How a request a handler ran ended, as the responder counts it per service.
SERVED_BY_SERVICE = ("ok", "failed", "abandoned")


class ServiceCalls:
    """A caller's requests per service: durations (a :class:`Histogram` each) and counts by outcome.

    Services are few on a bus (the metrics' ``service`` label relies on it); past ``limit`` distinct
    names, the rest are counted under ``"other"``, so no caller can grow it without bound.
    :meth:`known` makes a service's series (at zero) before its first request, so alerts see zeros.
    """

    __slots__ = ("limit", "kinds", "time", "outcomes")

    def __init__(self, limit: int = 256, outcomes: tuple[str, ...] = REQUEST_OUTCOMES) -> None:
        self.limit = limit
        self.kinds = outcomes
        self.time: dict[str, Histogram] = {}
        self.outcomes: dict[str, dict[str, int]] = {}

    def known(self, service: str) -> str:
        """Make ``service``'s series if it has none; return the name it is counted under."""
        if service in self.time:
            return service
        if len(self.time) >= self.limit:
            service = "other"
            if service in self.time:
                return service
        self.time[service] = Histogram()
        self.outcomes[service] = dict.fromkeys(self.kinds, 0)
        return service

    def observe(self, service: str, outcome: str, seconds: float) -> None:
        """One request to ``service`` ended with ``outcome`` (one of :data:`REQUEST_OUTCOMES`) after ``seconds``."""
        histogram = self.time.get(service)
        if histogram is None:
            service = self.known(service)
            histogram = self.time[service]
        histogram.observe(seconds)
        self.outcomes[service][outcome] += 1


def percentiles(samples: Sequence[float], scale: float = 1e6) -> dict[str, float]:
    """p50, p99 and p99.9 (nearest rank) and the max of ``samples``, times ``scale``."""
    if not samples:
        return {"p50": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0}
    ordered = sorted(samples)
    n = len(ordered)

    def rank(q: float) -> float:
        return round(ordered[min(n - 1, max(0, int(q * n + 0.5) - 1))] * scale, 1)

    return {"p50": rank(0.50), "p99": rank(0.99), "p999": rank(0.999), "max": round(ordered[-1] * scale, 1)}
