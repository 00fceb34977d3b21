"""Request/reply, peer to peer over ROUTER sockets: the IO shell around core.serving and core.reqrep.

A :class:`Responder` binds a ROUTER, serves named services and announces
itself on the bus (``_zmqbus.presence``) every ``heartbeat`` seconds. A
:class:`Caller` keeps a directory of live instances from those announcements
and sends each request straight to the least-loaded instance; no request ever
goes through the forwarder. One frame after ZeroMQ's routing id, a kind and
its fields separated by NUL bytes (docs/PROTOCOL.md section 8.2)::

    caller -> responder   b"REQ\0" service b"\0" payload
    responder -> caller   b"REP\0" payload | b"ERR\0" payload | b"BUSY\0" msgpack([request_id])

The payload is the pub/sub payload of docs/PROTOCOL.md. A reply's
``causation_id`` is the request's ``message_id``: that is how replies are
matched, and why a retry (same message id) can be answered from the
responder's reply cache instead of being executed again.

Both classes belong to one client and see it only through :class:`BusPort`
(publish, subscribe, readiness, codec, socket settings, task owner): they
never import the broker nor reach into it. Presence, discovery and error
contents are the typed objects of :mod:`zmqbus.core.control`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..core.calling import CallerCore, Connect, Disconnect, Wake
from ..core.codec import BUSY, ERR, REP, Codec, pack, reply_frame, request_head, split_reply, split_request, unpack
from ..core.control import DISCOVER_TOPIC, PRESENCE_TOPIC, ErrorReply, Presence, discover_content, discovered_service
from ..core.errors import (
    BusTimeout,
    ClosedError,
    DecodeError,
    EncodeError,
    NoResponder,
    RemoteError,
    RequestTimeout,
    ZmqbusError,
    is_retryable,
)
from ..core.message import MessageMetadata, ProcessingMessage, current_message
from ..core.policy import Policy
from ..core.ratelog import RateLimitedLog
from ..core.reqrep import Call, CallTracker, Directory, GiveUp
from ..core.retry import RetryPolicy
from ..core.security import KeyRing, check_endpoint
from ..core.serving import Cached, Refuse, ResponderCore, Start
from ..io.aio import TaskOwner, is_async_callable, start_eagerly, to_thread, wait_event
from ..io.security import apply_client, apply_server, zap_handler
from ..io.transport import RouterLink, SocketConfig
from . import tracing

__all__ = ["Responder", "Caller", "BusPort", "RpcOptions", "ServiceHandler", "PRESENCE_TOPIC", "DISCOVER_TOPIC"]

log = logging.getLogger(__name__)

ServiceHandler = Callable[[ProcessingMessage], Awaitable[Any] | Any]


class BusPort(Protocol):
    """All that a :class:`Responder` or :class:`Caller` may use of its client.

    ``name`` is the client's component name ("" if none), ``client_id`` its
    unique id, ``owner`` the owner of its background tasks; ``ready`` proves
    the client's subscriptions live (:class:`BusTimeout` otherwise), and
    ``subscriptions_live`` says whether every subscription made so far has
    been proven so (then a request need not wait for ``ready``).
    """

    @property
    def name(self) -> str: ...
    @property
    def client_id(self) -> str: ...
    @property
    def codec(self) -> Codec: ...
    @property
    def socket_config(self) -> SocketConfig: ...
    @property
    def owner(self) -> TaskOwner: ...
    @property
    def is_ready(self) -> bool: ...
    @property
    def subscriptions_live(self) -> bool: ...
    @property
    def keys(self) -> KeyRing | None: ...
    @property
    def policy(self) -> Policy | None: ...

    def subscribe(self, component_name: str, pattern: str, handler: Callable[[ProcessingMessage], Any]) -> Any: ...

    async def publish(self, message: ProcessingMessage, *, timeout: float | None = None) -> None: ...

    async def ready(self, timeout: float) -> None: ...


@dataclass(frozen=True)
class RpcOptions:
    """How a broker's responder binds, announces itself and executes (see MessageBroker)."""

    bind: str = "tcp://127.0.0.1:*"
    advertise: str | None = None
    heartbeat: float = 1.0
    liveness: int = 3
    cache_size: int = 10_000
    max_concurrency: int = 100
    insecure: bool = False
    max_queue: int = 1000
    max_queued_bytes: int = 64 * 1024 * 1024


