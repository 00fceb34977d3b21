"""A client's statistics, and the metric samples of a client and of a forwarder: names and help texts.

Names follow Prometheus's conventions (``_total``, ``_seconds``, ``_bytes``;
the server adds ``_total`` to counters) and, where one exists,
OpenTelemetry's messaging metric (``messaging.client.sent.messages`` ->
``messaging_client_sent_messages_total``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.snapshots import BrokerStatistics, ForwarderStatistics, Sample
from ..core.stats import Histogram, ServiceCalls
from ..core.subscriptions import SubscriptionTable
from .publisher import Publisher
from .receiver import Receiver

if TYPE_CHECKING:
    from .history import Recoverer

__all__ = [
    "broker_statistics",
    "broker_samples",
    "forwarder_samples",
    "SERVED_OUTCOMES",
    "DECODE_REASONS",
    "REFUSAL_REASONS",
]

_SYSTEM = "zmqbus"


def broker_statistics(
    p: Publisher, r: Receiver, table: SubscriptionTable, rpc: dict[str, int], recoverer: Recoverer | None
) -> BrokerStatistics:
    """A client's counters, from its publisher, its receiver, its subscription table, its requests and its
    recovery (None: off)."""
    recovery: dict[str, int] = {}
    gaps, duplicates, resets = r.sequences.gaps, r.duplicates, r.sequences.resets
    if recoverer is not None:
        s = recoverer.recovery.stats
        recovery.update(recovered=s.recovered, lost=s.lost, held=s.held, fetches=s.fetches, failed=s.failed_fetches)
        recovery["streams_refused"] = recoverer.refused_streams
        gaps, duplicates, resets = gaps + s.lost, duplicates + s.duplicates, resets + s.resets
        if recoverer.history is not None:
            h = recoverer.history
            recovery.update(
                history_messages=len(h.cache), history_bytes=h.cache.bytes, history_evicted=h.cache.evicted,
                served=h.served, refused=h.refused,
            )  # fmt: skip
    return BrokerStatistics(
        published=p.published,
        published_bytes=p.published_bytes,
        publish_waits=p.publish_waits,
        received=r.received,
        received_bytes=r.received_bytes,
        dispatched=r.dispatched,
        unmatched=r.unmatched,
        handler_errors=r.handler_errors,
        gaps=gaps,
        sequence_resets=resets,
        unconfirmed=p.unconfirmed,
        decode_errors=dict(r.decode_errors),
        subscriptions=table.user_count,
        receives_all=table.receives_all,
        rpc=rpc,
        duplicates=duplicates,
        recovery=recovery,
        tails={
            "sent": p.tail_copies, "skipped": p.tail_copies_skipped, "dropped": r.tail_copies_dropped,
            "words": len(p.tails),
        },
    )  # fmt: skip


class _Rows:
    """Collects samples through the three calls the functions below make."""

    def __init__(self) -> None:
        self.rows: list[Sample] = []

    def counter(self, name: str, doc: str, labels: dict[str, str], value: float) -> None:
        self.rows.append(Sample("counter", name, doc, labels, value))

    def gauge(self, name: str, doc: str, labels: dict[str, str], value: float) -> None:
        self.rows.append(Sample("gauge", name, doc, labels, value))

    def histogram(self, name: str, doc: str, labels: dict[str, str], value: Histogram) -> None:
        self.rows.append(Sample("histogram", name, doc, labels, value))


#: ``zmqbus_served_total``'s outcomes, disjoint (their sum is every request the responder got, once it
#: ended): outcome -> the ``statistics().rpc`` counter (``served_`` + this) it reads.
SERVED_OUTCOMES = {
    "ok": "succeeded",
    "failed": "failed",
    "abandoned": "abandoned",
    "interrupted": "interrupted",
    "cached": "duplicates_cached",
    "duplicate": "duplicates_in_flight",
    "expired": "expired",
    "overloaded": "overloaded",
    "shutting_down": "shutting_down",
    "unknown_service": "unknown_service",
    "forbidden": "forbidden",
    "malformed": "malformed",
}
#: Why a frame could not be decoded (``DecodeError.reason``): each a series from the start.
DECODE_REASONS = ("frames", "msgpack", "version", "field", "topic", "size", "batch")
#: Why a forwarder refused a connection, a subscription or a publication: each a series from the start.
REFUSAL_REASONS = (
    "malformed",
    "unknown_domain",
    "mechanism",
    "unknown_key",
    "connection_limit",
    "publish_denied",
    "subscribe_denied",
    "subscription_limit",
    "no_key",
    "presence_forged",
    "control_denied",
    "subscription_flood",
)


def broker_samples(
    s: BrokerStatistics, who: dict[str, str], handler_time: Histogram | None, calls: ServiceCalls, client_id: str = ""
) -> list[Sample]:
    """A client's metrics: its statistics, handler durations, requests by service (durations, outcomes).

    Every series exists from the start at zero (decode errors by reason, requests served by outcome;
    requests made per service once the service is discovered), so alerts and ``increase()`` see the first
    event. Labels: ``service`` on zmqbus's own request metrics, ``messaging_destination_name`` (the
    service) on OpenTelemetry's ``messaging_client_operation_duration``."""
    f = _Rows()
    who = {"messaging_system": _SYSTEM, **who}
    if client_id:
        f.gauge(
            "zmqbus_client_info",
            "This client's id (new at every start), by its stable labels.",
            {**who, "client_id": client_id},
            1,
        )
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
    decode_errors = {**dict.fromkeys(DECODE_REASONS, 0), **s.decode_errors}
    for reason, n in decode_errors.items():
        f.counter("zmqbus_decode_errors", "Frames that could not be decoded, by reason.", {**who, "reason": reason}, n)
    f.gauge("zmqbus_subscriptions", "Subscriptions held.", who, s.subscriptions)
    process_time = handler_time
    if process_time is not None:
        f.histogram(
            "messaging_process_duration",
            "Handler durations (OpenTelemetry messaging.process.duration).",
            who,
            process_time,
        )
    for service, histogram in sorted(calls.time.items()):
        f.histogram(
            "messaging_client_operation_duration",
            "Request durations by service, every outcome (OpenTelemetry messaging.client.operation.duration).",
            {**who, "operation": "request", "messaging_destination_name": service},
            histogram,
        )
        for outcome, n in calls.outcomes[service].items():
            f.counter(
                "zmqbus_requests",
                "Requests made, by service and outcome.",
                {**who, "service": service, "outcome": outcome},
                n,
            )
    if "served_requests" in s.rpc:  # a responder: every outcome, disjoint
        for outcome, key in SERVED_OUTCOMES.items():
            f.counter(
                "zmqbus_served",
                "Requests served, by outcome (disjoint: their sum is every request answered or refused).",
                {**who, "outcome": outcome},
                s.rpc.get(f"served_{key}", 0),
            )
        f.counter(
            "zmqbus_served_undeliverable",
            "Replies that could not be sent (the caller's connection was gone).",
            who,
            s.rpc.get("served_undeliverable", 0),
        )
    for key, n in sorted(s.rpc.items()):
        if key in ("retries", "requeues", "failovers", "late_replies", "presence_refused"):
            f.counter(f"zmqbus_request_{key}", f"Request {key.replace('_', ' ')}.", who, n)
        elif key in ("in_flight", "instances_known"):
            f.gauge(f"zmqbus_request_{key}", f"Requests: {key.replace('_', ' ')}.", who, n)
    for key, (kind, doc) in _RECOVERY.items():
        if key in s.recovery:
            (f.gauge if kind == "gauge" else f.counter)(f"zmqbus_recovery_{key}", doc, who, s.recovery[key])
    return f.rows


_RECOVERY = {
    "recovered": ("counter", "Messages fetched back from publishers' history and delivered."),
    "lost": ("counter", "Messages lost for good: not recovered (also in zmqbus_gaps_total)."),
    "held": ("gauge", "Messages held while missing ones are fetched."),
    "fetches": ("counter", "History fetches made."),
    "failed": ("counter", "History fetches that got no answer."),
    "history_messages": ("gauge", "Published messages kept for recovery."),
    "history_bytes": ("gauge", "Bytes of published messages kept for recovery."),
    "history_evicted": ("counter", "Kept messages evicted (bounds reached)."),
    "served": ("counter", "History fetches served to subscribers."),
    "refused": ("counter", "History fetches refused (malformed, or a topic the key may not read)."),
}


def forwarder_samples(s: ForwarderStatistics) -> list[Sample]:
    """A forwarder's metrics, from its statistics."""
    f = _Rows()
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
    for reason, n in sorted({**dict.fromkeys(REFUSAL_REASONS, 0), **s.refused}.items()):
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
    return f.rows
