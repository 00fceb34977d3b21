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
from typing import TYPE_CHECKING, Any

from ..core.errors import ZmqbusError
from ..core.stats import Histogram

if TYPE_CHECKING:
    from .broker import MessageBroker
    from .forwarder import Forwarder

__all__ = ["MetricsServer", "serve_metrics"]

log = logging.getLogger(__name__)

_SYSTEM = "zmqbus"


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
        self._sources: list[MessageBroker | Forwarder] = []
        self._server: Any = None
        self._thread: Any = None

    def add(self, source: MessageBroker | Forwarder) -> None:
        """Serve ``source``'s metrics too (a broker's handler durations are timed from now on)."""
        from .broker import MessageBroker

        if isinstance(source, MessageBroker):
            source.enable_handler_timing()
        self._sources.append(source)

    def remove(self, source: MessageBroker | Forwarder) -> None:
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
        from .broker import MessageBroker

        _prometheus()
        from prometheus_client import core

        families = _Families(core)
        for source in list(self._sources):
            if isinstance(source, MessageBroker):
                _broker(families, source)
            else:
                _forwarder(families, source)
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

    def counter(self, name: str, doc: str, labels: dict[str, str], value: float) -> None:
        self.get("counter", name, doc, list(labels)).add_metric(list(labels.values()), value)

    def gauge(self, name: str, doc: str, labels: dict[str, str], value: float) -> None:
        self.get("gauge", name, doc, list(labels)).add_metric(list(labels.values()), value)

    def histogram(self, name: str, doc: str, labels: dict[str, str], hist: Histogram) -> None:
        family = self.get("histogram", name, doc, list(labels), unit="seconds")
        family.add_metric(list(labels.values()), hist.cumulative(), hist.sum)

    def all(self) -> list[Any]:
        return list(self._by_name.values())


def _broker(f: _Families, broker: MessageBroker) -> None:
    for _ in range(3):  # the loop thread may be changing a dict as we copy it: read again
        try:
            s = broker.statistics()
            break
        except RuntimeError:
            continue
    else:
        return
    who = {"messaging_system": _SYSTEM, "client_id": broker.client_id, "name": broker.name or ""}
    f.counter(
        "messaging_client_sent_messages",
        "Messages published (OpenTelemetry messaging.client.sent.messages).",
        who,
        s.published,
    )
    f.counter(
        "messaging_client_consumed_messages",
        "Messages received from the forwarder (OpenTelemetry messaging.client.consumed.messages).",
        who,
        s.received,
    )
    f.counter("zmqbus_published_bytes", "Bytes published.", who, s.published_bytes)
    f.counter("zmqbus_received_bytes", "Bytes received from the forwarder.", who, s.received_bytes)
    f.counter("zmqbus_dispatched", "Handler calls started.", who, s.dispatched)
    f.counter(
        "zmqbus_unmatched", "Messages received that no subscription wanted (wildcard-first patterns).", who, s.unmatched
    )
    f.counter("zmqbus_handler_errors", "Handlers that raised.", who, s.handler_errors)
    f.counter("zmqbus_gaps", "Messages lost on the way (sequence gaps).", who, s.gaps)
    f.counter(
        "zmqbus_sequence_resets", "Sequence numbers that went back (a restarted publisher).", who, s.sequence_resets
    )
    f.counter("zmqbus_publish_waits", "Publishes that waited at the high-water mark.", who, s.publish_waits)
    f.counter(
        "zmqbus_unconfirmed", "Messages whose delivery to the forwarder close() could not confirm.", who, s.unconfirmed
    )
    for reason, n in s.decode_errors.items():
        f.counter("zmqbus_decode_errors", "Frames that could not be decoded, by reason.", {**who, "reason": reason}, n)
    f.gauge("zmqbus_subscriptions", "Subscriptions held.", who, s.subscriptions)
    process_time = broker.handler_time
    if process_time is not None:
        f.histogram(
            "messaging_process_duration",
            "Handler durations (OpenTelemetry messaging.process.duration).",
            who,
            process_time,
        )
    if broker.request_time.count:
        f.histogram(
            "messaging_client_operation_duration",
            "Request durations, every outcome (OpenTelemetry messaging.client.operation.duration).",
            {**who, "operation": "request"},
            broker.request_time,
        )
    for outcome, n in sorted(broker.request_outcomes.items()):
        f.counter("zmqbus_requests", "Requests made, by outcome.", {**who, "outcome": outcome}, n)
    for key, n in sorted(s.rpc.items()):
        if key.startswith("served_"):
            f.counter("zmqbus_served", "Requests served, by outcome.", {**who, "outcome": key[7:]}, n)
        elif key in ("retries", "failovers", "late_replies"):
            f.counter(f"zmqbus_request_{key}", f"Request {key.replace('_', ' ')}.", who, n)
        elif key in ("in_flight", "instances_known"):
            f.gauge(f"zmqbus_request_{key}", f"Requests: {key.replace('_', ' ')}.", who, n)


def _forwarder(f: _Families, fwd: Forwarder) -> None:
    try:
        s = fwd.statistics()
    except ZmqbusError:
        return  # stopped
    who = {"messaging_system": _SYSTEM}
    for direction, frames, size in (("in", s.frames_in, s.bytes_in), ("out", s.frames_out, s.bytes_out)):
        f.counter(
            "zmqbus_forwarder_frames",
            "Frames from publishers (in) and to the subscriber side (out).",
            {**who, "direction": direction},
            frames,
        )
        f.counter(
            "zmqbus_forwarder_bytes",
            "Bytes from publishers (in) and to the subscriber side (out).",
            {**who, "direction": direction},
            size,
        )
    f.counter(
        "zmqbus_forwarder_subscription_frames", "Subscription frames from subscribers.", who, s.subscription_frames
    )
    for side, connects, disconnects in (
        ("publisher", s.publisher_connects, s.publisher_disconnects),
        ("subscriber", s.subscriber_connects, s.subscriber_disconnects),
    ):
        f.counter("zmqbus_forwarder_connects", "Connections accepted.", {**who, "side": side}, connects)
        f.counter("zmqbus_forwarder_disconnects", "Connections ended.", {**who, "side": side}, disconnects)
        f.gauge("zmqbus_forwarder_connections", "Connections live.", {**who, "side": side}, connects - disconnects)
    f.counter(
        "zmqbus_forwarder_handshake_failures",
        "Handshakes that failed (garbage, wrong keys).",
        who,
        s.handshake_failures,
    )
    for reason, n in sorted(s.refused.items()):
        f.counter(
            "zmqbus_forwarder_refused",
            "Connections, subscriptions and publications refused, by reason.",
            {**who, "reason": reason},
            n,
        )
    f.counter(
        "zmqbus_forwarder_slow_subscribers_cut",
        "Subscribers cut for taking nothing while too much queued.",
        who,
        s.slow_subscribers_cut,
    )
    f.gauge("zmqbus_forwarder_uptime_seconds", "Seconds since the forwarder started.", who, s.uptime)


def serve_metrics(port: int, *sources: MessageBroker | Forwarder, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve the metrics of ``sources`` at ``http://addr:port/metrics`` (port 0: any free one; see ``.port``)."""
    server = MetricsServer(port, addr)
    for source in sources:
        server.add(source)
    return server.start()