@dataclass
class ResponderStatistics:
    """What only the shell sees; the protocol's own counters are the core's (:class:`ServingStatistics`)."""

    failed: int = 0
    malformed: int = 0
    undeliverable: int = 0
    forbidden: int = 0


class Responder:
    """Serves requests for one client: one ROUTER socket, any number of services.

    The IO shell of :class:`~zmqbus.core.serving.ResponderCore`: it decodes
    frames, asks the core what to do, runs handlers and sends what the core
    decided. It owns no protocol decision of its own.
    """

    def __init__(self, bus: BusPort, options: RpcOptions, clock: Callable[[], float] = time.time) -> None:
        self.bus = bus
        self.heartbeat = options.heartbeat
        self.liveness = options.liveness
        self.instance_id = bus.client_id
        self._spans: dict[str, Any] = {}  # request message id -> its serve span (tracing on)
        self.handlers: dict[str, tuple[ServiceHandler, bool]] = {}
        self.core: ResponderCore[ProcessingMessage] = ResponderCore(
            self.instance_id,
            max_concurrency=options.max_concurrency,
            cache_size=options.cache_size,
            max_queue=options.max_queue,
            max_queued_bytes=options.max_queued_bytes,
        )
        self.stats = ResponderStatistics()
        self._clock = clock
        self._work = TaskOwner()  # requests whose handler went on as a task
        self._faults = RateLimitedLog(log)
        self._router = RouterLink(bus.socket_config, with_users=bus.policy is not None)
        self._zap_domain: str | None = None
        try:
            keys = bus.keys
            if keys is not None:
                # A CURVE server with the bus's allow-list: only the holder of this
                # client's secret can answer its callers, only allowed keys can call.
                self._zap_domain = zap_handler().register(dict(keys.allowed), "rpc")
                apply_server(self._router.channel.sock, keys, self._zap_domain)
            else:
                check_endpoint(options.bind, None, options.insecure, "bind the responder at")
            bound = self._router.bind(options.bind)
            self.endpoint = _advertised(bound, options.advertise)
        except BaseException:
            self._router.close(0)
            self._forget_domain()
            raise
        self._loops: list[asyncio.Task[None]] = []
        self._last_announce = 0.0
        self._announce_pending = False

    @property
    def services(self) -> set[str]:
        return self.core.services

    def statistics(self) -> dict[str, int]:
        return {**vars(self.core.stats), **vars(self.stats)}

    async def start(self) -> None:
        owner = self.bus.owner
        self.bus.subscribe(self.bus.name or "zmqbus", DISCOVER_TOPIC, self._on_discover)
        # Both fatal: a responder that no longer reads, or no longer announces,
        # must not look alive to callers; the broker closes and says why.
        self._loops = [
            owner.spawn(_serve_router(self._router, self._on_frames), name="zmqbus-responder"),
            owner.spawn(self._heartbeat_loop(), name="zmqbus-heartbeat"),
        ]
        log.info("responder %s serving %s at %s", self.instance_id, sorted(self.services), self.endpoint)

    def add(self, service: str, handler: ServiceHandler) -> None:
        self.handlers[service] = (handler, is_async_callable(handler))
        self.core.services.add(service)

    # -- presence ----------------------------------------------------------

    async def announce(self, leaving: bool = False, timeout: float | None = None) -> None:
        self._last_announce = time.monotonic()
        presence = Presence(
            instance=self.instance_id,
            endpoint=self.endpoint,
            services=tuple(sorted(self.services)),
            interval=self.heartbeat,
            liveness=self.liveness,
            load=self.core.load,
            leaving=leaving,
            key=None if self.bus.keys is None else self.bus.keys.public.decode(),
        )
        await self.bus.publish(
            ProcessingMessage(
                PRESENCE_TOPIC, presence.to_content(), MessageMetadata(source_component=self.bus.name or "zmqbus")
            ),
            timeout=timeout,
        )

    async def _on_discover(self, msg: ProcessingMessage) -> None:
        wanted = discovered_service(msg.content)
        if wanted is not None and wanted not in self.services:
            return
        # Never ignore a query (the asker may have subscribed after our last
        # announcement), but coalesce a burst of them into one announcement.
        if self._announce_pending:
            return
        wait = 0.02 - (time.monotonic() - self._last_announce)
        if wait <= 0:
            await self.announce()
            return
        self._announce_pending = True
        asyncio.get_running_loop().call_later(wait, self._announce_soon)

    def _announce_soon(self) -> None:
        self._announce_pending = False
        self._track(self._announce_quietly())

    async def _announce_quietly(self) -> None:
        try:
            await self.announce()
        except ZmqbusError as exc:
            self._faults.log(logging.WARNING, "announce", "presence announcement failed: %s", exc)

    async def _heartbeat_loop(self) -> None:
        # Announce only once this client's subscriptions are live: an instance
        # callers can see is then also one that receives its events. The
        # forwarder may come up long after us: keep trying (a transient fault).
        while True:
            try:
                await self.bus.ready(10.0)
                break
            except BusTimeout as exc:
                self._faults.log(
                    logging.WARNING, "ready", "responder %s not announced yet: %s; still trying", self.instance_id, exc
                )
        while True:
            try:
                await self.announce()
            except ZmqbusError as exc:
                self._faults.log(logging.WARNING, "announce", "presence announcement failed: %s", exc)
            # A handler that runs long keeps its caller informed, so the caller
            # does not give up on a slow but alive responder.
            for busy in self.core.busy(self._clock(), self.heartbeat):
                self._router.send(busy.caller, reply_frame(BUSY, pack([busy.request_id])))
            await asyncio.sleep(self.heartbeat)

    # -- requests ----------------------------------------------------------

    def _on_frames(self, frames: list[bytes], user: str = "") -> None:
        caller = frames[0]
        body = frames[1] if len(frames) == 2 else b""
        parts = split_request(body)
        if parts is None:
            self.stats.malformed += 1
            self._faults.log(
                logging.WARNING, "frames", "malformed request (%d frames, starting %r)", len(frames), bytes(body[:8])
            )
            self._reply_error(
                caller,
                None,
                "",
                "malformed",
                "ProtocolError",
                "expected one frame: REQ, NUL, service, NUL, payload",
                False,
                request_id=_salvage(body),
            )
            return
        try:
            msg = self.bus.codec.decode(parts[0], parts[1], len(body))  # its topic is the service
        except DecodeError as exc:
            self.stats.malformed += 1
            self._faults.log(logging.WARNING, "decode", "malformed request: %s", exc)
            self._reply_error(
                caller, None, "", "malformed", "DecodeError", str(exc), False, request_id=_salvage(parts[1])
            )
            return
        service: str = msg.topic  # type: ignore[assignment]  # always set on a decoded message
        md = msg.metadata
        policy = self.bus.policy
        if policy is not None and not policy.may_call(user, service):
            self.stats.forbidden += 1
            self._faults.log(logging.WARNING, f"forbidden:{user}", "key %r may not call %r: refused", user, service)
            self._reply_error(
                caller, msg, service, "forbidden", "Forbidden", f"key {user!r} may not call {service!r}", False
            )
            return
        action = self.core.request(caller, service, md.message_id, md.deadline, msg, self._clock(), len(body))
        if action is not None:
            self._act(action)

    def _act(self, action: Start[ProcessingMessage] | Refuse[ProcessingMessage] | Cached) -> None:
        """Carry out one decision of the core."""
        if isinstance(action, Start):
            self._start(action.caller, action.service, action.request)
        elif isinstance(action, Cached):  # a retry: answered from the cache, never executed twice
            self._send(action.caller, action.frame)
        else:
            e = action.error
            self._reply_error(action.caller, action.request, action.service, e.code, e.type, e.message, e.retryable)

    def _start(self, caller: bytes, service: str, msg: ProcessingMessage) -> None:
        handler, is_async = self.handlers[service]
        # Started eagerly, with the request as the current message so whatever
        # the handler publishes or requests inherits its ids. A handler that
        # completes without suspending is answered at once, with no Task; a
        # sync one goes to a daemon worker thread (the context carried), so
        # the loop keeps heartbeating.
        token = current_message.set(msg)
        trace_token = None
        if tracing.tracer is not None and tracing.traced(service):
            span, trace_token = tracing.start_span("serve", service, msg, self.instance_id, remote=True)
            self._spans[msg.metadata.message_id] = span
        try:
            try:
                finished, outcome = start_eagerly(handler(msg) if is_async else to_thread(handler, msg))
            except Exception as exc:  # the handler's fault goes back to the caller
                self._done(caller, service, msg, ERR, exc)
                return
            if finished:
                self._done(caller, service, msg, REP, outcome)
            else:  # the Task copies the context, so the ids follow it
                self._track(self._finish(caller, service, msg, outcome))
        finally:
            current_message.reset(token)
            if trace_token is not None:
                tracing.detach(trace_token)

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        self._work.spawn(coro, name="zmqbus-request", fatal=False)

    async def _finish(self, caller: bytes, service: str, msg: ProcessingMessage, running: Awaitable[Any]) -> None:
        try:
            result = await running
        except asyncio.CancelledError:
            raise  # only close() cancels: it answers the caller
        except Exception as exc:
            self._done(caller, service, msg, ERR, exc)
        else:
            self._done(caller, service, msg, REP, result)

    def _done(self, caller: bytes, service: str, msg: ProcessingMessage, kind: bytes, result: Any) -> None:
        if self._spans:
            span = self._spans.pop(msg.metadata.message_id, None)
            if span is not None:
                tracing.end_span(span, result if kind == ERR else None)
        if kind == ERR:
            self.stats.failed += 1
            self._faults.log(
                logging.WARNING,
                f"handler:{service}",
                "service %s raised %s: %s",
                service,
                type(result).__name__,
                result,
            )
            # A RemoteError from a request the handler made keeps its root type (the message keeps the path).
            root = result.error_type if isinstance(result, RemoteError) else type(result).__name__
            payload = self._encode(
                msg,
                service,
                f"{service}.error",
                ErrorReply(
                    code="handler_error",
                    type=root,
                    message=str(result),
                    retryable=is_retryable(result),
                    reported=getattr(result, "zmqbus_reported", False) is True,
                ).to_content(),
            )
        else:
            payload = self._encode(msg, service, f"{service}.reply", result)
        frame = reply_frame(kind, payload)
        self._send(caller, frame)
        # A retryable failure is not cached: a retry of it runs again.
        cacheable = None if kind == ERR and is_retryable(result) else frame
        for action in self.core.done(msg.metadata.message_id, cacheable, self._clock()):
            self._act(action)

    def _send(self, caller: bytes, frame: bytes) -> None:
        if not self._router.send(caller, frame):
            self.stats.undeliverable += 1

    def _encode(self, request: ProcessingMessage, service: str, mtype: str, content: Any) -> bytes:
        codec = self.bus.codec
        source = self.bus.name or service
        try:
            return codec.encode_reply(request.metadata, mtype, content, source, self.instance_id)
        except EncodeError as exc:
            return codec.encode_reply(
                request.metadata,
                f"{service}.error",
                ErrorReply(
                    code="handler_error",
                    type="EncodeError",
                    message=f"the reply could not be encoded: {exc}",
                    retryable=False,
                ).to_content(),
                source,
                self.instance_id,
            )

    def _reply_error(
        self,
        caller: bytes,
        msg: ProcessingMessage | None,
        service: str,
        code: str,
        error_type: str,
        text: str,
        retryable: bool,
        *,
        request_id: str = "",
    ) -> None:
        request = msg or ProcessingMessage(
            "_zmqbus.malformed", None, MessageMetadata(message_id=request_id, correlation_id=request_id)
        )
        payload = self._encode(
            request,
            service or "_zmqbus",
            f"{service or '_zmqbus'}.error",
            ErrorReply(code=code, type=error_type, message=text, retryable=retryable).to_content(),
        )
        self._send(caller, reply_frame(ERR, payload))

    async def close(self, grace: float = 5.0, linger: float = 1.0) -> None:
        """Shut down within about ``grace + linger`` seconds.

        New requests are refused with a retryable ``shutting_down`` error
        (callers retry elsewhere), and so are queued ones that never started.
        Running ones get ``grace`` seconds to finish; the callers of those
        still running then get a ``shutting_down`` error that is not
        retryable (the work may have been partly done). The goodbye
        announcement waits at most ``linger`` and is skipped if this client
        never reached the forwarder (nobody knows it).
        """
        for action in self.core.close():  # queued, never started: callers retry elsewhere at once
            self._act(action)
        await self._work.drain(grace)
        await self._work.cancel()
        for action in self.core.interrupt():  # cancelled, or a sync handler's thread still running
            self._act(action)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self.bus.is_ready:
            try:
                await self.announce(leaving=True, timeout=linger)
            except ZmqbusError:
                pass
        self._router.close()
        self._forget_domain()

    def allow(self, allowed: dict[bytes, str]) -> None:
        """A new allow-list for callers (new handshakes see it; live connections stay)."""
        if self._zap_domain is not None:
            zap_handler().update(self._zap_domain, allowed)

    def _forget_domain(self) -> None:
        if self._zap_domain is not None:
            zap_handler().unregister(self._zap_domain)
            self._zap_domain = None


