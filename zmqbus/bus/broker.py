"""``MessageBroker``: the asyncio client of the bus, with the guide's API.

::

    broker = MessageBroker()                      # endpoints from $ZMQBUS_PUB/SUB or defaults
    broker.subscribe("manager", "order.start.request.#", handle)   # plain call, as in the guide
    async with broker:
        await broker.ready()                      # subscriptions are live at the forwarder
        await broker.publish(ProcessingMessage(MessageType.ORDER_START, {...}, MessageMetadata(...)))

Contracts:

* Handlers start one at a time, in arrival order, on the broker's event loop.
  A handler that completes without awaiting anything (most do) finishes
  before the next message is dispatched; one that awaits (a request, a sleep)
  goes on as a task and does not hold up the messages behind it, up to
  about ``max_pending_handlers`` at once (checked between messages). A handler that raises is logged
  (rate-limited) and counted; dispatch goes on. From its first line a handler has a task of its own
  (``asyncio.current_task()``): ``asyncio.timeout`` and ``asyncio.TaskGroup`` cancel the handler,
  never the client's reading.
* Each publisher numbers its messages per topic and keeps them for a while;
  subscribers deliver each stream once and in order, fetch what they missed
  from the publisher, and count as lost only what could not come back.
* ``publish`` never drops at the publisher: at the high-water mark it waits up
  to ``publish_timeout`` seconds for room, then raises :class:`BusTimeout`.
* Malformed input (wrong frame count, bad msgpack, unknown version, oversized)
  is counted by reason in :meth:`statistics`, logged rate-limited, and dropped.

``MessageBroker`` is a façade: each job is a room of its own, readable alone.
Publishing is :mod:`.publisher`, reading and dispatch :mod:`.receiver`, the
probes of ``ready()`` :mod:`.readiness`, request/reply :mod:`.requests` (over
:mod:`.responder`, :mod:`.caller` and the sans-IO cores), the settings
:mod:`.options`; the subscription table and the sequence numbers are pure code
(:mod:`zmqbus.core.subscriptions`, :mod:`zmqbus.core.sequence`), sockets are
:mod:`zmqbus.io.transport`. What stays here: the life cycle and the wiring.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, Unpack

from ..core import config
from ..core.codec import Codec
from ..core.errors import AuthenticationRefused, ClosedError, ZmqbusError
from ..core.ids import new_id
from ..core.message import ProcessingMessage
from ..core.policy import OwnPolicy
from ..core.ratelog import RateLimitedLog
from ..core.retry import RetryPolicy
from ..core.snapshots import BrokerStatistics, Sample
from ..core.stats import Histogram
from ..core.subscriptions import MessageHandler, Subscription, SubscriptionTable
from ..core.topics import RESERVED_PREFIX, compile_pattern
from ..io.aio import TaskOwner, run_on_loop
from ..io.security import HandshakeWatch, open_link, reread_keys
from ..io.transport import BusLink
from . import tracing
from .history import enable_recovery
from .linkwatch import LinkWatch
from .options import BrokerOptions, BrokerSettings
from .port import ServiceHandler
from .publisher import Publisher
from .readiness import Readiness
from .receiver import Receiver
from .requests import Requests
from .samples import broker_samples, broker_statistics
from .subscribing import Subscriptions

__all__ = ["MessageBroker", "Subscription", "BrokerStatistics", "BrokerOptions", "MessageHandler"]

log = logging.getLogger(__name__)


class MessageBroker:
    """An asyncio client of a zmqbus forwarder (see the module docstring).

    :param pub_endpoint: where to publish (the forwarder's XSUB side; several, comma-separated, on a
        redundant bus).
    :param sub_endpoint: where to subscribe (the forwarder's XPUB side).
    :param options: every other setting at once (:class:`BrokerOptions`, which documents each);
        keyword arguments named like its fields (``name=``, ``heartbeat=``, ``keys=``...) override it.
    """

    def __init__(
        self,
        pub_endpoint: str | None = None,
        sub_endpoint: str | None = None,
        *,
        options: BrokerOptions | None = None,
        **settings: Unpack[BrokerSettings],
    ) -> None:
        opts = replace(options or BrokerOptions(), **settings)  # an unknown keyword raises TypeError here
        self.options = opts
        #: This client's unique id (its publisher id on the wire, its instance id as a responder).
        self.client_id = new_id()
        self.pub_endpoint = config.pub_endpoint(pub_endpoint)
        self.sub_endpoint = config.sub_endpoint(sub_endpoint)
        self.keys, self.insecure, self.policy = opts.security()
        self._own = self._own_policy()
        #: Wraps every handler ``subscribe`` registers (a Component sets its guard here).
        self.guard: Callable[[MessageHandler], MessageHandler] | None = None
        self.socket_config = opts.socket_config()
        self.codec = Codec(opts.max_message_size)
        self._table = SubscriptionTable(10_000)
        self._owner = TaskOwner(self._fail)
        self._faults = RateLimitedLog(log)
        #: Forwarders this client subscribes through: more than one is a redundant bus (PROTOCOL.md section 13).
        self.forwarders = len(config.split_endpoints(self.sub_endpoint))
        skew = opts.redundant_skew if self.forwarders > 1 else None
        self._receiver = Receiver(self._table, self.codec, opts.max_pending_handlers, self._faults, redundant=skew)
        self._publisher = Publisher(
            self.codec,
            self.client_id,
            opts.publish_timeout,
            self.ready,
            opts.name,
            batch_messages=opts.batch_messages,
            batching=config.batching(opts.batching),
        )
        if self._own is not None or self.keys is not None:
            self._publisher.gate = self._may_publish
        self._subs = Subscriptions(self._table, self._receiver)
        where = f"{self.pub_endpoint} / {self.sub_endpoint}"
        self._readiness = Readiness(self._publisher, self._subs, lambda: self._watches, where)
        self._requests = Requests(_Port(self), opts.rpc(self.insecure))
        parts = (self.codec, self._publisher, self._receiver, self._subs, self._requests, self._owner)
        self._recoverer = (
            enable_recovery(opts, *parts, lambda: self.policy, lambda: self.keys)
            if config.history(opts.history)
            else None
        )
        self._watches: list[HandshakeWatch] = []  # CURVE handshakes of the bus sockets
        self._link: BusLink | None = None
        self._metrics: Any = None
        self._closed = False
        self._failure: BaseException | None = None
        self._close_task: asyncio.Task[None] | None = None  # holds the task a failure starts (asyncio keeps weak refs)
        self._closing: asyncio.Future[None] | None = None  # set by the first close()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        """The component name: the ``source_component`` of messages that leave it empty."""
        return self._publisher.name

    @name.setter
    def name(self, value: str) -> None:
        self._publisher.name = value

    # -- life cycle ------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the forwarder and start receiving. Idempotent; ``async with``, ``publish`` and ``ready``
        call it for you."""
        self._check_open()
        if self._link is not None:
            return
        link, self._watches = open_link(
            self.socket_config, self.pub_endpoint, self.sub_endpoint, self.keys, self.insecure
        )
        self._link = self._publisher.link = link
        self._loop = asyncio.get_running_loop()
        for watch in self._watches:
            self._owner.spawn(watch.run(), name="zmqbus-handshakes", fatal=False)
        self._subs.attach(link)
        if self._recoverer is not None:
            self._recoverer.open_journal(self._receiver)
        self._reader = self._owner.spawn(self._receiver.run(link), name="zmqbus-reader")
        self._owner.spawn(self._publisher.watch_notices(link), name="zmqbus-notices")
        link_watch = LinkWatch(
            self._publisher, self._receiver, self._subs, f"{self.pub_endpoint} / {self.sub_endpoint}"
        )
        self._owner.spawn(link_watch.run(), name="zmqbus-link-watch", fatal=False)
        if self.options.metrics_port is not None and self._metrics is None:
            from .metrics import serve_metrics

            self._metrics = serve_metrics(self.options.metrics_port, self, addr=self.options.metrics_addr)
        await self._requests.start_responder()
        log.debug("client %s connected to %s / %s", self.client_id, self.pub_endpoint, self.sub_endpoint)

    async def close(self, linger: float | None = None, *, grace: float = 5.0) -> None:
        """Stop receiving and close the sockets. Idempotent; returns within about ``grace + linger`` s.

        A responder first refuses new requests and lets running ones finish for up to ``grace`` seconds;
        their callers are then told it shut down. Then one probe confirms that everything published has
        left (waiting at most ``linger`` s, default: the options'); what could not be is counted in
        ``statistics().unconfirmed`` and logged as a warning: it may be lost.
        """
        if self._closing is not None:
            # Closed, or closing in another task (a fatal failure closes the broker by itself): wait until
            # that has finished, so no socket outlives close().
            if not self._closing.done():
                await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        linger = self.socket_config.linger if linger is None else linger
        try:
            await self._requests.close_responder(grace, linger)  # finishes running requests, says goodbye
            self._closed = self._publisher.closed = True
            await self._requests.close_caller()
            await self._receiver.handlers.cancel()
            self._publisher.flush()
            if self._link is not None and self._reader is not None and not self._reader.done():
                await self._readiness.confirm_published(linger)
            self._readiness.cancel()
            await self._owner.cancel()
            self._reader = None
            self._publisher.batcher.close()  # what it still held is counted in unconfirmed above
            if self._link is not None:
                self._link.close(linger)
                self._link = self._publisher.link = None
                self._subs.attach(None)
            await asyncio.gather(*(watch.close(linger + 1.0) for watch in self._watches))
            self._watches = []
            if self._recoverer is not None:
                self._recoverer.close(self._receiver)
            if self._metrics is not None:
                self._metrics.close()
                self._metrics = None
        finally:
            self._closing.set_result(None)

    def _check_open(self) -> None:
        if (failure := self._failure) is not None:
            raise ClosedError(f"MessageBroker failed: {type(failure).__name__}: {failure}") from failure
        if self._closed:
            raise ClosedError("MessageBroker is closed")

    def _fail(self, exc: BaseException) -> None:
        """A fatal background failure (an owned task died): close, and make the next call raise it."""
        if self._closed or self._failure is not None:
            return
        self._failure = exc
        self._close_task = asyncio.get_running_loop().create_task(self.close(0, grace=0), name="zmqbus-fail")

    async def __aenter__(self) -> MessageBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or a fatal failure closed this client)."""
        return self._closed

    @property
    def started(self) -> bool:
        """True while this client is connected: after :meth:`start`, before :meth:`close`."""
        return self._link is not None

    # -- subscriptions -----------------------------------------------------------

    def subscribe(
        self, component_name: str, pattern: str, handler: MessageHandler, *, history: int = 0
    ) -> Subscription:
        """Call ``handler(message)`` for every message whose topic matches ``pattern`` (:class:`TopicError`
        if it is invalid). A plain call, usable before the broker starts, as in the guide. A
        :class:`~zmqbus.Component`'s broker runs it through the component's :attr:`guard` (timed, retried,
        reported like ``@on``). The same handler on the same pattern twice is one subscription. Topics under
        ``_zmqbus.`` (control traffic) reach only patterns that name that first word literally. ``history``: a
        late joiner's start, each stream with up to that many earlier messages its publisher still holds."""
        self._check_open()
        if self._own is not None:
            self._own.subscribe(compile_pattern(pattern))
        guarded = handler if self.guard is None else self.guard(handler)
        sub, new = self._subs.add(component_name, pattern, guarded, history)
        self._readiness.generation += new
        return sub

    def subscriptions(self) -> list[tuple[str, str]]:
        """The user subscriptions made so far, as (component name, pattern) pairs, in the order made."""
        return [(s.component_name, s.pattern.text) for s in self._table if not s.internal]

    def unsubscribe(
        self, component_name: str | Subscription, pattern: str | None = None, handler: MessageHandler | None = None
    ) -> int:
        """Remove subscriptions; return how many were removed.

        Pass the :class:`Subscription` that ``subscribe`` returned, or a component name with an optional
        pattern and handler to narrow it.
        """
        return self._subs.remove(component_name, pattern, handler)

    async def ready(self, timeout: float = 10.0) -> None:
        """Return once every subscription made so far is live at the forwarder (:mod:`.readiness`).

        The first ``publish`` calls it for you. Raises :class:`BusTimeout` if the forwarder cannot be
        reached in time.
        """
        self._check_open()
        await self.start()
        await self._readiness.probe(timeout)
        if self._recoverer is not None:
            self._recoverer.went_live()

    # -- publishing --------------------------------------------------------------

    def publish(
        self, message: ProcessingMessage, *, topic: str | None = None, timeout: float | None = None
    ) -> Coroutine[Any, Any, None]:
        """Publish ``message`` on ``topic`` (default: its message type's name): ``await broker.publish(...)``.

        Raises :class:`TopicError`, :class:`EncodeError` or :class:`MessageTooLarge` before anything is
        sent, :class:`Forbidden` for a topic its own policy does not allow, :class:`AuthenticationRefused`
        while the forwarder refuses its key (the member tries again by itself, with backoff), and
        :class:`BusTimeout` if the bus cannot be reached, or the high-water mark stays reached,
        for ``timeout`` seconds (default: ``publish_timeout``). While the forwarder is down, messages
        queue in this client (up to the high-water mark) and leave when it is back. With tracing on
        (:mod:`zmqbus.bus.tracing`) it is a ``send`` span and the message carries the trace context.

        A plain method that returns the publishing coroutine (one coroutine a publish, not two: 8% of
        its cost); everything it raises, it raises when awaited, as an ``async def`` would.
        """
        if tracing.tracer is None:
            return self._publisher.publish(message, topic, timeout)
        return self._publisher.publish_traced(message, topic, timeout)

    def _may_publish(self, message: ProcessingMessage, topic: str | None) -> None:
        """What a publish checks first on a bus with keys or a policy (the publisher calls it)."""
        if self._own is not None:  # a policy: refused here, not dropped in silence at the forwarder
            self._own.publish(topic or message.type_name)
        for watch in self._watches:  # a secure bus: a key refused now (revoked) publishes nothing
            if watch.refusal is not None:
                raise AuthenticationRefused(watch.refusal)

    # -- request/reply -----------------------------------------------------------

    def serve(self, service: str, handler: ServiceHandler, *, cancel_at_deadline: bool = True) -> None:
        """Answer requests for ``service`` with ``handler(message) -> reply content`` (a plain call). The
        first makes this client a responder: it binds a ROUTER (``rpc_bind``) and announces itself every
        ``heartbeat`` s. A handler that raises answers an error the caller raises as :class:`RemoteError`.
        Async handlers run on the event loop (never block it); sync ones in a thread.

        The request's deadline is ``message.metadata.deadline`` (:func:`zmqbus.time_left` inside the
        handler). When it passes while an async handler runs, its caller has given up: the handler is
        cancelled and the caller answered ``expired`` (``cancel_at_deadline=False`` lets it run on).
        A sync handler cannot be cancelled; it can check :func:`zmqbus.time_left`."""
        self._check_open()
        if self._own is not None and not service.startswith(RESERVED_PREFIX):
            self._own.serve(service)
        self._requests.serve(service, handler, self._link is not None, cancel_at_deadline)

    def request(
        self,
        service: str,
        message: ProcessingMessage,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        instance: str | None = None,
    ) -> Coroutine[Any, Any, ProcessingMessage]:
        """Send ``message`` to one instance of ``service`` and return its reply (``content``: what the
        handler returned; ``causation_id``: the request's message id). Tries are retried (same message id,
        another instance where one exists) as ``retry`` says, never past ``timeout``. Raises
        :class:`NoResponder` when no instance is alive, :class:`RemoteError` when the handler raised,
        :class:`RequestTimeout` when time or tries ran out. Use a new message for each request.
        ``instance``: that instance only (an id from :meth:`live_instances`; no failover).

        ``await broker.request(...)``: a plain method that returns the request's coroutine, as
        :meth:`publish` does (everything it raises, it raises when awaited)."""
        if self._requests.caller is None:
            return self._first_request(service, message, timeout, retry, instance)
        return self._requests.request(service, message, timeout, retry, instance)

    async def _first_request(
        self, service: str, message: ProcessingMessage, timeout: float, retry: RetryPolicy | None, instance: str | None
    ) -> ProcessingMessage:
        await self.start()
        return await self._requests.request(service, message, timeout, retry, instance)

    async def send(
        self, service: str, message: ProcessingMessage, *, timeout: float = 10.0, retry: RetryPolicy | None = None
    ) -> None:
        """A one-way command: :meth:`request` (until the work is done), the result dropped; else publish."""
        await self.request(service, message, timeout=timeout, retry=retry)

    async def discover(self, timeout: float = 10.0) -> None:
        """Get ready to call: start the requesting side now (its presence subscription, proven live within
        ``timeout`` s) and ask every responder on the bus to announce itself, so this client knows and
        connects to them before its first request, which then does not wait for discovery (about 10 ms, and
        all of a burst of first requests wait together). Managers and Handlers do this when they start."""
        await self.start()
        caller = await self._requests.get_caller()
        await self.ready(timeout)
        await caller.discover_all()

    async def wait_for_service(
        self, service: str, *, instances: int = 1, timeout: float = 10.0, instance_id: str | None = None
    ) -> int:
        """Wait until this client knows ``instances`` live instances of ``service`` (or the one
        ``instance_id``); return how many it knows, or raise :class:`NoResponder` after ``timeout``. Call it
        where a responder is coming up: a request right then can raise NoResponder (discovery waits 0.5 s)."""
        await self.start()
        caller = await self._requests.get_caller()
        return await caller.wait_for(service, instances, timeout, instance_id)

    @property
    def services(self) -> tuple[str, ...]:
        """The services this client serves (``serve``), sorted."""
        return tuple(sorted(s for s in self._requests.handlers if not s.startswith(RESERVED_PREFIX)))

    def instance_info(self, service: str) -> list[dict[str, Any]]:
        """What the live instances of ``service`` announce about themselves (pid, host, version, started,
        name, replica: PROTOCOL.md section 8.1), as far as this client knows."""
        return self._requests.instance_info(service)

    def live_instances(self, service: str) -> list[str]:
        """The instance ids of ``service`` this client knows alive now (learnt from announcements once it asks)."""
        return self._requests.live_instances(service)

    def handler_for(self, service: str) -> ServiceHandler | None:
        """The handler ``serve`` registered for ``service`` (None if this client does not serve it)."""
        return self._requests.handlers.get(service)

    def served_by_service(self) -> dict[str, dict[str, Any]]:
        """Requests this client's handlers ran, per service (``outcomes``: ok, failed, abandoned; latency
        ``buckets`` on :data:`zmqbus.core.stats.LATENCY_BUCKETS`, ``sum``, ``count``); ``<name>.status``
        answers with it, ``zmqbus ls --stats`` reads it."""
        return self._requests.served_by_service()

    def cancels_at_deadline(self, service: str) -> bool:
        """Whether ``serve`` said to cancel ``service``'s async handler at a request's deadline."""
        return self._requests.cancel_at_deadline.get(service, True)

    def _own_policy(self) -> OwnPolicy | None:
        """What this member's policy lets it do, by the name the forwarder knows its key by."""
        if self.policy is None or self.keys is None:
            return None
        return OwnPolicy(self.policy, self.keys.allowed.get(self.keys.public, self.keys.name))

    def reload_keys(self) -> tuple[list[str], list[str]]:
        """Read the allow-list folder (and ``$ZMQBUS_POLICY``'s file, if a policy came from it) again.

        Its responder accepts only the new list from now on (live connections stay until they
        reconnect), and its caller trusts responders by it. Returns the key names (added, removed);
        ``zmqbus run`` calls it on SIGHUP.
        """
        if self.keys is None or self.keys.allowed_dir is None:
            raise ZmqbusError("this client has no allow-list to reload (it was started without keys)")
        self.keys, self.policy, added, removed = reread_keys(self.keys, self.policy)
        self._own = self._own_policy()
        self._requests.allow(dict(self.keys.allowed))
        log.info("client %s reloaded its allow-list: added %s, removed %s", self.client_id, added, removed)
        return added, removed

    # -- observability -----------------------------------------------------------

    def statistics(self) -> BrokerStatistics:
        """A consistent snapshot of this client's counters (call it on the broker's event loop)."""
        return broker_statistics(
            self._publisher, self._receiver, self._table, self._requests.counters(), self._recoverer
        )

    def metric_samples(self) -> list[Sample]:
        """This client's metrics (:mod:`zmqbus.bus.metrics`), taken on its event loop, from any thread."""
        if self._loop is None or self._closed:
            raise ClosedError("MessageBroker is not running")
        return run_on_loop(self._loop, self._samples, 2.0)

    def _samples(self) -> list[Sample]:
        # Labels that stay the same across restarts: the component's name and replica number
        # (the client id, new at every start, is on zmqbus_client_info only).
        who, rq = {"name": self.name, "replica": str(self.options.replica)}, self._requests
        return broker_samples(self.statistics(), who, self._receiver.process_time, rq.service_calls(), self.client_id)

    def enable_handler_timing(self) -> None:
        """Time every handler from now on (its metric ``messaging_process_duration``; metrics switch it on)."""
        if self._receiver.process_time is None:
            self._receiver.process_time = Histogram()


class _Port:
    """The narrow view of a :class:`MessageBroker` its responder and caller get (:class:`~.port.BusPort`)."""

    __slots__ = ("_broker", "client_id", "codec", "socket_config", "owner")

    def __init__(self, broker: MessageBroker) -> None:
        self._broker = broker
        self.client_id, self.codec, self.socket_config = broker.client_id, broker.codec, broker.socket_config
        self.owner = broker._owner

    name = property(lambda self: self._broker.name)
    keys = property(lambda self: self._broker.keys)
    policy = property(lambda self: self._broker.policy)
    is_ready = property(lambda self: self._broker._publisher.is_ready)
    subscriptions_live = property(lambda self: self._broker._readiness.live)

    def subscribe(self, component_name: str, pattern: str, handler: MessageHandler) -> Subscription:
        return self._broker.subscribe(component_name, pattern, handler)

    async def publish(self, message: ProcessingMessage, *, timeout: float | None = None) -> None:
        await self._broker.publish(message, timeout=timeout)

    async def ready(self, timeout: float) -> None:
        await self._broker.ready(timeout)
