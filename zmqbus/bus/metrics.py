"""Prometheus metrics of brokers and forwarders, read from their counters when scraped.

Needs ``prometheus_client`` (``pip install 'zmqbus[metrics]'``). Nothing is
counted twice: a scrape reads the counters every broker and forwarder keeps
anyway (:meth:`MessageBroker.statistics`, :meth:`Forwarder.statistics`), so
metrics cost the hot path nothing but the handler timing they switch on (two
clock reads per handler). Names follow Prometheus's conventions (``_total``,
``_seconds``, ``_bytes``) and, where one exists, OpenTelemetry's messaging
metric (``messaging.client.sent.messages`` -> ``messaging_client_sent_messages_total``).

    server = serve_metrics(9464, broker, forwarder)   # http://127.0.0.1:9464/metrics
    ...
    server.close()
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from ..core.errors import ZmqbusError
from ..core.ratelog import RateLimitedLog
from ..core.snapshots import Sample
from ..core.stats import Histogram

__all__ = ["MetricsServer", "MetricSource", "serve_metrics"]

log = logging.getLogger(__name__)


@runtime_checkable
class MetricSource(Protocol):
    """What a metrics server reads at each scrape: a client (:class:`MessageBroker`), a forwarder, or
    anything else that can list its samples. Called from the server's thread: a source whose state
    belongs to an event loop takes the snapshot there (the broker does)."""

    def metric_samples(self) -> list[Sample]: ...


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ZmqbusError("metrics need prometheus_client: pip install 'zmqbus[metrics]'") from None
    return prometheus_client


class MetricsServer:
    """An HTTP endpoint (``/metrics``) serving the metrics of the brokers and forwarders added to it."""

    def __init__(self, port: int, addr: str = "127.0.0.1") -> None:
        self.requested_port, self.addr = port, addr
        self._sources: list[MetricSource] = []
        self._server: Any = None
        self._thread: Any = None
        self._faults = RateLimitedLog(log)

    def add(self, source: MetricSource) -> None:
        """Serve ``source``'s metrics too (a broker's handler durations are timed from now on)."""
        enable = getattr(source, "enable_handler_timing", None)
        if callable(enable):
            enable()
        self._sources.append(source)

    def remove(self, source: MetricSource) -> None:
        if source in self._sources:
            self._sources.remove(source)

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS chose, for port 0)."""
        return int(self._server.server_port) if self._server is not None else self.requested_port

    def start(self) -> MetricsServer:
        prom = _prometheus()
        registry = prom.CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        # The standard collectors, as prometheus_client's default registry has them: process_* (CPU, resident
        # memory, open file descriptors, start time), python_info, python_gc_*.
        prom.ProcessCollector(registry=registry)
        prom.PlatformCollector(registry=registry)
        prom.GCCollector(registry=registry)
        try:
            self._server, self._thread = prom.start_http_server(self.requested_port, self.addr, registry)
        except OSError as exc:
            raise ZmqbusError(f"cannot serve metrics on {self.addr}:{self.requested_port}: {exc}") from None
        log.info("metrics on http://%s:%d/metrics", self.addr, self.port)
        return self

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def collect(self) -> Iterator[Any]:
        _prometheus()
        from prometheus_client import core

        families = _Families(core)
        for source in list(self._sources):
            try:
                samples = source.metric_samples()
            except ZmqbusError as exc:  # a source that cannot answer now is left out of this scrape (logged)
                self._faults.log(logging.WARNING, "scrape", "metrics: %s left out of a scrape: %s", source, exc)
                continue
            for sample in samples:
                families.add(sample)
        yield from families.all()


class _Collector:
    def __init__(self, server: MetricsServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        return self.server.collect()


class _Families:
    """Metric families by name, created on first use, so several sources share one family."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self._by_name: dict[str, Any] = {}

    def get(self, kind: str, name: str, doc: str, labels: list[str], unit: str = "") -> Any:
        family = self._by_name.get(name)
        if family is None:
            cls = {
                "counter": self.core.CounterMetricFamily,
                "gauge": self.core.GaugeMetricFamily,
                "histogram": self.core.HistogramMetricFamily,
            }[kind]
            family = self._by_name[name] = cls(name, doc, labels=labels, unit=unit)
        return family

    def add(self, sample: Sample) -> None:
        kind, name, doc, labels, value = sample
        if isinstance(value, Histogram):
            family = self.get("histogram", name, doc, list(labels), unit="seconds")
            family.add_metric(list(labels.values()), value.cumulative(), value.sum)
        else:
            self.get(kind, name, doc, list(labels)).add_metric(list(labels.values()), value)

    def all(self) -> list[Any]:
        return list(self._by_name.values())


def serve_metrics(port: int, *sources: MetricSource, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve the metrics of ``sources`` at ``http://addr:port/metrics`` (port 0: any free one; see ``.port``)."""
    server = MetricsServer(port, addr)
    for source in sources:
        server.add(source)
    return server.start()
