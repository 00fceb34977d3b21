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
  ``max_pending_handlers`` at once. A handler that raises is logged
  (rate-limited) and counted; dispatch goes on.
* Delivery is at-most-once, like all PUB/SUB, but no loss is silent: each
  publisher numbers its messages per topic and subscribers count the gaps.
* ``publish`` never drops at the publisher: at the high-water mark it waits up
  to ``publish_timeout`` seconds for room, then raises :class:`BusTimeout`.
* Malformed input (wrong frame count, bad msgpack, unknown version, oversized)
  is counted by reason in :meth:`statistics`, logged rate-limited, and dropped.

``MessageBroker`` is a façade over small parts, each readable alone: the
subscription table and the sequence numbers are pure code
(:mod:`zmqbus.core.subscriptions`, :mod:`zmqbus.core.sequence`); reading and
dispatch are :mod:`zmqbus.bus.receiver`; request/reply is :mod:`zmqbus.bus.rpc`
over the sans-IO cores; sockets are :mod:`zmqbus.io.transport`. What stays
here: the life cycle (start, ready, close), publishing, and the counters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from ..core import config
from ..core.codec import DEFAULT_MAX_MESSAGE_SIZE, Codec
from ..core.errors import (
    BusTimeout,
    ClosedError,
    NoResponder,
    RemoteError,
    RequestTimeout,
    SecurityError,
    ZmqbusError,
)
from ..core.ids import new_id
from ..core.message import MessageMetadata, ProcessingMessage
from ..core.policy import Policy
from ..core.ratelog import RateLimitedLog
from ..core.retry import RetryPolicy
from ..core.security import KeyRing, check_endpoint
from ..core.sequence import Sequencer
from ..core.stats import Histogram
from ..core.subscriptions import MessageHandler, Subscription, SubscriptionTable
from ..core.topics import RESERVED_PREFIX, compile_pattern, validate_topic
from ..io.aio import TaskOwner, is_async_callable, wait_event
from ..io.security import HandshakeWatch, config_keys, config_policy, reread_keys, secure_link
from ..io.transport import BusLink, SocketConfig
from . import tracing
from .receiver import Receiver
from .rpc import Caller, Responder, RpcOptions, ServiceHandler

__all__ = ["MessageBroker", "Subscription", "BrokerStatistics", "MessageHandler"]

log = logging.getLogger(__name__)

_PROBE_TYPE = "_zmqbus.probe"
_CACHE_LIMIT = 10_000
_DEFAULT_RETRY = RetryPolicy()


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
    #: On a redundant bus: copies dropped because another forwarder's copy was delivered first.
    duplicates: int = 0


class _Counters:
    __slots__ = ("published", "published_bytes", "publish_waits", "unconfirmed")

    def __init__(self) -> None:
        self.published = self.published_bytes = self.publish_waits = self.unconfirmed = 0


