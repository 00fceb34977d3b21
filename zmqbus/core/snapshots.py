"""Snapshots of a client's and a forwarder's counters, and the metric samples made of them. Pure data.

:meth:`MessageBroker.statistics` and :meth:`Forwarder.statistics` return these;
:mod:`zmqbus.bus.samples` turns them into :class:`Sample` rows, which
:mod:`zmqbus.bus.metrics` serves without knowing where they came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, NamedTuple

from .stats import Histogram

__all__ = ["BrokerStatistics", "ForwarderStatistics", "Sample"]


@dataclass(frozen=True)
class BrokerStatistics:
    """A snapshot of one client's counters (see :meth:`MessageBroker.statistics`)."""

    published: int
    published_bytes: int
    publish_waits: int
    received: int
    received_bytes: int
    dispatched: int
    unmatched: int
    handler_errors: int
    gaps: int
    sequence_resets: int
    unconfirmed: int
    decode_errors: dict[str, int]
    subscriptions: int
    receives_all: int
    rpc: dict[str, int]
    #: Copies dropped because the same number was delivered already (a second forwarder's copy on a redundant
    #: bus, a message that came live after it was recovered).
    duplicates: int = 0
    #: Recovery (PROTOCOL.md section 14), when on: messages recovered from publishers' history, lost for
    #: good (also counted in ``gaps``), held now, fetches made and failed; and this client's own history:
    #: messages and bytes kept, evicted, fetches served and refused.
    recovery: dict[str, int] = field(default_factory=dict)
    #: Tail routing (PROTOCOL.md section 2.3): tail copies this client sent (``sent``), did not send because
    #: the message was within a tail header of the size limit (``skipped``), received as a second copy of a
    #: message its ordinary subscriptions bring and dropped (``dropped``), and the tail words subscribed on
    #: the bus as its publishing socket knows them (``words``).
    tails: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ForwarderStatistics:
    """Counters of a running forwarder.

    ``frames_in``/``bytes_in`` count what publishers sent (a zmqbus message is
    one frame); ``frames_out``/``bytes_out`` what was handed to the XPUB
    side once (ZeroMQ then copies it to each matching subscriber).
    ``subscription_frames`` counts (un)subscriptions from subscribers.
    """

    frames_in: int
    bytes_in: int
    frames_out: int
    bytes_out: int
    subscription_frames: int
    publisher_connects: int
    publisher_disconnects: int
    subscriber_connects: int
    subscriber_disconnects: int
    handshake_failures: int
    uptime: float
    #: Handshakes the allow-list refused, by reason (``unknown_key``...); empty without keys.
    refused: dict[str, int] = field(default_factory=dict)
    #: Subscribers cut because more than ``max_queued_bytes`` could be queued for them.
    slow_subscribers_cut: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Sample(NamedTuple):
    """One metric value: Prometheus's kind, name (no ``_total``), help text, labels and value."""

    kind: Literal["counter", "gauge", "histogram"]
    name: str
    doc: str
    labels: dict[str, str]
    value: float | Histogram
