"""The publishing path of one client: the mirror of :mod:`.receiver`.

One frame per message (``topic NUL payload``, PROTOCOL.md section 2): the
frame head of each message type is cached, each (publisher, topic) stream is
numbered (section 4.2), and every frame leaves through the outbox
(:mod:`.batching`), at the end of the loop turn. A publish never drops at the
publisher: a frame the high-water mark refuses is held, and the next publish
waits for room, up to its timeout, then raises :class:`BusTimeout`. The very first publish waits for the forwarder's
subscriptions to reach this client (:meth:`Publisher.publish` asks
``ready``), so the first messages are not lost to the slow-joiner effect.

Tail routing (PROTOCOL.md section 2.3): the publishing socket's subscription
notices tell which tail words some subscriber wants (``#.error`` subscribes
the tail prefix of ``error``); a message whose topic ends with such a word is
also sent as a tail copy. With no tail subscription on the bus a publish pays
one truth test for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import time as _time

from ..core.codec import Codec
from ..core.errors import ClosedError
from ..core.message import ProcessingMessage
from ..core.sequence import Sequencer
from ..core.topics import RESERVED_PREFIX, TAIL_MARK, tail_prefix, tail_word
from ..io.transport import BusLink
from . import tracing
from .batching import Batcher

__all__ = ["Publisher"]

_CACHE_LIMIT = 10_000
_CONTROL = RESERVED_PREFIX.encode()


class Publisher:
    """Publishes for one client over its :class:`BusLink` (set by the client once it is connected)."""

    __slots__ = (
        "codec",
        "client_id",
        "name",
        "timeout",
        "link",
        "is_ready",
        "closed",
        "_ready",
        "_heads",
        "_sequencer",
        "published",
        "published_bytes",
        "publish_waits",
        "unconfirmed",
        "record",
        "on_first",
        "tails",
        "tail_copies",
        "tail_copies_skipped",
        "_tail_heads",
        "batcher",
        "gate",
    )

    def __init__(
        self,
        codec: Codec,
        client_id: str,
        timeout: float,
        ready: Callable[[float], Awaitable[None]],
        name: str = "",
        *,
        batch_messages: int = 64,
        batching: bool = False,
    ) -> None:
        """``batch_messages``: the outbox's flush size (and a batch frame's most messages); ``batching``: the
        outbox also combines runs of one topic into batch frames (PROTOCOL.md section 2.4)."""
        self.codec, self.client_id, self.timeout = codec, client_id, timeout
        #: The ``source_component`` of messages that leave it empty (the client's name).
        self.name = name
        self.link: BusLink | None = None
        #: Set once the forwarder's subscriptions are known to reach this client (the first ``ready``).
        self.is_ready = False
        self.closed = False
        self._ready = ready
        self._heads: dict[object, bytes] = {}
        self._sequencer = Sequencer()
        self.published = self.published_bytes = self.publish_waits = self.unconfirmed = 0
        #: Keeps what is published for recovery (a HistoryCache's record; None: history off), and what to
        #: call on the first publish on a user topic (start serving that history).
        self.record: Callable[[bytes, int, bytes, float], None] | None = None
        self.on_first: Callable[[], None] | None = None
        #: The tail words subscribed somewhere on the bus (from the notices), and the tail copies sent.
        self.tails: set[str] = set()
        self.tail_copies = self.tail_copies_skipped = 0
        self._tail_heads: dict[bytes, bytes] = {}  # frame head -> its tail copy's head (b"": none wanted)
        #: The outbox every frame leaves through (batching.py), combining frames when batching is on.
        self.batcher = Batcher(self, batch_messages, combine=batching)
        #: What a publish checks before anything else (the client's policy, a refused key), if anything.
        self.gate: Callable[[ProcessingMessage, str | None], None] | None = None

    def flush(self) -> None:
        """Send what the outbox holds (before a probe, at close)."""
        self.batcher.flush()

    async def publish(self, message: ProcessingMessage, topic: str | None, timeout: float | None) -> None:
        """Encode, number and send ``message`` (see :meth:`MessageBroker.publish` for what it raises)."""
        if self.gate is not None:
            self.gate(message, topic)
        if timeout is None:
            timeout = self.timeout
        codec = self.codec
        if not self.is_ready:
            # Bad input fails at once, not after waiting for the bus; then wait, once, until a new publishing
            # socket holds the forwarder's subscriptions instead of losing the first messages silently.
            codec.encode(message, codec.frame_head(message, topic), self.client_id, 0, self.name)
            await self._ready(timeout)
        link = self.link
        if link is None:
            raise ClosedError("MessageBroker is closed" if self.closed else "MessageBroker is not started")
        if topic is None and message.topic is None:
            # The common case: the topic is the message type's name.
            head = self._heads.get(message.message_type)
            if head is None:
                head = self._type_head(message)
        else:
            head = codec.frame_head(message, topic)
        seq = self._sequencer.next(head)  # per (publisher, topic): PROTOCOL.md section 4.2
        payload = codec.encode(message, head, self.client_id, seq, self.name)
        frame = head + payload
        outbox = self.batcher  # leaves at the end of the loop turn, as its own frame or batched (batching.py)
        if outbox.stalled:  # the high-water mark holds earlier frames: wait for room, or BusTimeout
            await outbox.wait_room(timeout)
            if self.closed:
                raise ClosedError("MessageBroker closed while publishing")
        if outbox.combine:
            outbox.add(head, payload)
        else:
            outbox.add_frame(frame)
        if not seq & 0xFF:  # every 256th message of a topic: a publisher that never yields sees new tails too
            self.poll_notices()
        if self.tails and not outbox.combine:  # a tail pattern (#.error) is subscribed: a copy under the last
            tail = self.tail_head(head)  # word (a batch frame gets its copy in batching.py)
            if tail and len(tail) + len(frame) <= codec.max_message_size:
                self.tail_copies += 1
                outbox.add_frame(tail + frame)
            elif tail:  # within a tail header of the size limit: its tail subscribers count it as a gap
                self.tail_copies_skipped += 1
        record = self.record
        if record is not None and not head.startswith(_CONTROL):  # control topics are not kept
            record(head, seq, frame, _time())
            if self.on_first is not None:  # the first message sent on a user topic: serve the history
                on_first, self.on_first = self.on_first, None
                on_first()
        self.published += 1
        self.published_bytes += len(frame)

    async def publish_traced(self, message: ProcessingMessage, topic: str | None, timeout: float | None) -> None:
        """:meth:`publish` inside a ``send`` span, the trace context carried in the message's headers
        (tracing is on: :mod:`zmqbus.bus.tracing`)."""
        destination = topic or message.topic or message.type_name
        if not tracing.traced(destination):
            return await self.publish(message, topic, timeout)
        span, token = tracing.start_span("send", destination, message, self.client_id, remote=False)
        try:
            tracing.inject(message)
            await self.publish(message, topic, timeout)
        except BaseException as exc:
            tracing.end_span(span, exc)
            raise
        else:
            tracing.end_span(span)
        finally:
            tracing.detach(token)

    async def watch_notices(self, link: BusLink) -> None:
        """Read the publishing socket's subscription notices as they come, until cancelled. A send may eat
        the socket's wake-up, so the wait is bounded: a new tail subscription is seen within 0.25 s by a
        publisher that yields to its event loop, within 256 messages of a topic by one that never does
        (:meth:`publish` reads them then), and at once by a ``ready()`` of this client."""
        while True:
            self.poll_notices()
            await link.pub.wait_readable(0.25)

    def poll_notices(self) -> None:
        """Read the subscription notices that reached the publishing socket and keep :attr:`tails` current."""
        link = self.link
        if link is None:
            return
        changed = False
        for notice in link.read_notices():
            if notice[1:2] == TAIL_MARK and notice.endswith(b"\x00") and len(notice) > 3:
                word = notice[2:-1].decode(errors="replace")
                if notice[0] == 1:
                    self.tails.add(word)
                else:
                    self.tails.discard(word)
                changed = True
        if changed:
            self._tail_heads.clear()

    def tail_head(self, head: bytes) -> bytes:
        """The tail copy's header for a frame head (cached), b"" when no subscriber wants that tail."""
        tail = self._tail_heads.get(head)
        if tail is not None:
            return tail
        word = tail_word(head[:-1].decode())
        tail = tail_prefix(word) if word in self.tails and not head.startswith(_CONTROL) else b""
        if len(self._tail_heads) >= _CACHE_LIMIT:
            self._tail_heads.clear()
        self._tail_heads[head] = tail
        return tail

    def _type_head(self, message: ProcessingMessage) -> bytes:
        head = self.codec.frame_head(message)
        if len(self._heads) >= _CACHE_LIMIT:
            self._heads.clear()
        self._heads[message.message_type] = head
        return head