class MessageBroker:
    """An asyncio client of a zmqbus forwarder (see the module docstring).

    :param pub_endpoint: where to publish (the forwarder's XSUB side).
    :param sub_endpoint: where to subscribe (the forwarder's XPUB side).
    :param name: default ``source_component`` for messages that leave it empty.
    :param max_message_size: largest encoded message, in bytes, either way.
    :param hwm: high-water mark per socket, in messages.
    :param publish_timeout: seconds ``publish`` may wait at the high-water mark.
    :param linger: seconds ``close`` may spend flushing queued messages.
    :param rpc_bind: where this client's responder binds its ROUTER when it
        serves requests (``*`` picks a free port; ``ipc://`` works on one host).
        Default: ``$ZMQBUS_RPC_BIND``, else ``tcp://127.0.0.1:*``.
    :param rpc_advertise: the host (or whole endpoint) callers should use, when
        it differs from the bound one (binding ``tcp://0.0.0.0:*`` on a
        multi-host bus requires it). Default: ``$ZMQBUS_RPC_ADVERTISE``.
    :param heartbeat: seconds between presence announcements of the responder.
    :param liveness: announcements a caller may miss before it declares the
        responder dead and fails its requests over.
    :param reply_cache_size: replies kept to answer retried requests without
        executing them again.
    :param max_concurrency: requests the responder executes at once.
    :param max_queue: requests that may wait for a free slot; past it (or past
        ``max_queued_bytes`` of them) a request is refused with a retryable
        ``overloaded`` error, so memory stays bounded whatever callers send.
    :param max_queued_bytes: bytes of waiting requests, at most.
    :param max_pending_handlers: subscription handlers that may be suspended
        (awaiting something) at once; past it, receiving waits for one to end.
    :param keys: CURVE keys (:func:`zmqbus.load_keys`); default: read from the
        folder ``$ZMQBUS_KEYS`` under the name ``$ZMQBUS_KEY_NAME`` (``client``)
        when that is set. With keys every socket is encrypted and authenticated
        (docs/SECURITY.md).
    :param insecure: allow a non-loopback tcp endpoint without keys (default:
        ``$ZMQBUS_INSECURE``); without it such a client refuses to start.
    :param policy: per-key permissions (default: the file ``$ZMQBUS_POLICY``,
        if set): its responder refuses calls the caller's key may not make
        (``forbidden``), its caller ignores instances announcing services their
        key may not serve.
    :param metrics_port: serve Prometheus metrics of this client at
        ``http://metrics_addr:metrics_port/metrics`` while it runs (needs
        ``zmqbus[metrics]``; :mod:`zmqbus.bus.metrics`). Default: none.
    :param metrics_addr: the address that serves them (default loopback).
    """

    def __init__(
        self,
        pub_endpoint: str | None = None,
        sub_endpoint: str | None = None,
        *,
        name: str = "",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        hwm: int = 100_000,
        publish_timeout: float = 10.0,
        linger: float = 1.0,
        rpc_bind: str | None = None,
        rpc_advertise: str | None = None,
        heartbeat: float = 1.0,
        liveness: int = 3,
        reply_cache_size: int = 10_000,
        max_concurrency: int = 100,
        max_queue: int = 1000,
        max_queued_bytes: int = 64 * 1024 * 1024,
        max_pending_handlers: int = 1000,
        keys: KeyRing | None = None,
        insecure: bool | None = None,
        policy: Policy | None = None,
        metrics_port: int | None = None,
        metrics_addr: str = "127.0.0.1",
    ) -> None:
        self.metrics_port, self.metrics_addr = metrics_port, metrics_addr
        self._metrics: Any = None
        self.pub_endpoint = config.pub_endpoint(pub_endpoint)
        self.sub_endpoint = config.sub_endpoint(sub_endpoint)
        self.name = name
        #: Wraps every handler ``subscribe`` registers (a Component sets its guard here).
        self.guard: Callable[[MessageHandler], MessageHandler] | None = None
        #: Seconds per request (every outcome) and requests by outcome: ok, remote_error, no_responder,
        #: timeout, error (metrics read them; a few additions per request).
        self.request_time = Histogram()
        self.request_outcomes: dict[str, int] = {}
        self.publish_timeout = publish_timeout
        self.client_id = new_id()
        self.keys = keys if keys is not None else config_keys()
        self.insecure = config.insecure() if insecure is None else insecure
        self.policy = policy if policy is not None else config_policy()
        if self.policy is not None and self.keys is None:
            raise SecurityError("a policy names keys: it needs CURVE keys (keys=, $ZMQBUS_KEYS)")
        self._watches: list[HandshakeWatch] = []  # CURVE handshakes of the bus sockets
        self._socket_config = SocketConfig(hwm=hwm, linger=linger, max_message_size=max_message_size)
        self._codec = Codec(max_message_size)
        self._table = SubscriptionTable(_CACHE_LIMIT)
        self._sequencer = Sequencer()
        self._type_frames: dict[Any, bytes] = {}
        self._n = _Counters()
        self._link: BusLink | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._failure: BaseException | None = None
        self._close_task: asyncio.Task[None] | None = None  # holds the task a failure starts (asyncio keeps weak refs)
        self._closing: asyncio.Future[None] | None = None  # set by the first close()
        self._owner = TaskOwner(self._fail)
        self._probe_count = 0
        self._is_ready = False
        self._sub_generation = 0  # user subscriptions made so far
        self._ready_generation = 0  # ... of which ready() has proven live
        self._confirmed = 0  # published messages known to have reached the forwarder
        self._faults = RateLimitedLog(log)
        #: Forwarders this client subscribes through: more than one is a redundant bus (PROTOCOL.md section 13).
        self.forwarders = len(config.split_endpoints(self.sub_endpoint))
        self._receiver = Receiver(
            self._table, self._codec, max_pending_handlers, self._faults, redundant=self.forwarders > 1
        )
        self._rpc_options = RpcOptions(
            config.rpc_bind(rpc_bind),
            config.rpc_advertise(rpc_advertise),
            heartbeat,
            liveness,
            reply_cache_size,
            max_concurrency,
            self.insecure,
            max_queue,
            max_queued_bytes,
        )
        self._services: dict[str, ServiceHandler] = {}
        self._responder: Responder | None = None
        self._caller: Caller | None = None
        self._caller_lock: asyncio.Lock | None = None
        self._port = _Port(self)  # what its Responder and Caller see of it

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Connect to the forwarder and start receiving. Idempotent.

        Called for you by ``async with``, ``publish`` and ``ready``.
        """
        self._check_open()
        if self._link is not None:
            return
        for endpoint in (*config.split_endpoints(self.pub_endpoint), *config.split_endpoints(self.sub_endpoint)):
            check_endpoint(endpoint, self.keys, self.insecure, "connect to")
        link = BusLink(self._socket_config)
        try:
            if self.keys is not None:
                self._watches = secure_link(link, self.keys)
            link.connect(self.pub_endpoint, self.sub_endpoint)
        except BaseException:
            link.close(0)
            raise
        self._link = link
        for watch in self._watches:
            self._owner.spawn(watch.run(), name="zmqbus-handshakes", fatal=False)
        for prefix in self._table.prefixes:
            link.subscribe(prefix)
        self._reader = self._owner.spawn(self._receiver.run(link), name="zmqbus-reader")
        if self.metrics_port is not None and self._metrics is None:
            from .metrics import serve_metrics

            self._metrics = serve_metrics(self.metrics_port, self, addr=self.metrics_addr)
        if self._services:
            await self._start_responder()
        log.debug("client %s connected to %s / %s", self.client_id, self.pub_endpoint, self.sub_endpoint)

    async def close(self, linger: float | None = None, *, grace: float = 5.0) -> None:
        """Stop receiving and close the sockets. Idempotent; returns within about ``grace + linger`` s.

        A responder first refuses new requests and lets running ones finish
        for up to ``grace`` seconds; their callers are then told it shut down.
        Then this client confirms, with one probe through the forwarder, that
        everything it published has left (waiting at most ``linger`` seconds,
        default: the constructor's). What could not be confirmed (the
        forwarder is unreachable) is counted in ``statistics().unconfirmed``
        and logged as a warning: it may be lost.
        """
        if self._closing is not None:
            # Closed, or closing in another task (a fatal failure closes the broker
            # by itself): wait until that has finished, so no socket outlives close().
            if not self._closing.done():
                await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        try:
            await self._close(self._socket_config.linger if linger is None else linger, grace)
        finally:
            self._closing.set_result(None)

    async def _close(self, linger: float, grace: float) -> None:
        if self._responder is not None:
            await self._responder.close(grace, linger)  # finishes running requests, says goodbye on the bus
            self._responder = None
        self._closed = True
        if self._caller is not None:
            await self._caller.close()
            self._caller = None
        await self._receiver.handlers.cancel()
        if self._link is not None and self._reader is not None and not self._reader.done():
            await self._confirm_published(linger)
        await self._owner.cancel()
        self._reader = None
        if self._link is not None:
            self._link.close(linger)
            self._link = None
        await asyncio.gather(*(watch.close(linger + 1.0) for watch in self._watches))
        self._watches = []
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    async def _confirm_published(self, timeout: float) -> None:
        """Prove with a probe that every published message reached the forwarder, or count the rest."""
        if self._n.published == self._confirmed:
            return
        try:
            await self._probe(timeout)
        except ZmqbusError:
            pass
        unconfirmed = self._n.published - self._confirmed
        if unconfirmed:
            self._n.unconfirmed += unconfirmed
            log.warning(
                "closing with %d published message(s) not confirmed by the forwarder at %s within "
                "%g s: they may be lost",
                unconfirmed,
                self.pub_endpoint,
                timeout,
            )

    def _check_open(self) -> None:
        if not self._closed:
            return
        if self._failure is not None:
            raise ClosedError(
                f"MessageBroker failed: {type(self._failure).__name__}: {self._failure}"
            ) from self._failure
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

    def enable_handler_timing(self) -> None:
        """Time every handler from now on (:attr:`handler_time`; metrics switch it on)."""
        if self._receiver.process_time is None:
            self._receiver.process_time = Histogram()

    @property
    def handler_time(self) -> Histogram | None:
        """Handler durations in seconds, once :meth:`enable_handler_timing` was called."""
        return self._receiver.process_time

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or a fatal failure closed this client)."""
        return self._closed

    @property
    def started(self) -> bool:
        """True while this client is connected: after :meth:`start`, before :meth:`close`."""
        return self._link is not None

    # -- subscriptions -----------------------------------------------------

    def subscribe(self, component_name: str, pattern: str, handler: MessageHandler) -> Subscription:
        """Call ``handler(message)`` for every message whose topic matches ``pattern``.

        A plain call, usable before the broker is started (as the guide does
        from a component's ``__init__``). A broker that a
        :class:`~zmqbus.Component` was given runs every handler subscribed
        here through the component's guard (:attr:`guard`), so the guide's
        ``self.message_broker.subscribe(...)`` is timed, retried and reported
        like ``@on``. Subscribing the same handler to the same pattern again
        returns the first subscription (a message is delivered to it once).
        Raises :class:`TopicError` for an
        invalid pattern. Topics under ``_zmqbus.`` are control traffic and reach
        only patterns that name that first word literally.
        """
        self._check_open()
        compiled = compile_pattern(pattern)  # raises TopicError before anything changes
        if self.guard is not None:
            handler = self.guard(handler)
        same = [s for s in self._table.select(component_name, pattern, handler) if s.handler == handler]
        if same:
            return same[0]  # the same handler on the same pattern twice: delivered once
        if compiled.receives_all:
            log.info(
                "pattern %r starts with a wildcard: this client receives all bus traffic "
                "and filters it in Python (see statistics().unmatched)",
                pattern,
            )
        self._sub_generation += 1
        return self._add_subscription(component_name, pattern, handler)

    def _add_subscription(self, component_name: str, pattern: str, handler: MessageHandler) -> Subscription:
        sub, prefix = self._table.add(component_name, pattern, handler, is_async=is_async_callable(handler))
        if prefix is not None and self._link is not None:
            self._link.subscribe(prefix)
        return sub

    def unsubscribe(
        self, component_name: str | Subscription, pattern: str | None = None, handler: MessageHandler | None = None
    ) -> int:
        """Remove subscriptions; return how many were removed.

        Pass the :class:`Subscription` that ``subscribe`` returned, or a
        component name with an optional pattern and handler to narrow it.
        """
        gone = self._table.select(component_name, pattern, handler)
        for prefix in self._table.remove(gone):
            if self._link is not None:
                self._link.unsubscribe(prefix)
            # Messages on these topics published while unsubscribed are not
            # losses: forget their sequence numbers (and only theirs).
            self._receiver.sequences.forget(prefix.rstrip(b"\x00").decode())
        return len(gone)

    async def ready(self, timeout: float = 10.0) -> None:
        """Return once every subscription made so far is live at the forwarder.

        Sends probe messages on a private topic through the forwarder back to
        this client; ZeroMQ keeps subscriptions in order, so when a probe comes
        back every earlier subscription has reached the forwarder, and the
        forwarder's subscriptions have reached this client's publishing
        socket. The first ``publish`` calls it for you. Raises
        :class:`BusTimeout` if the forwarder cannot be reached in time.
        """
        self._check_open()
        await self.start()
        await self._probe(timeout)

    def _subscriptions_live(self) -> bool:
        """True once :meth:`ready` has proven every subscription made so far."""
        return self._is_ready and self._ready_generation >= self._sub_generation

    async def _probe(self, timeout: float) -> None:
        generation, published = self._sub_generation, self._n.published
        self._probe_count += 1
        topic = f"{RESERVED_PREFIX}probe.{self.client_id.replace('-', '')}.{self._probe_count}"
        arrived = asyncio.Event()
        sub = self._add_subscription(self.name or "zmqbus", topic, lambda m: arrived.set())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = 0.005
        try:
            while not arrived.is_set():
                for watch in self._watches:
                    watch.check()  # a refused key: say so now, not at the timeout
                left = deadline - loop.time()
                if left <= 0:
                    raise BusTimeout(
                        f"ready(): no answer from the forwarder at {self.pub_endpoint} / "
                        f"{self.sub_endpoint} within {timeout:g} s (is it up? does it need "
                        f"CURVE keys, or is it at its connection limit?)"
                    )
                await self._send_probe(topic)
                if not await wait_event(arrived, min(interval, left)):
                    interval = min(interval * 2, 0.25)
            self._is_ready = True
            # Probes travel behind everything published before them, in order.
            self._ready_generation = max(self._ready_generation, generation)
            self._confirmed = max(self._confirmed, published)
        finally:
            self.unsubscribe(sub)

    async def _send_probe(self, topic: str) -> None:
        link = self._link
        if link is None:
            raise ClosedError("MessageBroker is closed")
        msg = ProcessingMessage(_PROBE_TYPE, None, MessageMetadata(source_component=self.name))
        head = self._codec.frame_head(msg, topic)
        # a probe lost at the high-water mark is simply sent again
        link.send(head + self._codec.encode(msg, head, self.client_id, 0, self.name))

    def reload_keys(self) -> tuple[list[str], list[str]]:
        """Read the allow-list folder (and ``$ZMQBUS_POLICY``'s file, if a policy came from it) again.

        Its responder accepts only the new list from now on (live connections
        stay until they reconnect), and its caller trusts responders by it.
        Returns the key names (added, removed); ``zmqbus run`` calls it on SIGHUP.
        """
        keys = self.keys
        if keys is None or keys.allowed_dir is None:
            raise ZmqbusError("this client has no allow-list to reload (it was started without keys)")
        self.keys, self.policy, added, removed = reread_keys(keys, self.policy)
        if self._responder is not None:
            self._responder.allow(dict(self.keys.allowed))
        log.info(
            "client %s reloaded its allow-list: added %s, removed %s",
            self.client_id,
            added or "none",
            removed or "none",
        )
        return added, removed

    # -- request/reply -----------------------------------------------------

    def serve(self, service: str, handler: ServiceHandler) -> None:
        """Answer requests for ``service`` with ``handler(message) -> reply content``.

        A plain call, usable before the broker starts. The first ``serve``
        makes this client a responder: it binds a ROUTER (``rpc_bind``) and
        announces itself on the bus every ``heartbeat`` seconds. A handler
        that raises is answered with an error the caller raises as
        :class:`RemoteError`. Async handlers run on the event loop (they must
        not block it); sync handlers run in a thread.
        """
        self._check_open()
        validate_topic(service)
        self._services[service] = handler
        if self._responder is not None:
            self._responder.add(service, handler)
            self._owner.spawn(self._responder.announce(), name="zmqbus-announce", fatal=False)
        elif self._link is not None:
            # A responder that cannot bind closes the broker; the next call raises why.
            self._owner.spawn(self._start_responder(), name="zmqbus-start-responder")

    async def _start_responder(self) -> None:
        if self._responder is not None:
            return
        responder = Responder(self._port, self._rpc_options)
        for service, handler in self._services.items():
            responder.add(service, handler)
        self._responder = responder
        await responder.start()

    async def request(
        self, service: str, message: ProcessingMessage, *, timeout: float = 10.0, retry: RetryPolicy | None = None
    ) -> ProcessingMessage:
        """Send ``message`` to one instance of ``service`` and return its reply.

        The reply's ``content`` is what the handler returned; its
        ``correlation_id`` is the request's and its ``causation_id`` the
        request's message id. Tries are retried (same message id, another
        instance where one exists) as ``retry`` says, never past ``timeout``.

        Raises :class:`NoResponder` promptly when no instance is alive,
        :class:`RemoteError` when the handler raised, :class:`RequestTimeout`
        when the deadline or the tries ran out. Use a new message for each
        request: the message id is what makes retries safe.
        """
        caller = self._caller or await self._get_caller()
        started = perf_counter()
        outcome = "error"
        span = token = None
        if tracing.tracer is not None and tracing.traced(service):
            span, token = tracing.start_span("request", service, message, self.client_id, remote=False)
            tracing.inject(message)
        error: BaseException | None = None
        try:
            reply = await caller.request(service, message, timeout, retry or _DEFAULT_RETRY)
            outcome = "ok"
            return reply
        except RemoteError as exc:
            outcome = "remote_error"
            error = exc
            raise
        except NoResponder as exc:
            outcome = "no_responder"
            error = exc
            raise
        except RequestTimeout as exc:
            outcome = "timeout"
            error = exc
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.request_time.observe(perf_counter() - started)
            self.request_outcomes[outcome] = self.request_outcomes.get(outcome, 0) + 1
            if span is not None:
                tracing.end_span(span, error)
                tracing.detach(token)

    async def wait_for_service(
        self, service: str, *, instances: int = 1, timeout: float = 10.0, instance_id: str | None = None
    ) -> int:
        """Wait until this client knows ``instances`` live instances of ``service``; return how many it knows.

        A request right after a responder starts can raise :class:`NoResponder`
        (discovery waits half a second); call this first where a responder is
        expected to come up (tests, start-up ordering). ``instance_id`` waits for
        one particular instance (a responder's ``client_id``). Raises
        :class:`NoResponder` after ``timeout`` seconds, saying how many were known.
        """
        caller = self._caller or await self._get_caller()
        return await caller.wait_for(service, instances, timeout, instance_id)

    @property
    def services(self) -> tuple[str, ...]:
        """The services this client serves (``serve``), sorted."""
        return tuple(sorted(self._services))

    def live_instances(self, service: str) -> list[str]:
        """The instance ids of ``service`` this client knows alive now (none before its first request
        or :meth:`wait_for_service`: it learns them from their announcements)."""
        if self._caller is None:
            return []
        return [i.instance_id for i in self._caller.directory.live(service)]

    def handler_for(self, service: str) -> ServiceHandler | None:
        """The handler ``serve`` registered for ``service`` (None if this client does not serve it)."""
        return self._services.get(service)

    async def send(
        self, service: str, message: ProcessingMessage, *, timeout: float = 10.0, retry: RetryPolicy | None = None
    ) -> None:
        """A one-way command: like :meth:`request`, but returns nothing once the work is acknowledged done."""
        await self.request(service, message, timeout=timeout, retry=retry)

    async def _get_caller(self) -> Caller:
        if self._caller is not None:
            return self._caller
        await self.start()
        if self._caller_lock is None:
            self._caller_lock = asyncio.Lock()
        async with self._caller_lock:
            if self._caller is None:
                caller = Caller(self._port)
                await caller.start()
                self._caller = caller
        return self._caller

    # -- publishing --------------------------------------------------------

    async def publish(
        self, message: ProcessingMessage, *, topic: str | None = None, timeout: float | None = None
    ) -> None:
        """Publish ``message`` on ``topic`` (default: its message type's name).

        Raises :class:`TopicError`, :class:`EncodeError` or
        :class:`MessageTooLarge` before anything is sent, and
        :class:`BusTimeout` if the bus cannot be reached, or the high-water
        mark stays reached, for ``timeout`` seconds (default:
        ``publish_timeout``). While the forwarder is down, messages queue in
        this client (up to the high-water mark) and leave when it is back.
        With tracing on (:mod:`zmqbus.bus.tracing`) it is a ``send`` span and
        the message carries the trace context.
        """
        if tracing.tracer is None:
            return await self._publish(message, topic, timeout)
        destination = topic or message.topic or message.type_name
        if not tracing.traced(destination):
            return await self._publish(message, topic, timeout)
        span, token = tracing.start_span("send", destination, message, self.client_id, remote=False)
        try:
            tracing.inject(message)
            await self._publish(message, topic, timeout)
        except BaseException as exc:
            tracing.end_span(span, exc)
            raise
        else:
            tracing.end_span(span)
        finally:
            tracing.detach(token)

    async def _publish(self, message: ProcessingMessage, topic: str | None, timeout: float | None) -> None:
        if timeout is None:
            timeout = self.publish_timeout
        if not self._is_ready:
            # Bad input fails at once, not after waiting for the bus.
            self._codec.encode(message, self._codec.frame_head(message, topic), self.client_id, 0, self.name)
            # A new publishing socket drops everything until the forwarder's
            # subscriptions reach it: wait for that once, instead of losing
            # the first messages silently.
            await self.ready(timeout)
        link = self._link
        if link is None:
            self._check_open()
            raise ClosedError("MessageBroker is not started")
        if topic is None and message.topic is None:
            # The common case: the topic is the message type's name.
            head = self._type_frames.get(message.message_type)
            if head is None:
                head = self._type_frame(message)
        else:
            head = self._codec.frame_head(message, topic)
        seq = self._sequencer.next(head)  # per (publisher, topic): PROTOCOL.md section 4.2
        frame = head + self._codec.encode(message, head, self.client_id, seq, self.name)
        if not link.send(frame):
            await self._publish_slow(link, frame, timeout)
        n = self._n
        n.published += 1
        n.published_bytes += len(frame)

    def _type_frame(self, message: ProcessingMessage) -> bytes:
        head = self._codec.frame_head(message)
        if len(self._type_frames) >= _CACHE_LIMIT:
            self._type_frames.clear()
        self._type_frames[message.message_type] = head
        return head

    async def _publish_slow(self, link: BusLink, frame: bytes, timeout: float) -> None:
        self._n.publish_waits += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise BusTimeout(
                    f"publish: high-water mark reached for {timeout:g} s "
                    f"(is the forwarder at {self.pub_endpoint} up and draining?)"
                )
            await link.pub.wait(2, left)  # zmq.POLLOUT
            if self._closed:
                raise ClosedError("MessageBroker closed while publishing")
            if link.send(frame):
                return

    # -- observability -----------------------------------------------------

    def statistics(self) -> BrokerStatistics:
        """A consistent snapshot of this client's counters."""
        n, r = self._n, self._receiver
        return BrokerStatistics(
            published=n.published,
            published_bytes=n.published_bytes,
            publish_waits=n.publish_waits,
            received=r.received,
            received_bytes=r.received_bytes,
            dispatched=r.dispatched,
            unmatched=r.unmatched,
            handler_errors=r.handler_errors,
            gaps=r.sequences.gaps,
            sequence_resets=r.sequences.resets,
            unconfirmed=n.unconfirmed,
            decode_errors=dict(r.decode_errors),
            subscriptions=len(self._table),
            receives_all=self._table.receives_all,
            rpc=self._rpc_counters(),
            duplicates=r.duplicates,
        )

    def _rpc_counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self._caller is not None:
            core = self._caller.core
            out.update(
                in_flight=len(core.tracker),
                retries=core.retries,
                failovers=core.failovers,
                late_replies=core.tracker.late_replies,
                instances_known=len(self._caller.directory),
            )
        if self._responder is not None:
            out.update({f"served_{k}": v for k, v in self._responder.statistics().items()})
        return out


