"""Sequence numbers per (publisher, topic): numbering on the way out, gap detection on the way in.

PROTOCOL.md section 4.2, as code:

* A publisher numbers its messages per topic from 1 (:class:`Sequencer`). A
  subscriber sees only the topics it subscribed to, so a per-publisher
  counter would show gaps that are not losses.
* A receiver (:class:`GapDetector`) counts ``sequence - last - 1`` messages
  as lost when a number skips ahead. A number that goes back, or jumps ahead
  by more than :data:`MAX_PLAUSIBLE_GAP`, is a *reset* (a restarted or
  forged publisher), never loss. Sequence 0 means "not numbered" and detects
  nothing. The first message seen from a publisher on a topic detects
  nothing either (there is nothing to compare with).
* Memory is bounded: past ``topics_limit`` topics a publisher starts every
  topic over at 1 and a receiver forgets a publisher's topics; past
  ``publishers_limit`` publishers a receiver forgets them all. Forgetting
  loses only loss detection for what it forgot, never a message.

Pure code: no sockets, no event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "MAX_PLAUSIBLE_GAP",
    "SEQ_TOPICS_LIMIT",
    "GapDetector",
    "RedundantGapDetector",
    "DUPLICATE",
    "SequenceJump",
    "Sequencer",
]

#: A forward jump of more sequence numbers than this is not believed to be loss.
MAX_PLAUSIBLE_GAP = 1 << 24
#: Topics whose sequence numbers one client tracks per publisher.
SEQ_TOPICS_LIMIT = 100_000
_PUBLISHERS_LIMIT = 10_000


class Sequencer:
    """The publishing side: the next sequence number for a topic (keyed by its frame head)."""

    __slots__ = ("_next", "topics_limit")

    def __init__(self, topics_limit: int = SEQ_TOPICS_LIMIT) -> None:
        self._next: dict[bytes, int] = {}
        self.topics_limit = topics_limit

    def __len__(self) -> int:
        return len(self._next)

    def next(self, head: bytes) -> int:
        """Number the next message on the topic whose frame head is ``head``."""
        numbers = self._next
        seq = numbers.get(head, 0) + 1
        if seq == 1 and len(numbers) >= self.topics_limit:
            # Every topic starts over at 1; receivers take a smaller number for a restart, not a loss.
            numbers.clear()
        numbers[head] = seq
        return seq


@dataclass(frozen=True, slots=True)
class SequenceJump:
    """A sequence number that was not the next one."""

    publisher_id: str
    topic: str
    last: int
    sequence: int

    @property
    def missing(self) -> int:
        """How many numbers were skipped (negative when it went back)."""
        return self.sequence - self.last - 1

    @property
    def is_reset(self) -> bool:
        """True when this is a restart of the publisher's numbering, not loss."""
        return not 0 <= self.missing <= MAX_PLAUSIBLE_GAP


class GapDetector:
    """The receiving side: counts ``gaps`` (messages lost) and ``resets`` (see the module docstring)."""

    __slots__ = ("_last", "gaps", "resets", "topics_limit", "publishers_limit")

    def __init__(self, topics_limit: int = SEQ_TOPICS_LIMIT, publishers_limit: int = _PUBLISHERS_LIMIT) -> None:
        self._last: dict[str, dict[str, int]] = {}
        self.gaps = 0
        self.resets = 0
        self.topics_limit = topics_limit
        self.publishers_limit = publishers_limit

    def observe(self, publisher_id: str, topic: str, sequence: int) -> SequenceJump | None:
        """Record one received message; return the jump when it was not the next number, else None."""
        per_pub = self._last.get(publisher_id)
        if per_pub is None:
            if len(self._last) >= self.publishers_limit:
                self._last.clear()
            self._last[publisher_id] = {topic: sequence}
            return None
        last = per_pub.get(topic)
        per_pub[topic] = sequence
        if last is None:
            if len(per_pub) > self.topics_limit:
                per_pub.clear()
                per_pub[topic] = sequence
            return None
        if sequence == last + 1 or not sequence:
            return None
        jump = SequenceJump(publisher_id, topic, last, sequence)
        if jump.is_reset:
            self.resets += 1
        else:
            self.gaps += jump.missing
        return jump

    def forget(self, topic_prefix: str, tail: str | None = None) -> None:
        """Forget every topic that starts with ``topic_prefix``, or (``tail``) whose last word is ``tail`` (its
        subscription ended: what is published while nobody listens is not loss)."""
        for per_pub in self._last.values():
            for topic in [t for t in per_pub if _under(t, topic_prefix, tail)]:
                del per_pub[topic]

    def tracked(self) -> tuple[int, int]:
        """How many publishers, and at most how many topics for one of them, are tracked now."""
        return len(self._last), max((len(t) for t in self._last.values()), default=0)


#: What :meth:`RedundantGapDetector.observe` returns for a copy already delivered through another forwarder.
DUPLICATE = SequenceJump("", "", -1, -1)


class _Stream:
    __slots__ = ("first", "high", "missing", "before")

    def __init__(self, first: int) -> None:
        self.first = self.high = first
        self.missing: dict[int, float] = {}  # skipped numbers not seen yet -> when they were skipped
        # Numbers below the first one seen that another forwarder brought later (delivered): what
        # was published before this subscriber's first message is not loss, and arrives at most once.
        self.before: set[int] | None = None


