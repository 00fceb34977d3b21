"""The responder: serves named services on one ROUTER socket, peer to peer (PROTOCOL.md section 8).

It binds a ROUTER (in :meth:`Responder.start`, never in its constructor),
serves named services and announces itself on the bus (``_zmqbus.presence``)
every ``heartbeat`` seconds. The IO shell of
:class:`~zmqbus.core.serving.ResponderCore`: it decodes frames, asks the core
what to do, runs handlers and sends what the core decided. It owns no
protocol decision of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from .. import __version__
from ..core.codec import BUSY, ERR, REP, pack, reply_frame, salvage_request_id, split_request
from ..core.config import advertised_endpoint
from ..core.control import DISCOVER_TOPIC, ErrorReply, Presence
from ..core.errors import (
    AuthenticationRefused,
    BusTimeout,
    DecodeError,
    EncodeError,
    RemoteError,
    ZmqbusError,
    is_retryable,
)
from ..core.message import MessageMetadata, ProcessingMessage, current_message
from ..core.ratelog import RateLimitedLog
from ..core.security import check_endpoint
from ..core.serving import Abandon, Cached, Refuse, ResponderCore, Start
from ..core.stats import SERVED_BY_SERVICE, ServiceCalls
from ..core.topics import RESERVED_PREFIX
from ..io.aio import TaskOwner, is_async_callable, start_eagerly, to_thread
from ..io.security import apply_server, zap_handler
from ..io.transport import RouterLink
from . import tracing
from .port import BusPort, RpcOptions, ServiceHandler, caller_key, serve_router
from .presence import Announcer

__all__ = ["Responder", "ResponderStatistics"]

log = logging.getLogger("zmqbus.bus.rpc")


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
        self._tasks: dict[str, asyncio.Task[Any]] = {}  # those watched for their deadline, by request id
        self._abandoning: set[str] = set()  # request ids cancelled at their deadline
        self._timer: asyncio.TimerHandle | None = None  # one timer: the earliest watched deadline
        self._timer_at = 0.0
        self._faults = RateLimitedLog(log)
        self._options = options
        self._router: RouterLink | None = None
        #: Replies held while a batch of requests is read (sent together at its end: :meth:`_flush`).
        self._reading = False
        self._outbox: list[tuple[bytes, bytes]] = []
        self._zap_domain: str | None = None
        #: Where callers reach it (the advertised address), once started.
        self.endpoint = ""
        self._loops: list[asyncio.Task[None]] = []
        self.presence = Announcer(bus, self._presence)
        self._users: dict[bytes, str] = {}  # caller routing id -> its key name (a secure bus)
        #: What the presence announces as this publisher's streams (PROTOCOL.md section 14), if anything.
        self.streams: Callable[[], dict[str, int]] | None = None
        #: Who runs it, announced for operators (PROTOCOL.md section 8.1).
        self.info: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname()[:255],
            "version": __version__,
            "started": round(time.time(), 3),
            "replica": options.replica,
        }
        #: Requests served, per service: durations and outcomes (``ok``, ``failed``, ``abandoned``).
        self.by_service = ServiceCalls(outcomes=SERVED_BY_SERVICE)

    @property
    def services(self) -> set[str]:
        return self.core.services

    def statistics(self) -> dict[str, int]:
        # requests that succeeded: derived from the per-service counts, not counted a second time
        succeeded = sum(outcomes["ok"] for outcomes in self.by_service.outcomes.values())
        return {**vars(self.core.stats), **vars(self.stats), "succeeded": succeeded}

    async def start(self) -> None:
        """Bind the ROUTER (a CURVE server with the bus's allow-list on a secure bus), then serve and announce.

        Raises :class:`TransportError` (address in use, bad endpoint) or
        :class:`InsecureEndpoint` before anything is served.
        """
        options, keys = self._options, self.bus.keys
        router = RouterLink(self.bus.socket_config, with_users=self.bus.policy is not None)
        try:
            if keys is not None:
                # Only the holder of this client's secret can answer its callers, only allowed keys can call.
                self._zap_domain = zap_handler().register(dict(keys.allowed), "rpc")
                apply_server(router.channel.sock, keys, self._zap_domain)
            else:
                check_endpoint(options.bind, None, options.insecure, "bind the responder at")
            self.endpoint = advertised_endpoint(router.bind(options.bind), options.advertise)
        except BaseException:
            router.close(0)
            self._forget_domain()
            raise
        self._router = router
        owner = self.bus.owner
        self.bus.subscribe(self.bus.name or "zmqbus", DISCOVER_TOPIC, self.presence.on_discover)
        # Both fatal: a responder that no longer reads, or no longer announces,
        # must not look alive to callers; the broker closes and says why.
        self._loops = [
            owner.spawn(serve_router(router, self._on_frames, self._flush), name="zmqbus-responder"),
            owner.spawn(self._heartbeat_loop(), name="zmqbus-heartbeat"),
        ]
        log.info("responder %s serving %s at %s", self.instance_id, sorted(self.services), self.endpoint)

    def _presence(self, leaving: bool) -> Presence:
        return Presence(
            instance=self.instance_id,
            endpoint=self.endpoint,
            services=tuple(sorted(self.services)),
            interval=self.heartbeat,
            liveness=self.liveness,
            load=self.core.load,
            leaving=leaving,
            key=None if self.bus.keys is None else self.bus.keys.public.decode(),
            streams=None if self.streams is None or leaving else self.streams(),
            info=None if leaving else {**self.info, "name": self.bus.name},
        )

    def add(self, service: str, handler: ServiceHandler, cancel_at_deadline: bool = True) -> None:
        is_async = is_async_callable(handler)
        self.handlers[service] = (handler, is_async)
        self.core.services.add(service)
        if is_async and cancel_at_deadline:  # a sync handler's thread cannot be cancelled
            self.core.abandon.add(service)
        else:
            self.core.abandon.discard(service)

    # -- presence ----------------------------------------------------------

    async def announce(self, leaving: bool = False, timeout: float | None = None) -> None:
        """Publish this instance's presence now (``leaving``: its goodbye)."""
        await self.presence.announce(leaving, timeout)

    async def _heartbeat_loop(self) -> None:
        # Announce only once this client's subscriptions are live: an instance
        # callers can see is then also one that receives its events. The
        # forwarder may come up long after us: keep trying (a transient fault).
        while True:
            try:
                await self.bus.ready(10.0)
                break
            except (BusTimeout, AuthenticationRefused) as exc:  # both pass: the member tries again by itself
                self._faults.log(
                    logging.WARNING, "ready", "responder %s not announced yet: %s; still trying", self.instance_id, exc
                )
                if isinstance(exc, AuthenticationRefused):
                    await asyncio.sleep(1.0)  # ready() says so at once: no busy loop
        while True:
            await self.presence.announce_quietly()
            # A handler that runs long keeps its caller informed, so the caller
            # does not give up on a slow but alive responder.
            for busy in self.core.busy(self._clock(), self.heartbeat):
                self._send(busy.caller, reply_frame(BUSY, pack([busy.request_id])))
            await asyncio.sleep(self.heartbeat)

    # -- requests ----------------------------------------------------------

    def _on_frames(self, frames: list[bytes], user: str = "") -> None:
        self._reading = True  # replies given now wait for the batch's end (_flush)
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
                request_id=salvage_request_id(body),
            )
            return
        try:
            msg = self.bus.codec.decode(parts[0], parts[1], len(body))  # its topic is the service
        except DecodeError as exc:
            self.stats.malformed += 1
            self._faults.log(logging.WARNING, "decode", "malformed request: %s", exc)
            self._reply_error(
                caller, None, "", "malformed", "DecodeError", str(exc), False, request_id=salvage_request_id(parts[1])
            )
            return
        service: str = msg.topic  # type: ignore[assignment]  # always set on a decoded message
        md = msg.metadata
        policy = self.bus.policy
        if user:
            if len(self._users) >= 10_000:
                self._users.clear()
            self._users[caller] = user  # what the handler may ask (caller_key): a connection's key never changes
        if policy is not None and not service.startswith(RESERVED_PREFIX) and not policy.may_call(user, service):
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
        started = perf_counter()
        token = current_message.set(msg)
        key_token = caller_key.set(self._users.get(caller, ""))
        trace_token = None
        if tracing.tracer is not None and tracing.traced(service):
            span, trace_token = tracing.start_span("serve", service, msg, self.instance_id, remote=True)
            self._spans[msg.metadata.message_id] = span
        try:
            try:
                finished, outcome, eager = start_eagerly(handler(msg) if is_async else to_thread(handler, msg))
            except Exception as exc:  # the handler's fault goes back to the caller
                self._done(caller, service, msg, ERR, exc, started)
                return
            if finished:
                self._done(caller, service, msg, REP, outcome, started)
            else:  # the Task copies the context, so the ids follow it
                rid = msg.metadata.message_id
                task = self._work.spawn(
                    self._finish(caller, service, msg, outcome, started), name="zmqbus-request", fatal=False
                )
                eager.bind(task)  # what the handler's first step took for its task (a timeout) is this one
                deadline = self.core.watch(rid)
                if deadline is not None:  # only a watched request may need its task cancelled
                    self._tasks[rid] = task
                    self._arm(deadline)
        finally:
            current_message.reset(token)
            caller_key.reset(key_token)
            if trace_token is not None:
                tracing.detach(trace_token)

    async def _finish(
        self, caller: bytes, service: str, msg: ProcessingMessage, running: Awaitable[Any], started: float
    ) -> None:
        rid = msg.metadata.message_id
        try:
            result = await running
        except asyncio.CancelledError:
            if rid not in self._abandoning:
                raise  # close() cancelled it: close answers the caller
            self._abandoning.discard(rid)
            self._faults.log(
                logging.WARNING,
                f"abandoned:{service}",
                "service %s: a request's deadline passed while it ran; its caller had given up, the work was abandoned",
                service,
            )
            self._done(caller, service, msg, ERR, None, started)
        except Exception as exc:
            self._done(caller, service, msg, ERR, exc, started)
        else:
            self._done(caller, service, msg, REP, result, started)
        finally:
            self._tasks.pop(rid, None)

    # -- deadlines: one timer for the earliest deadline of the requests still running ----------------

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # the timer fires first, and re-arms for the next
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_later(max(0.0, deadline - self._clock()), self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        for abandon in self.core.overdue(self._clock()):
            self._abandon(abandon)
        deadline = self.core.next_deadline()
        if deadline is not None:
            self._arm(deadline)

    def _abandon(self, abandon: Abandon) -> None:
        task = self._tasks.get(abandon.request_id)
        if task is not None and not task.done():
            self._abandoning.add(abandon.request_id)
            task.cancel()

    def _done(
        self, caller: bytes, service: str, msg: ProcessingMessage, kind: bytes, result: Any, started: float
    ) -> None:
        outcome = "ok" if kind == REP else "failed" if result is not None else "abandoned"
        self.by_service.observe(service, outcome, perf_counter() - started)
        if self._spans:
            span = self._spans.pop(msg.metadata.message_id, None)
            if span is not None:
                tracing.end_span(span, result if kind == ERR else None)
        if kind == ERR and result is None:  # abandoned at its deadline
            payload = self._encode(msg, service, f"{service}.error", self.core.abandoned_error().to_content())
        elif kind == ERR:
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
        cacheable = None if kind == ERR and result is not None and is_retryable(result) else frame
        for action in self.core.done(msg.metadata.message_id, cacheable, self._clock()):
            self._act(action)

    def _send(self, caller: bytes, frame: bytes, recheck: bool = True) -> None:
        """Send a reply: while a batch of requests is being read, after the batch (:meth:`_flush`), all at
        once; otherwise now. ``recheck=False``: the reader reads EVENTS right after (the batch's end)."""
        if self._reading:
            self._outbox.append((caller, frame))
            return
        router = self._router
        if router is None or not router.send(caller, frame, recheck):
            self.stats.undeliverable += 1

    def _flush(self) -> None:
        """The end of a batch of requests: send the replies their handlers gave meanwhile, back to back
        (the reader reads EVENTS right after: no re-check per send)."""
        self._reading = False
        outbox, self._outbox = self._outbox, []
        for caller, frame in outbox:
            self._send(caller, frame, recheck=False)

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
        self.presence.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
        if self._router is not None:
            self._router.close()
            self._router = None
        self._forget_domain()

    def allow(self, allowed: dict[bytes, str]) -> None:
        """A new allow-list for callers (new handshakes see it; live connections stay)."""
        if self._zap_domain is not None:
            zap_handler().update(self._zap_domain, allowed)

    def _forget_domain(self) -> None:
        if self._zap_domain is not None:
            zap_handler().unregister(self._zap_domain)
            self._zap_domain = None
