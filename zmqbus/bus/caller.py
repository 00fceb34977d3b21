"""The caller: sends requests straight to the least-loaded live instance of a service (PROTOCOL.md section 8).

It keeps a directory of live instances from their announcements, and is the
IO shell of :class:`~zmqbus.core.calling.CallerCore`: it parses presence and
replies, hands them to the core, and carries out the core's actions (connect,
disconnect, wake a waiting request). One timer, set for the core's next
deadline, replaces polling. No request ever goes through the forwarder.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..core.calling import CallerCore, Connect, Disconnect, Wake
from ..core.codec import BUSY, ERR, request_head, split_reply, unpack
from ..core.control import DISCOVER_TOPIC, PRESENCE_TOPIC, ErrorReply, Presence, discover_content
from ..core.errors import BusTimeout, ClosedError, DecodeError, NoResponder, RequestTimeout
from ..core.message import ProcessingMessage
from ..core.policy import Policy
from ..core.ratelog import RateLimitedLog
from ..core.reqrep import Call, CallTracker, Directory, GiveUp
from ..core.retry import RetryPolicy
from ..core.security import KeyRing
from ..io.aio import wait_event
from ..io.security import apply_client
from ..io.transport import RouterLink
from .port import BusPort, serve_router

__all__ = ["Caller"]

log = logging.getLogger("zmqbus.bus.rpc")


@dataclass(frozen=True, slots=True)
class Replied:
    """The try got its reply (``kind`` REP or ERR): the call ends with it."""

    kind: bytes
    message: ProcessingMessage


@dataclass(frozen=True, slots=True)
class TryFailed:
    """The try failed (``reason``): the call retries or gives up, as the core says."""

    reason: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The broker closed: the call ends with :class:`ClosedError`."""

    reason: str


