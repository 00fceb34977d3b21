"""Both sides of recovery (PROTOCOL.md section 14): a publisher's history, and a subscriber's fetches.

:class:`PublisherHistory` keeps what its client published (a
:class:`~zmqbus.core.history.HistoryCache`), announces its recent streams in
the client's presence, and answers the ``_zmqbus.history`` service, peer to
peer over the client's responder: never through the forwarder, with the same
CURVE and allow-list, and only for topics the caller's key may read.

:class:`Recoverer` is the subscriber's IO shell around
:class:`~zmqbus.core.recovery.Recovery`: it turns announced streams into
fetches, runs each fetch as a request to the one publisher that holds the
numbers, and hands what comes back to the receiver, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..core.codec import Codec
from ..core.control import (
    HISTORY_SERVICE,
    MAX_ANNOUNCED_STREAMS,
    PRESENCE_TOPIC,
    HistoryQuery,
    HistoryReply,
    Presence,
)
from ..core.errors import DecodeError, ZmqbusError
from ..core.history import HISTORY_FETCH_LIMIT, HistoryCache
from ..core.message import ProcessingMessage
from ..core.policy import Policy
from ..core.ratelog import RateLimitedLog
from ..core.recovery import Fetch, Recovery
from ..core.retry import RetryPolicy
from ..core.security import KeyRing
from ..core.subscriptions import SubscriptionTable
from ..core.topics import RESERVED_PREFIX
from ..io.aio import TaskOwner
from ..io.journal import StreamJournal
from .options import BrokerOptions
from .port import caller_key
from .publisher import Publisher
from .receiver import Receiver
from .requests import Requests
from .subscribing import Subscriptions

__all__ = ["PublisherHistory", "Recoverer", "enable_recovery"]

log = logging.getLogger("zmqbus.bus.broker")


class PublisherHistory:
    """A client's published messages, kept within the cache's bounds and served to subscribers."""

    def __init__(
        self, cache: HistoryCache, max_reply_bytes: int, policy: Callable[[], Policy | None], key_name: str = ""
    ) -> None:
        self.cache, self.max_reply_bytes, self._policy = cache, max_reply_bytes, policy
        self.key_name = key_name  # this client's own key (a secure bus): it serves only what it may publish
        self.served = self.refused = 0

    def streams(self) -> dict[str, int]:
        """The topics published within the cache's age, with their last numbers (for presence)."""
        latest = self.cache.latest(time.time())
        return {head[:-1].decode(): last for head, last in list(latest.items())[-MAX_ANNOUNCED_STREAMS:]}

    def serve(self, message: ProcessingMessage) -> dict[str, Any]:
        """The ``_zmqbus.history`` service: a :class:`HistoryQuery` in, a :class:`HistoryReply` out."""
        try:
            query = HistoryQuery.from_content(message.content, HISTORY_FETCH_LIMIT)
        except DecodeError:
            self.refused += 1
            raise
        policy = self._policy()
        if policy is not None and not policy.may_read(caller_key.get(), query.topic):
            self.refused += 1
            raise PermissionError(f"key {caller_key.get()!r} may not read {query.topic!r}")
        if policy is not None and self.key_name and not policy.may_publish(self.key_name, query.topic):
            # the forwarder dropped what this key published there: its history must not hand it out either
            self.refused += 1
            raise PermissionError(f"key {self.key_name!r} may not publish {query.topic!r}")
        head, now = query.topic.encode() + b"\0", time.time()
        first = query.first
        if query.since is not None:
            first = max(first, self.cache.since(head, query.since, now) or (1 << 62))
        got = self.cache.fetch(head, first, query.last, now, query.limit, self.max_reply_bytes)
        self.served += 1
        return HistoryReply(frames=got.frames, first=got.first, oldest=got.oldest, last=got.last).to_content()


Deliver = Callable[[list[ProcessingMessage]], Awaitable[None]]
Request = Callable[[ProcessingMessage, float, str], Awaitable[ProcessingMessage]]


