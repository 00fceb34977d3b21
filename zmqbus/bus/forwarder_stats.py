"""The forwarder's statistics on the bus: published every ``stats_interval`` seconds and on request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..core.codec import Codec
from ..core.control import FORWARDER_QUERY_TOPIC, FORWARDER_STATS_TOPIC
from ..core.errors import ClosedError, TransportError
from ..core.message import MessageMetadata, ProcessingMessage
from ..core.snapshots import ForwarderStatistics

__all__ = ["StatsPublisher", "STATS_TOPIC", "QUERY_TOPIC", "DEFAULT_MAX_QUEUED_BYTES"]

log = logging.getLogger("zmqbus.bus.forwarder")

STATS_TOPIC = FORWARDER_STATS_TOPIC
#: A message on this topic makes the forwarder publish its statistics at once (at most 20 a second).
QUERY_TOPIC = FORWARDER_QUERY_TOPIC
DEFAULT_MAX_QUEUED_BYTES = 128 * 1024 * 1024
_QUERY_EVERY = 0.05  # answers to statistics queries, at most 20 a second


class StatsPublisher:
    """The forwarder's statistics on the bus (``STATS_TOPIC``): every ``stats_interval`` seconds, and at
    once when someone asks (``QUERY_TOPIC``), at most 20 answers a second."""

    def __init__(self, statistics: Callable[[], ForwarderStatistics], source_id: str, interval: float | None) -> None:
        self.statistics, self.source_id, self.interval = statistics, source_id, interval
        self.codec = Codec()
        self.seq = 0
        self.answered = 0.0
        self.next_at = time.monotonic() + (interval or 0)

    def answer(self) -> bytes | None:
        """A query arrived: the statistics frame, unless one was sent in the last 50 ms."""
        now = time.monotonic()
        if now - self.answered < _QUERY_EVERY:
            return None
        self.answered = now
        return self.frame()

    def tick(self) -> bytes | None:
        """The periodic statistics frame, when it is due."""
        interval = self.interval
        if not interval or time.monotonic() < self.next_at:
            return None
        self.next_at += interval
        return self.frame()

    def frame(self) -> bytes | None:
        try:
            stats = self.statistics()
        except (TransportError, ClosedError):
            return None
        self.seq += 1
        msg = ProcessingMessage(STATS_TOPIC, stats.as_dict(), MessageMetadata(source_component="forwarder"))
        head = self.codec.frame_head(msg)
        return head + self.codec.encode(msg, head, self.source_id, self.seq)
