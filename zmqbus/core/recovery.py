"""A subscriber's recovery of what it missed: each (publisher, topic) stream delivered once, in order.

Pure code: time is passed in, messages are opaque (``M``). The receiver hands
every numbered message to :meth:`Recovery.observe` and delivers what comes
back; when a number is missing, the core holds the later messages of that
stream and asks the shell to :class:`Fetch` the missing numbers from the
publisher's history (PROTOCOL.md section 14). The shell hands the reply to
:meth:`Recovery.recovered`, or reports a failed fetch to
:meth:`Recovery.failed`. Rules it keeps:

* a stream's messages are delivered in sequence order, each number at most
  once: a copy through another forwarder, a recovered message that arrived
  live meanwhile, a retried fetch's overlap are dropped (``duplicates``);
* the first message of a stream seen for the first time sets its baseline
  and is delivered, unless the stream was announced first (a heartbeat, a
  resumed state): then what came before it is fetched too;
* later messages wait at most ``holdback`` seconds (and ``max_held`` per
  stream) for the missing ones; then the missing numbers are counted lost,
  exactly, and the held ones delivered;
* numbers the publisher no longer holds (below its oldest) are lost at once;
* a publisher's heartbeat that names a number beyond the stream's last shows
  messages nobody received (the last ones before it went quiet): fetched too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .sequence import MAX_PLAUSIBLE_GAP

__all__ = ["Recovery", "Fetch", "RecoveryStatistics"]

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Fetch:
    """Ask ``publisher`` for the numbers ``first`` to ``last`` on ``topic`` (``since``: from the first message
    it published at that time or after, for a stream whose start this subscriber never saw)."""

    publisher: str
    topic: str
    first: int
    last: int
    since: float | None = None
    #: Which fetch of the stream this is: a reply to an older one (it was given up) only adds what it brings.
    serial: int = 0


@dataclass
class RecoveryStatistics:
    """What recovery did: messages recovered from history, lost for good, duplicates dropped, held now,
    fetches asked and failed, and numberings that restarted (not loss)."""

    recovered: int = 0
    lost: int = 0
    duplicates: int = 0
    held: int = 0
    fetches: int = 0
    failed_fetches: int = 0
    resets: int = 0


@dataclass(slots=True)
class _Stream(Generic[M]):
    last: int | None  # the last number delivered (None: no baseline yet, a fetch will set it)
    target: int = 0  # the highest number known to exist (held, announced)
    held: dict[int, M] = field(default_factory=dict)
    fetching: bool = False
    deadline: float = 0.0
    serial: int = 0  # the fetch in flight
    floor: int = 0  # numbers below it are a late joiner's history: missing ones are not lost


class Recovery(Generic[M]):
    """The recovery state of one subscriber (see the module docstring)."""

    def __init__(self, holdback: float = 1.0, max_held: int = 10_000, streams_limit: int = 100_000) -> None:
        self.holdback, self.max_held, self.streams_limit = holdback, max_held, streams_limit
        self.stats = RecoveryStatistics()
        self._streams: dict[tuple[str, str], _Stream[M]] = {}
        #: How many earlier messages a stream first seen on ``topic`` should start with (a late joiner's
        #: history; 0: none). Asked only when a stream is new.
        self.backfill: Callable[[str], int] = lambda topic: 0

    # -- events ----------------------------------------------------------------

    def observe(self, publisher: str, topic: str, seq: int, msg: M, now: float) -> tuple[list[M], Fetch | None]:
        """A live message: what to deliver now (in order), and a fetch to start, if any."""
        stream = self._streams.get((publisher, topic))
        if stream is not None and stream.last is not None and seq == stream.last + 1 and not stream.held:
            stream.last = seq  # the hot path: the next number, nothing held
            if seq > stream.target:
                stream.target = seq
            return [msg], None
        if stream is None:
            if len(self._streams) >= self.streams_limit:
                self._forget_idle()
            wanted = min(self.backfill(topic), seq - 1)
            if wanted <= 0:
                self._streams[(publisher, topic)] = _Stream(last=seq, target=seq)
                return [msg], None
            # a late joiner's history: start ``wanted`` numbers earlier, fetched first
            stream = self._streams[(publisher, topic)] = _Stream(last=seq - wanted - 1, target=seq, floor=seq)
        out: list[M] = []
        self._take(stream, seq, msg, out)
        return out, self._next_fetch(publisher, topic, stream, now)

    def announced(self, publisher: str, topic: str, last: int, now: float, since: float | None = None) -> Fetch | None:
        """The publisher says ``last`` is its newest number on ``topic``. ``since`` (a stream this subscriber
        never saw, on a topic it subscribes to): fetch what was published from that time on, or the last
        :attr:`backfill` ones if more."""
        key = (publisher, topic)
        stream = self._streams.get(key)
        if stream is None:
            wanted = min(self.backfill(topic), last)
            if wanted > 0:
                stream = self._streams[key] = _Stream(last=last - wanted, target=last, floor=last + 1)
                return self._next_fetch(publisher, topic, stream, now)
            if since is None:
                return None
            stream = self._streams[key] = _Stream(last=None, target=last)
            stream.fetching, stream.deadline, stream.serial = True, now + self.holdback, 1
            self.stats.fetches += 1
            return Fetch(publisher, topic, 1, last, since, 1)
        if stream.last is not None and last < stream.last - MAX_PLAUSIBLE_GAP:
            return None  # a restarted publisher's numbering: its next message resets the stream
        stream.target = max(stream.target, last)
        return self._next_fetch(publisher, topic, stream, now)

    def resume(self, publisher: str, topic: str, last: int) -> None:
        """A restarted subscriber had delivered up to ``last`` on this stream: start from there."""
        self._streams[(publisher, topic)] = _Stream(last=last, target=last)

    def recovered(
        self, fetch: Fetch, items: list[tuple[int, M]], oldest: int, newest: int, now: float
    ) -> tuple[list[M], Fetch | None]:
        """A fetch's reply: ``items`` (number, message) in order, and the ``oldest`` and ``newest`` numbers the
        publisher holds now (0, 0: none). Returns what to deliver now, and the next fetch if numbers are
        still missing."""
        publisher, topic = fetch.publisher, fetch.topic
        stream = self._streams.get((publisher, topic))
        if stream is None:
            return [], None
        current = stream.fetching and fetch.serial == stream.serial
        if current:
            stream.fetching = False
        out: list[M] = []
        if stream.last is None:  # the first fetch of a stream never seen: its baseline
            first = items[0][0] if items else min(stream.held, default=stream.target + 1)
            stream.last = first - 1
        for seq, msg in items:
            duplicates = self.stats.duplicates
            self._take(stream, seq, msg, out)
            self.stats.recovered += self.stats.duplicates == duplicates
        if stream.last + 1 < oldest:  # gone from the publisher's history: lost for good
            self._lose(stream, min(oldest - 1, self._gap_end(stream)), out)
        if not stream.held and newest < stream.target:
            stream.target = max(stream.last, newest)  # nothing newer exists: the announcement was stale
        return out, self._next_fetch(publisher, topic, stream, now)

    def failed(self, fetch: Fetch) -> list[M]:
        """A fetch got no answer (publisher gone, timeout, refused): what it asked for is lost (nothing
        happens for a fetch already given up)."""
        stream = self._streams.get((fetch.publisher, fetch.topic))
        if stream is None or not stream.fetching or fetch.serial != stream.serial:
            return []
        self.stats.failed_fetches += 1
        return self._give_up(stream)

    def expire(self, now: float) -> list[M]:
        """Streams whose held messages waited ``holdback`` seconds: count the missing ones lost and release."""
        out: list[M] = []
        for stream in self._streams.values():
            if stream.fetching and now >= stream.deadline:
                out.extend(self._give_up(stream))
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has something to do."""
        return min((s.deadline for s in self._streams.values() if s.fetching), default=None)

    def last(self, publisher: str, topic: str) -> int | None:
        """The last number delivered on a stream (None: unknown)."""
        stream = self._streams.get((publisher, topic))
        return None if stream is None else stream.last

    def positions(self) -> dict[tuple[str, str], int]:
        """Every stream's last delivered number (what a restarted subscriber resumes from)."""
        return {key: s.last for key, s in self._streams.items() if s.last is not None}

    def forget(self, topic_prefix: str) -> None:
        """Forget the streams of topics under ``topic_prefix`` (unsubscribed: nothing there is missed)."""
        for key in [k for k in self._streams if k[1].startswith(topic_prefix)]:
            self.stats.held -= len(self._streams.pop(key).held)

    # -- inside ------------------------------------------------------------------

    def _take(self, stream: _Stream[M], seq: int, msg: M, out: list[M]) -> None:
        """Deliver ``msg`` if it is the next number (with what it releases), hold it if it is later."""
        last = stream.last
        if last is None:
            self._hold(stream, seq, msg, out)
            return
        if (seq <= last and last - seq <= MAX_PLAUSIBLE_GAP) or seq in stream.held:
            self.stats.duplicates += 1
            return
        if not 0 <= seq - last - 1 <= MAX_PLAUSIBLE_GAP:  # no gap: the numbering restarted (as GapDetector says)
            self.stats.resets += 1
            self.stats.held -= len(stream.held)
            out.extend(stream.held[k] for k in sorted(stream.held))
            stream.held.clear()
            stream.last = stream.target = seq
            stream.fetching = False
            out.append(msg)
            return
        stream.target = max(stream.target, seq)
        if seq == last + 1:
            stream.last = seq
            out.append(msg)
            self._release(stream, out)
        else:
            self._hold(stream, seq, msg, out)

    def _hold(self, stream: _Stream[M], seq: int, msg: M, out: list[M]) -> None:
        stream.held[seq] = msg
        self.stats.held += 1
        if len(stream.held) > self.max_held:  # no more room: the oldest gap is lost now
            out.extend(self._give_up(stream, first_gap_only=True))

    def _release(self, stream: _Stream[M], out: list[M]) -> None:
        held = stream.held
        last = stream.last
        assert last is not None
        while last + 1 in held:
            last += 1
            out.append(held.pop(last))
            self.stats.held -= 1
        stream.last = last

    def _gap_end(self, stream: _Stream[M]) -> int:
        """The last number of the stream's first gap."""
        return (min(stream.held) - 1) if stream.held else stream.target

    def _lose(self, stream: _Stream[M], upto: int, out: list[M]) -> None:
        assert stream.last is not None
        if upto > stream.last:
            self.stats.lost += max(0, upto - max(stream.last, stream.floor - 1))  # history asked for is no loss
            stream.last = upto
        self._release(stream, out)

    def _give_up(self, stream: _Stream[M], first_gap_only: bool = False) -> list[M]:
        out: list[M] = []
        if not first_gap_only:
            stream.fetching = False
        if stream.last is None:
            if not stream.held:
                stream.last = stream.target
                return out
            stream.last = min(stream.held) - 1  # no baseline came: start from what arrived
        while stream.held or (not first_gap_only and stream.last < stream.target):
            self._lose(stream, self._gap_end(stream), out)
            if first_gap_only:
                break
        return out

    def _next_fetch(self, publisher: str, topic: str, stream: _Stream[M], now: float) -> Fetch | None:
        if stream.fetching or stream.last is None or stream.last >= stream.target:
            return None
        stream.fetching, stream.deadline = True, now + self.holdback
        stream.serial += 1
        self.stats.fetches += 1
        return Fetch(publisher, topic, stream.last + 1, self._gap_end(stream), None, stream.serial)

    def _forget_idle(self) -> None:
        for key in [k for k, s in self._streams.items() if not s.held and not s.fetching]:
            del self._streams[key]