Outcome = Replied | TryFailed | Closed


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
        self._router: RouterLink  # made by start(): no socket before it
        self.presence_refused = 0
        self._announced = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        #: Requests queued in this event-loop turn (:meth:`_post`), sent together at its end.
        self._outbox: list[tuple[bytes, bytes, asyncio.Future[Outcome]]] = []
        self._flush_armed = False
        self._faults = RateLimitedLog(log)
        self._closed = False
        self._live = False  # the presence subscription proven live (once it is, it stays: no property read)

    @property
    def directory(self) -> Directory:
        return self.core.directory

    @property
    def tracker(self) -> CallTracker:
        return self.core.tracker

    async def start(self) -> None:
        """Open the ROUTER, subscribe to presence and start reading replies (each request waits for the
        bus itself). Called once, before any other method."""
        self._router = RouterLink(self.bus.socket_config, self.bus.client_id.encode(), mandatory=True)
        if self.bus.keys is not None:
            apply_client(self._router.channel.sock, self.bus.keys, None)  # each responder's key at its connect
        self.bus.subscribe(self.bus.name or "zmqbus", PRESENCE_TOPIC, self._on_presence)
        self._loops = [self.bus.owner.spawn(serve_router(self._router, self._on_frames), name="zmqbus-caller")]

    # -- the core's actions and its timer -------------------------------------

    def _act(self, actions: Sequence[Connect | Disconnect | Wake]) -> None:
        for action in actions:
            if isinstance(action, Wake):
                _wake(action.call, TryFailed(action.reason))
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
        if self._closed:
            return
        actions = self.core.tick(asyncio.get_running_loop().time())
        for action in actions:
            if isinstance(action, Disconnect):
                log.info("the instance at %s stopped announcing; failing over its calls", action.endpoint)
        self._act(actions)
        self._schedule(self.core.next_deadline())

    # -- directory ---------------------------------------------------------

    def _on_presence(self, msg: ProcessingMessage) -> None:
        if self._closed:
            return  # closing: its socket may be gone already (a presence dispatched during close)
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

    async def discover_all(self) -> None:
        """Ask every responder on the bus to announce itself now (each is then connected as it does)."""
        await self.bus.publish(ProcessingMessage(DISCOVER_TOPIC, {}))

    async def _wait_for_instance(self, service: str, deadline: float, only: str | None = None) -> None:
        loop = asyncio.get_running_loop()
        until = min(deadline, loop.time() + self.discover_timeout)
        await self.bus.publish(ProcessingMessage(DISCOVER_TOPIC, discover_content(service)))
        log.debug("discovering %s (known instances: %d)", service, len(self.directory))
        while not any(only is None or i.instance_id == only for i in self.directory.live(service)):
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
        request_id = msg.metadata.causation_id or ""
        if kind != ERR:  # the common case: the call ends with its reply
            call = self.core.replied(request_id)
            if call is not None:
                _wake(call, Replied(kind, msg))
            return
        action = self.core.reply(request_id, ErrorReply.from_content(msg.content))
        if isinstance(action, Wake):
            _wake(action.call, TryFailed(action.reason))
        elif action is not None:
            _wake(action.call, Replied(kind, msg))

    # -- requests ----------------------------------------------------------

    async def request(
        self, service: str, message: ProcessingMessage, timeout: float, policy: RetryPolicy, instance: str | None = None
    ) -> ProcessingMessage:
        loop = asyncio.get_running_loop()
        md = message.metadata
        if md.deadline is None:
            md.deadline = time.time() + timeout
        head = request_head(service)  # validated: a service name is a topic
        core = self.core
        call = core.begin(md.message_id, service, loop.time(), timeout, policy)
        call.only = instance
        reason = "no reply"
        try:
            if not self._live and not self.bus.subscriptions_live:  # the presence subscription (proven once)
                try:
                    await self.bus.ready(max(0.0, call.deadline - loop.time()))
                except BusTimeout as exc:
                    raise RequestTimeout(service, 0, loop.time() - call.started, str(exc)) from None
            self._live = True
            while True:
                if call.settled is not None:  # a reply to an earlier try came while none waited: it ends the call
                    outcome = call.settled
                else:
                    inst = core.assign(call, loop.time())
                    if inst is None:
                        try:
                            await self._wait_for_instance(service, call.deadline, call.only)
                        except NoResponder:
                            if call.settled is None:
                                raise
                        continue
                    md.attempt = call.attempt
                    bus = self.bus
                    frame = head + bus.codec.encode(message, head, bus.client_id, 0, bus.name)
                    fut: asyncio.Future[Outcome] = loop.create_future()
                    call.waiter = fut  # resolved by a reply, the timer (timeout) or a lost instance
                    self._schedule(call.attempt_deadline)
                    self._post(inst.peer, frame, fut)
                    outcome = await fut
                    if outcome is _UNSENT:  # the instance is not reachable (yet)
                        call.waiter = loop.create_future()
                        outcome = await self._send_slowly(call, inst.peer, frame)
                    call.waiter = None
                    outcome = call.settled or outcome  # a reply that came after a retry was decided wins
                if isinstance(outcome, Replied):
                    return self._result(service, outcome.kind, outcome.message)
                if isinstance(outcome, Closed) or self._closed:
                    raise ClosedError(f"request to {service!r}: the broker was closed")
                reason = outcome.reason
                step = core.after_failure(call, loop.time())
                if isinstance(step, GiveUp):
                    raise RequestTimeout(
                        service, call.attempt, loop.time() - call.started, f"{step.reason}; last try: {reason}"
                    )
                await asyncio.sleep(step.delay)
        finally:
            core.finish(call)

    def _post(self, peer: bytes, frame: bytes, fut: asyncio.Future[Outcome]) -> None:
        """Queue a request; every request queued in one event-loop turn leaves at its end, back to back
        (libzmq then wakes its I/O thread once for them, not once per request)."""
        self._outbox.append((peer, frame, fut))
        if not self._flush_armed:
            self._flush_armed = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_armed = False
        outbox, self._outbox = self._outbox, []
        router = self._router
        for peer, frame, fut in outbox:
            if fut.done() or self._closed:
                continue  # the try ended before it left (its timeout, a lost instance, the close)
            if not router.send(peer, frame, recheck=False):
                fut.set_result(_UNSENT)
        if not self._closed:
            router.channel.recheck_now()  # the sends may have eaten the signal of a reply that came meanwhile

    async def _send_slowly(self, call: Call, peer: bytes, frame: bytes) -> Outcome:
        """The instance is unreachable: right after discovery that means "still connecting"."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outcome] = call.waiter
        pause = 0.001
        while True:
            if fut.done():
                return fut.result()
            if loop.time() + pause >= call.attempt_deadline:
                return TryFailed("instance unreachable")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
            if self._router.send(peer, frame):
                return await fut

    def _result(self, service: str, kind: bytes, msg: ProcessingMessage) -> ProcessingMessage:
        if kind == ERR:
            raise ErrorReply.from_content(msg.content).to_exception(msg.metadata.correlation_id, service)
        return msg

    async def close(self) -> None:
        self._closed = True
        for call in self.tracker.calls():
            _wake(call, Closed("the broker was closed"))  # no request waits forever
        self._announced.set()  # nor one still looking for an instance
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._router.close(0)


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


#: What a queued request's try gets when the socket refused it (the instance is not connected yet).
_UNSENT = TryFailed("not sent: instance unreachable")


def _wake(call: Call, outcome: Outcome) -> None:
    """Hand ``outcome`` to the try that waits. A reply (or the close) is also kept on the call: one that
    comes while no try waits (between two tries), or just after a timeout already woke the try, must
    still end the call, because the core has removed the call on it and no timer would ever wake a
    later try (requests hung past their timeout that way)."""
    if not isinstance(outcome, TryFailed) and call.settled is None:
        call.settled = outcome
    fut = call.waiter
    if fut is not None and not fut.done():
        fut.set_result(outcome)