class _Port:
    """The narrow view of a :class:`MessageBroker` that its Responder and Caller get (:class:`rpc.BusPort`).

    What never changes for the broker's life is a plain attribute (read on
    every request); the rest is read through.
    """

    __slots__ = ("_broker", "client_id", "codec", "socket_config", "owner")

    def __init__(self, broker: MessageBroker) -> None:
        self._broker = broker
        self.client_id = broker.client_id
        self.codec = broker._codec
        self.socket_config = broker._socket_config
        self.owner = broker._owner

    @property
    def name(self) -> str:
        return self._broker.name

    @property
    def is_ready(self) -> bool:
        return self._broker._is_ready

    @property
    def subscriptions_live(self) -> bool:
        return self._broker._subscriptions_live()

    @property
    def keys(self) -> KeyRing | None:
        return self._broker.keys

    @property
    def policy(self) -> Policy | None:
        return self._broker.policy

    def subscribe(self, component_name: str, pattern: str, handler: Callable[[ProcessingMessage], Any]) -> Any:
        return self._broker.subscribe(component_name, pattern, handler)

    async def publish(self, message: ProcessingMessage, *, timeout: float | None = None) -> None:
        await self._broker.publish(message, timeout=timeout)

    async def ready(self, timeout: float) -> None:
        await self._broker.ready(timeout)