class Caller:
    """Sends requests for one client: the IO shell of :class:`~zmqbus.core.calling.CallerCore`.

    It parses presence and replies, hands them to the core, and carries out
    the core's actions: connect, disconnect, wake a waiting request. One
    timer, set for the core's next deadline, replaces polling.
    """

    def __init__(self, bus: BusPort, discover_timeout: float = 0.5) -> None:
        self.bus = bus
        self.discover_timeout = discover_timeout
        self.core = CallerCore(random.random)
        self._router = RouterLink(bus.socket_config, bus.client_id.encode(), mandatory=True)
        if bus.keys is not None:
            apply_client(self._router.channel.sock, bus.keys, None)  # each responder's key at its connect
        self.presence_refused = 0
        self._announced = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._faults = RateLimitedLog(log)
        self._closed = False

    @property
    def directory(self) -> Directory:
        return self.core.directory

    @property
    def tracker(self) -> CallTracker:
        return self.core.tracker

    async def start(self) -> None:
        """Subscribe to presence and start reading replies (each request waits for the bus itself)."""
        self.bus.subscribe(self.bus.name or "zmqbus", PRESENCE_TOPIC, self._on_presence)
        self._loops = [self.bus.owner.spawn(_serve_router(self._router, self._on_frames), name="zmqbus-caller")]

    # -- the core's actions and its timer -------------------------------------

    def _act(self, actions: Sequence[Connect | Disconnect | Wake]) -> None:
        for action in actions:
            if isinstance(action, Wake):
                _wake(action.call, ("retry", action.reason))
            elif isinstance(action, Connect):
                self._router.connect(
                    action.endpoint,
                    action.routing_id,
                    None if action.server_key is None else action.server_key.encode(),
                )
                self._announced.set()
            else:
                self._router.disconnect(action.endpoint)

    def _schedule(self, when: float | None) -> None:
        """Make sure the timer fires by ``when`` (the core's clock is the loop's)."""
        if when is None or self._closed:
            return
        if self._timer is None or when < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        actions = self.core.tick(asyncio.get_running_loop().time())
        for action in actions:
            if isinstance(action, Disconnect):
                log.info("the instance at %s stopped announcing; failing over its calls", action.endpoint)
        self._act(actions)
        self._schedule(self.core.next_deadline())

    # -- directory ---------------------------------------------------------

    def _on_presence(self, msg: ProcessingMessage) -> None:
        try:
            p = Presence.from_content(msg.content)
        except DecodeError as exc:
            self._faults.log(
                logging.WARNING, "presence", "ignored a malformed presence message (%s): %r", exc, msg.content
            )
            return
        refusal = _presence_refusal(p, self.bus.keys, self.bus.policy)
        if refusal is not None:
            self.presence_refused += 1
            self._faults.log(
                logging.WARNING,
                "presence-key",
                "ignored the presence of instance %s at %s: %s",
                p.instance,
                p.endpoint,
                refusal,
            )
            return
        self._act(self.core.presence(p, asyncio.get_running_loop().time()))
        self._schedule(self.core.next_deadline())

    async def _wait_for_instance(self, service: str, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        until = min(deadline, loop.time() + self.discover_timeout)
        await self.bus.publish(ProcessingMessage(DISCOVER_TOPIC, discover_content(service)))
        log.debug("discovering %s (known instances: %d)", service, len(self.directory))
        while not self.directory.live(service):
            if self._closed:
                raise ClosedError(f"request to {service!r}: the broker was closed")
            left = until - loop.time()
            if left <= 0:
                raise NoResponder(service)
            self._announced.clear()
            await wait_event(self._announced, left)

    async def wait_for(self, service: str, instances: int, timeout: float, instance_id: str | None) -> int:
        """Wait until ``instances`` live instances of ``service`` (or the instance ``instance_id``) are known."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_ask = loop.time()

        def count() -> int:
            live = self.directory.live(service)
            if instance_id is not None:
                return int(any(i.instance_id == instance_id for i in live))
            return len(live)

        wanted = 1 if instance_id is not None else instances
        while count() < wanted:
            if self._closed:
                raise ClosedError(f"waiting for {service!r}: the broker was closed")
            now = loop.time()
            if now >= deadline:
                if instance_id is not None:
                    detail = f"instance {instance_id} did not announce itself within {timeout:.1f} s"
                else:
                    detail = (
                        f"{count()} of the {instances} instance(s) waited for announced themselves within "
                        f"{timeout:.1f} s"
                    )
                raise NoResponder(service, detail)
            if now >= next_ask:  # ask again now and then: a responder that starts later announces by itself too
                next_ask = now + 0.5
                await self.bus.publish(ProcessingMessage(DISCOVER_TOPIC, discover_content(service)))
            self._announced.clear()
            await wait_event(self._announced, min(0.05, deadline - now))
        return len(self.directory.live(service))

    # -- replies -----------------------------------------------------------

    def _on_frames(self, frames: list[bytes], user: str = "") -> None:
        body = frames[1] if len(frames) == 2 else b""
        parts = split_reply(body)
        if parts is None:
            self._faults.log(
                logging.WARNING, "frames", "malformed reply (%d frames, starting %r)", len(frames), bytes(body[:8])
            )
            return
        kind, payload = parts
        try:
            if kind == BUSY:
                (request_id,) = unpack(payload)
                self.core.busy(str(request_id), asyncio.get_running_loop().time())
                return
            msg = self.bus.codec.decode(b"_zmqbus.reply", payload)
        except (DecodeError, ValueError, TypeError) as exc:
            self._faults.log(logging.WARNING, "decode", "malformed reply: %s", exc)
            return
        error = ErrorReply.from_content(msg.content) if kind == ERR else None
        action = self.core.reply(msg.metadata.causation_id or "", error)
        if isinstance(action, Wake):
            _wake(action.call, ("retry", action.reason))
        elif action is not None:
            _wake(action.call, ("reply", kind, msg))

    # -- requests ----------------------------------------------------------

    async def request(
        self, service: str, message: ProcessingMessage, timeout: float, policy: RetryPolicy
    ) -> ProcessingMessage:
        loop = asyncio.get_running_loop()
        md = message.metadata
        if md.deadline is None:
            md.deadline = time.time() + timeout
        head = request_head(service)  # validated: a service name is a topic
        core = self.core
        call = core.begin(md.message_id, service, loop.time(), timeout, policy)
        reason = "no reply"
        try:
            if not self.bus.subscriptions_live:  # the presence subscription (once; a property read after)
                try:
                    await self.bus.ready(max(0.0, call.deadline - loop.time()))
                except BusTimeout as exc:
                    raise RequestTimeout(service, 0, loop.time() - call.started, str(exc)) from None
            while True:
                if call.settled is not None:  # a reply to an earlier try came while none waited: it ends the call
                    outcome = call.settled
                else:
                    inst = core.assign(call, loop.time())
                    if inst is None:
                        try:
                            await self._wait_for_instance(service, call.deadline)
                        except NoResponder:
                            if call.settled is None:
                                raise
                        continue
                    md.attempt = call.attempt
                    frame = head + self.bus.codec.encode(message, head, self.bus.client_id, 0, self.bus.name)
                    fut: asyncio.Future[tuple[Any, ...]] = loop.create_future()
                    call.waiter = fut  # resolved by a reply, the timer (timeout) or a lost instance
                    self._schedule(call.attempt_deadline)
                    if self._router.send(inst.peer, frame):
                        outcome = await fut
                    else:
                        outcome = await self._send_slowly(call, inst.peer, frame)
                    call.waiter = None
                    outcome = call.settled or outcome  # a reply that came after a retry was decided wins
                if outcome[0] == "reply":
                    return self._result(service, outcome[1], outcome[2])
                if outcome[0] == "closed" or self._closed:
                    raise ClosedError(f"request to {service!r}: the broker was closed")
                reason = outcome[1]
                step = core.after_failure(call, loop.time())
                if isinstance(step, GiveUp):
                    raise RequestTimeout(
                        service, call.attempt, loop.time() - call.started, f"{step.reason}; last try: {reason}"
                    )
                await asyncio.sleep(step.delay)
        finally:
            core.finish(call)

    async def _send_slowly(self, call: Call, peer: bytes, frame: bytes) -> tuple[Any, ...]:
        """The instance is unreachable: right after discovery that means "still connecting"."""
        loop = asyncio.get_running_loop()
        fut = call.waiter
        pause = 0.001
        while True:
            if fut.done():
                return fut.result()  # type: ignore[no-any-return]
            if loop.time() + pause >= call.attempt_deadline:
                return ("retry", "instance unreachable")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
            if self._router.send(peer, frame):
                return await fut  # type: ignore[no-any-return]

    def _result(self, service: str, kind: bytes, msg: ProcessingMessage) -> ProcessingMessage:
        if kind == ERR:
            raise ErrorReply.from_content(msg.content).to_exception(msg.metadata.correlation_id, service)
        return msg

    async def close(self) -> None:
        self._closed = True
        for call in self.tracker.calls():
            _wake(call, ("closed", "the broker was closed"))  # no request waits forever
        self._announced.set()  # nor one still looking for an instance
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._router.close(0)


async def _serve_router(router: RouterLink, on_frames: Callable[[list[bytes], str], None]) -> None:
    """Hand every message arriving on ``router`` to ``on_frames`` (with its key name when the router
    records them), draining in batches."""
    while True:
        batch = router.recv_batch(256)
        users = router.users
        if users:
            for frames, user in zip(batch, users, strict=True):
                on_frames(frames, user)
        else:
            for frames in batch:
                on_frames(frames, "")
        if len(batch) == 256:
            await asyncio.sleep(0)  # let the rest of the loop run
        else:
            # A short batch ended in Again: the socket is drained, so wait at
            # once (wait() reads EVENTS first) instead of paying for another
            # Again (about 4 us: pyzmq builds an exception).
            await router.channel.wait(1, 1.0)  # zmq.POLLIN; bounded in case an FD edge was lost


def _presence_refusal(p: Presence, keys: KeyRing | None, policy: Policy | None = None) -> str | None:
    """Why a caller must not use this instance (None: it may): on a secure bus only allowed keys
    may answer, and a plaintext caller cannot reach a CURVE server."""
    if keys is None:
        return None if p.key is None else "it is a CURVE server and this client has no keys"
    if p.key is None:
        return "it announced no CURVE key on a secure bus"
    name = keys.allowed.get(p.key.encode())
    if name is None:
        return "its key is not in the allow-list"
    if policy is not None:
        denied = [s for s in p.services if not policy.may_serve(name, s)]
        if denied:
            return f"key {name!r} may not serve {denied}"
    return None


def _wake(call: Call, outcome: tuple[Any, ...]) -> None:
    """Hand ``outcome`` to the try that waits. A reply (or the close) is also kept on the call: one that
    comes while no try waits (between two tries), or just after a timeout already woke the try, must
    still end the call, because the core has removed the call on it and no timer would ever wake a
    later try (requests hung past their timeout that way)."""
    if outcome[0] != "retry" and call.settled is None:
        call.settled = outcome
    fut = call.waiter
    if fut is not None and not fut.done():
        fut.set_result(outcome)


def _salvage(data: bytes) -> str:
    """The message id of a malformed request, if its payload still shows one (else "").

    Lets a malformed ``ERR`` carry the request's id as its ``causation_id``
    (PROTOCOL.md section 8.2), so a DEALER caller can tell which request it answers.
    """
    data = bytes(data)
    if data.startswith(b"REQ\0"):
        data = data.split(b"\0", 2)[-1]
    try:
        fields = unpack(data)
    except DecodeError:
        return ""
    if isinstance(fields, list) and len(fields) > 2 and isinstance(fields[2], str) and len(fields[2]) <= 255:
        return fields[2]
    return ""


def _advertised(bound: str, advertise: str | None) -> str:
    """The address callers should use: ``advertise`` (a host or a whole endpoint) or the bound one."""
    if not advertise:
        if bound.startswith("tcp://0.0.0.0:") or bound.startswith("tcp://[::]:"):
            raise ValueError(f"bound to a wildcard address ({bound}): pass advertise= with a reachable host")
        return bound
    if "://" in advertise:
        return advertise
    port = bound.rsplit(":", 1)[1]
    return f"tcp://{advertise}:{port}"
