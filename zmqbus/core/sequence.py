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

from dataclasses import dataclass

__all__ = ["MAX_PLAUSIBLE_GAP", "SEQ_TOPICS_LIMIT", "GapDetector", "SequenceJump", "Sequencer"]

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

    def forget(self, topic_prefix: str) -> None:
        """Forget every topic that starts with ``topic_prefix`` (its subscription ended: what is
        published while nobody listens is not loss)."""
        for per_pub in self._last.values():
            for topic in [t for t in per_pub if t.startswith(topic_prefix)]:
                del per_pub[topic]

    def tracked(self) -> tuple[int, int]:
        """How many publishers, and at most how many topics for one of them, are tracked now."""
        return len(self._last), max((len(t) for t in self._last.values()), default=0)
