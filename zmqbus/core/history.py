"""A publisher's history: what it published recently, kept so a subscriber can fetch what it missed.

Pure code, no sockets. Bounds are global per publisher, never per topic, so no
subscriber and no topic can make the cache grow past them:

* ``max_messages`` and ``max_bytes`` (the frames' sizes): the oldest
  messages are evicted first, whatever their topic (a hot topic can push a
  quiet one's history out: size the bounds for the busiest stream; DEPLOY.md);
* ``max_age`` seconds: older messages are evicted on the next record or fetch.

Within a topic the sequence numbers are consecutive (PROTOCOL.md section
4.2), and eviction takes the oldest, so each topic keeps one contiguous range
``[first, last]``: a fetch is a slice, not a search. A sequence that does not
follow the topic's last one (the publisher restarted its numbering) starts the
topic over.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["HistoryCache", "HistorySlice", "HISTORY_FETCH_LIMIT"]

#: The most messages one fetch returns (a subscriber asks again for the rest).
HISTORY_FETCH_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class HistorySlice:
    """What a fetch found: ``frames`` in order from ``first``; ``oldest`` and ``last`` bound what the cache
    holds for the topic now (0, 0: nothing). Numbers below ``oldest`` are gone for good."""

    frames: tuple[bytes, ...]
    first: int
    oldest: int
    last: int


class HistoryCache:
    """Recent frames per topic (keyed by frame head, ``topic NUL``), bounded by count, bytes and age."""

    __slots__ = ("max_messages", "max_bytes", "max_age", "bytes", "count", "evicted", "_order", "_topics")

    def __init__(self, max_messages: int = 100_000, max_bytes: int = 64 * 1024 * 1024, max_age: float = 60.0) -> None:
        if max_messages < 1 or max_bytes < 1 or max_age <= 0:
            raise ValueError("history bounds must be positive")
        self.max_messages, self.max_bytes, self.max_age = max_messages, max_bytes, max_age
        self.bytes = self.count = 0  # the frames held: their sizes summed, and how many
        self.evicted = 0
        # One entry (seq, time, frame, head) per message, in both: every topic's, oldest first, and its topic's.
        self._order: deque[tuple[int, float, bytes, bytes]] = deque()
        self._topics: dict[bytes, deque[tuple[int, float, bytes, bytes]]] = {}

    def __len__(self) -> int:
        return self.count

    def record(self, head: bytes, seq: int, frame: bytes, now: float) -> None:
        """Keep ``frame``, the message numbered ``seq`` on the topic of ``head``, published at ``now``."""
        entries = self._topics.get(head)
        if entries is None:
            entries = self._topics[head] = deque()
        elif entries and seq != entries[-1][0] + 1:
            self._drop_topic(head)  # a new numbering: the old range means nothing now
            entries = self._topics[head] = deque()
        entry = (seq, now, frame, head)
        entries.append(entry)
        order = self._order
        order.append(entry)
        self.bytes += len(frame)
        self.count += 1
        # the hot path (every publish): evict only when a bound is passed, then 1% more at once
        if self.count > self.max_messages or self.bytes > self.max_bytes or order[0][1] <= now - self.max_age:
            self._evict(now, self.max_messages // 100, self.max_bytes // 100)

    def fetch(
        self,
        head: bytes,
        first: int,
        last: int | None,
        now: float,
        limit: int = HISTORY_FETCH_LIMIT,
        max_bytes: int | None = None,
    ) -> HistorySlice:
        """The frames numbered ``first`` to ``last`` (None: the newest) on ``head``'s topic that are still held,
        at most ``limit`` of them and about ``max_bytes`` (at least one)."""
        self._evict(now)
        entries = self._topics.get(head)
        if not entries:
            return HistorySlice((), first, 0, 0)
        oldest, newest = entries[0][0], entries[-1][0]
        start = max(first, oldest)
        stop = newest if last is None else min(last, newest)
        frames: list[bytes] = []
        size = 0
        for i in range(start - oldest, stop - oldest + 1):
            frame = entries[i][2]
            if len(frames) >= limit or (max_bytes is not None and frames and size + len(frame) > max_bytes):
                break
            frames.append(frame)
            size += len(frame)
        return HistorySlice(tuple(frames), start, oldest, newest)

    def since(self, head: bytes, when: float, now: float) -> int:
        """The first sequence number on ``head``'s topic published at or after ``when`` (0: none held)."""
        self._evict(now)
        for seq, at, _, _ in self._topics.get(head, ()):
            if at >= when:
                return seq
        return 0

    def latest(self, now: float) -> dict[bytes, int]:
        """Each topic with a message still held: its last sequence number (what a heartbeat announces)."""
        self._evict(now)
        return {head: entries[-1][0] for head, entries in self._topics.items() if entries}

    def _evict(self, now: float, spare_messages: int = 0, spare_bytes: int = 0) -> None:
        """Evict the oldest until every bound holds (with ``spare_*`` room below the count and byte bounds)."""
        order, topics = self._order, self._topics
        too_old = now - self.max_age
        max_count, max_bytes = self.max_messages - spare_messages, self.max_bytes - spare_bytes
        while order:
            entry = order[0]
            entries = topics.get(entry[3])
            if not entries or entries[0] is not entry:
                order.popleft()  # dropped with its topic already
                continue
            if self.count <= max_count and self.bytes <= max_bytes and entry[1] > too_old:
                return
            order.popleft()
            entries.popleft()
            self.bytes -= len(entry[2])
            self.count -= 1
            self.evicted += 1
            if not entries:
                del topics[entry[3]]

    def _drop_topic(self, head: bytes) -> None:
        entries = self._topics.pop(head, None)
        if entries:
            self.bytes -= sum(len(e[2]) for e in entries)
            self.count -= len(entries)
            self.evicted += len(entries)