class RedundantGapDetector:
    """The receiving side of a redundant bus (several forwarders): each message arrives once per
    forwarder; deliver the first copy of each (publisher, topic, sequence), drop the others
    (``duplicates``), and count a number as lost (``gaps``) only when no forwarder brought it.

    A number skipped by the copy that arrived first is *missing*, not lost, while another
    forwarder may still bring it: until ``window`` later numbers arrived on that stream, or
    ``max_skew`` seconds passed (:meth:`expire`). A late copy of a missing number is delivered
    (so, on a redundant bus, a message can arrive after a later one when one forwarder was
    behind the other). A number more than ``window`` behind the highest seen is a reset of the
    publisher's numbering, as in :class:`GapDetector`. Losses found are queued in ``reports``
    as :class:`SequenceJump` for the caller to log.
    """

    __slots__ = (
        "_streams",
        "gaps",
        "resets",
        "duplicates",
        "window",
        "max_skew",
        "reports",
        "_pending",
        "streams_limit",
        "clock",
    )

    def __init__(
        self,
        window: int = 65_536,
        max_skew: float = 2.0,
        streams_limit: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock  # read only while numbers are missing
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._pending: set[tuple[str, str]] = set()  # streams with missing numbers
        self.gaps = self.resets = self.duplicates = 0
        self.window, self.max_skew, self.streams_limit = window, max_skew, streams_limit
        self.reports: list[SequenceJump] = []

    def observe(self, publisher_id: str, topic: str, sequence: int) -> SequenceJump | None:
        """Record one received copy; return :data:`DUPLICATE` to drop it, a reset jump, or None to deliver it."""
        if not sequence:
            return None
        key = (publisher_id, topic)
        stream = self._streams.get(key)
        if stream is None:
            if len(self._streams) >= self.streams_limit:
                self._streams.clear()
                self._pending.clear()
            self._streams[key] = _Stream(sequence)
            return None
        high = stream.high
        if sequence == high + 1:
            stream.high = sequence
            if stream.missing:
                self._expire_stream(key, stream, self.clock())
            return None
        if sequence > high:
            skipped = sequence - high - 1
            if skipped > MAX_PLAUSIBLE_GAP:
                return self._reset(key, stream, high, sequence)
            kept = min(skipped, self.window)
            now = self.clock()
            if skipped > kept:  # beyond the window: no forwarder can still bring them
                self._lose(publisher_id, topic, high, high + skipped - kept + 1, skipped - kept)
            for missing in range(sequence - kept, sequence):
                stream.missing[missing] = now
            stream.high = sequence
            self._pending.add(key)
            self._expire_stream(key, stream, now)
            return None
        if stream.missing.pop(sequence, None) is not None:
            if not stream.missing:
                self._pending.discard(key)
            return None  # the copy the first forwarder did not bring
        if sequence < high - self.window:
            return self._reset(key, stream, high, sequence)
        if sequence < stream.first:
            before = stream.before
            if before is None:
                before = stream.before = set()
            if sequence not in before and len(before) < self.window:
                before.add(sequence)
                return None  # sent before the first copy we saw, brought by the slower forwarder
        self.duplicates += 1
        return DUPLICATE

    def _reset(self, key: tuple[str, str], stream: _Stream, high: int, sequence: int) -> SequenceJump:
        self.resets += 1
        stream.first = stream.high = sequence
        stream.missing, stream.before = {}, None
        self._pending.discard(key)
        return SequenceJump(key[0], key[1], high, sequence)

    def _lose(self, publisher_id: str, topic: str, last: int, sequence: int, count: int) -> None:
        self.gaps += count
        self.reports.append(SequenceJump(publisher_id, topic, last, sequence))

    def _expire_stream(self, key: tuple[str, str], stream: _Stream, now: float) -> None:
        # Missing numbers are added in increasing order, at increasing times: the oldest come first.
        floor, too_old = stream.high - self.window, now - self.max_skew
        gone = []
        for m, at in stream.missing.items():
            if m >= floor and at >= too_old:
                break
            gone.append(m)
        for m in gone:
            del stream.missing[m]
        if gone:
            self._lose(key[0], key[1], gone[0] - 1, gone[-1] + 1, len(gone))
        if not stream.missing:
            self._pending.discard(key)

    def expire(self, now: float | None = None) -> None:
        """Count as lost the missing numbers no forwarder brought within ``max_skew`` seconds."""
        if not self._pending:
            return
        now = self.clock() if now is None else now
        for key in list(self._pending):
            stream = self._streams.get(key)
            if stream is None:
                self._pending.discard(key)
            else:
                self._expire_stream(key, stream, now)

    @property
    def missing(self) -> int:
        """Numbers skipped but perhaps still on their way through another forwarder."""
        return sum(len(self._streams[k].missing) for k in self._pending if k in self._streams)

    def forget(self, topic_prefix: str, tail: str | None = None) -> None:
        """Forget every topic that starts with ``topic_prefix``, or whose last word is ``tail`` (its
        subscription ended)."""
        for key in [k for k in self._streams if _under(k[1], topic_prefix, tail)]:
            del self._streams[key]
            self._pending.discard(key)

    def tracked(self) -> tuple[int, int]:
        """How many publishers, and at most how many topics for one of them, are tracked now."""
        per: dict[str, int] = {}
        for publisher, _ in self._streams:
            per[publisher] = per.get(publisher, 0) + 1
        return len(per), max(per.values(), default=0)


def _under(topic: str, prefix: str, tail: str | None) -> bool:
    if tail is not None:
        return topic == tail or topic.endswith("." + tail)
    return topic.startswith(prefix)