class Recoverer:
    """Fetches what the receiver's :class:`Recovery` core says is missing, and delivers what comes back."""

    def __init__(
        self,
        recovery: Recovery[ProcessingMessage],
        codec: Codec,
        table: SubscriptionTable,
        request: Request,
        deliver: Deliver,
        spawn: Callable[[Any], object],
    ) -> None:
        self.recovery, self.codec, self.table = recovery, codec, table
        self._request, self._deliver, self._spawn = request, deliver, spawn
        #: Whether the publisher that announced these streams may publish ``topic`` (a secure bus with a
        #: policy): a stream it may not publish is never fetched, since the forwarder dropped it.
        self.may_publish: Callable[[Presence, str], bool] = lambda presence, topic: True
        #: When this client's subscriptions went live (epoch seconds): a stream it never saw is fetched from then.
        self.live_since = 0.0
        self.history: PublisherHistory | None = None  # the same client's publishing side
        self.refused_streams = 0  # announced streams of topics their publisher may not publish: not fetched
        self.journal: StreamJournal | None = None  # where it stands in each stream, across restarts
        self._faults = RateLimitedLog(log)

    def went_live(self) -> None:
        """This client's subscriptions are live (its first ``ready``): streams first seen later are fetched
        from this time on."""
        if not self.live_since:
            self.live_since = time.time()

    def open_journal(self, receiver: Receiver) -> None:
        """Resume from the journal's positions (a restarted process) and record from now on."""
        if self.journal is None or receiver.journal is not None:
            return
        for (publisher, topic), seq in self.journal.load().items():
            self.recovery.resume(publisher, topic, seq)
        receiver.journal = self.journal

    def close(self, receiver: Receiver) -> None:
        receiver.journal = None
        if self.journal is not None:
            self.journal.close()

    def fetch(self, fetch: Fetch) -> None:
        """Start a fetch (a task: the receiver goes on meanwhile)."""
        self._spawn(self._run(fetch))

    def on_presence(self, presence: Presence, now: float) -> None:
        """A publisher's announced streams: fetch what this client subscribes to and has not received."""
        if not presence.streams or not self.live_since:
            return
        for topic, last in presence.streams.items():
            if topic.startswith(RESERVED_PREFIX) or not self.table.match(topic):
                continue
            if not self.may_publish(presence, topic):
                self.refused_streams += 1
                continue
            since = None if self.recovery.last(presence.instance, topic) is not None else self.live_since
            fetch = self.recovery.announced(presence.instance, topic, last, now, since)
            if fetch is not None:
                self.fetch(fetch)

    async def _run(self, fetch: Fetch) -> None:
        loop = asyncio.get_running_loop()
        timeout = max(0.05, self.recovery.holdback)
        query = HistoryQuery(topic=fetch.topic, first=fetch.first, last=fetch.last, since=fetch.since)
        try:
            reply = await self._request(
                ProcessingMessage(HISTORY_SERVICE, query.to_content()), timeout, fetch.publisher
            )
            got = HistoryReply.from_content(reply.content)
            items = [(m.metadata.sequence, m) for m in map(self.codec.decode_frame, got.frames)]
        except (ZmqbusError, DecodeError) as exc:
            self._faults.log(
                logging.WARNING,
                f"fetch:{fetch.topic}",
                "could not recover %d message(s) on %r from publisher %s: %s",
                fetch.last - fetch.first + 1,
                fetch.topic,
                fetch.publisher,
                exc,
            )
            await self._deliver(self.recovery.failed(fetch))
            return
        if any(m.topic != fetch.topic for _, m in items):
            self._faults.log(logging.WARNING, "fetch-topic", "a history reply from %s mixed topics", fetch.publisher)
            items = [(n, m) for n, m in items if m.topic == fetch.topic]
        out, more = self.recovery.recovered(fetch, items, got.oldest, got.last, loop.time())
        await self._deliver(out)
        if more is not None:
            self.fetch(more)


#: Recovery's fetches: a second try at most, within the holdback (the core gives up and counts then).
FETCH_RETRY = RetryPolicy(attempts=2, attempt_timeout=None, backoff=0.02)


def enable_recovery(
    options: BrokerOptions,
    codec: Codec,
    publisher: Publisher,
    receiver: Receiver,
    subscriptions: Subscriptions,
    requests: Requests,
    owner: TaskOwner,
    policy: Callable[[], Policy | None],
    keys: Callable[[], KeyRing | None] = lambda: None,
) -> Recoverer:
    """Give a client both sides of recovery (its settings: ``options.history*`` and ``holdback``): its
    publisher keeps and serves history, its receiver recovers, its presence names its streams."""
    history = PublisherHistory(
        HistoryCache(options.history_messages, options.history_bytes, options.history_age),
        options.max_message_size // 2,
        policy,
    )
    ring = keys()
    history.key_name = ring.name if ring is not None else ""
    publisher.record = history.cache.record
    requests.streams = history.streams
    publisher.on_first = lambda: requests.serve(HISTORY_SERVICE, history.serve, True)

    async def fetch(message: ProcessingMessage, timeout: float, instance: str) -> ProcessingMessage:
        caller = await requests.get_caller()
        return await caller.request(HISTORY_SERVICE, message, timeout, FETCH_RETRY, instance)

    def spawn(coro: Any) -> object:
        return owner.spawn(coro, name="zmqbus-recovery", fatal=False)

    recovery: Recovery[ProcessingMessage] = Recovery(options.holdback)
    subscriptions.backfills = []
    recovery.backfill = subscriptions.backfill_for
    receiver.recovery = recovery
    recoverer = Recoverer(recovery, codec, subscriptions.table, fetch, receiver.release, spawn)

    def may_publish(presence: Presence, topic: str) -> bool:
        rules, ring = policy(), keys()
        if rules is None or ring is None or presence.key is None:
            return True  # no publish rules (or a plaintext bus, where none can be enforced)
        name = ring.allowed.get(presence.key.encode())
        return name is not None and rules.may_publish(name, topic)

    recoverer.may_publish = may_publish
    receiver.on_fetch = recoverer.fetch
    recoverer.history = history
    if options.resume_file:
        recoverer.journal = StreamJournal(options.resume_file)

    def on_presence(msg: ProcessingMessage) -> None:
        try:
            presence = Presence.from_content(msg.content)
        except DecodeError:
            return  # the caller logs malformed presence
        recoverer.on_presence(presence, asyncio.get_running_loop().time())

    subscriptions.add_private("zmqbus", PRESENCE_TOPIC, on_presence)
    return recoverer
