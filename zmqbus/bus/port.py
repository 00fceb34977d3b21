"""What a client's responder and caller see of it, and what they share: the port of request/reply.

:class:`Responder` (:mod:`.responder`) and :class:`Caller` (:mod:`.caller`)
belong to one client and see it only through :class:`BusPort` (publish,
subscribe, readiness, codec, socket settings, task owner): they never import
the broker nor reach into it. One frame after ZeroMQ's routing id, a kind and
its fields separated by NUL bytes (docs/PROTOCOL.md section 8.2)::

    caller -> responder   b"REQ\0" service b"\0" payload
    responder -> caller   b"REP\0" payload | b"ERR\0" payload | b"BUSY\0" msgpack([request_id])

The payload is the pub/sub payload of docs/PROTOCOL.md. A reply's
``causation_id`` is the request's ``message_id``: that is how replies are
matched, and why a retry (same message id) can be answered from the
responder's reply cache instead of being executed again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from ..core.codec import Codec
from ..core.message import ProcessingMessage
from ..core.policy import Policy
from ..core.security import KeyRing
from ..io.aio import DrainLoop, TaskOwner
from ..io.transport import RouterLink, SocketConfig

__all__ = ["BusPort", "RpcOptions", "ServiceHandler", "serve_router", "caller_key"]

ServiceHandler = Callable[[ProcessingMessage], Awaitable[Any] | Any]

#: Inside a service handler: the key name of the caller (its ZAP user id on a secure bus; "" otherwise).
caller_key: ContextVar[str] = ContextVar("zmqbus_caller_key", default="")


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
    replica: int = 1


async def serve_router(
    router: RouterLink,
    on_frames: Callable[[list[bytes], str], None],
    after_batch: Callable[[], None] | None = None,
) -> None:
    """Hand every message arriving on ``router`` to ``on_frames`` (with its key name when the router
    records them), draining in batches; ``after_batch`` runs after each batch (a responder sends the
    replies its handlers gave meanwhile there, back to back: ZeroMQ then wakes its I/O thread once for
    them, not once per reply).

    The reading runs in the socket's FD callback (:meth:`Channel.set_reader`), not in this task: this
    task only owns it. It ends (raising) when the socket fails or ``on_frames`` raises, and stops the
    reading when cancelled."""
    await _RouterReader(router, on_frames, after_batch).run()


class _RouterReader(DrainLoop):
    """The reading of :func:`serve_router`: drains the socket whenever its FD says so."""

    #: Seconds between re-checks that do not wait for the FD (bounds a lost FD edge).
    WATCHDOG = 1.0

    def __init__(
        self,
        router: RouterLink,
        on_frames: Callable[[list[bytes], str], None],
        after_batch: Callable[[], None] | None,
    ) -> None:
        super().__init__()
        self.router, self.on_frames, self.after_batch = router, on_frames, after_batch
        self._watchdog: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        failed = self.start()
        channel = self.router.channel
        channel.set_reader(self.drain)
        self._watchdog = asyncio.get_running_loop().call_later(self.WATCHDOG, self._tick)
        try:
            self.drain()  # what arrived before the reader was set
            await failed  # raises what ended the reading
        finally:
            channel.set_reader(None)
            self._watchdog.cancel()

    def _tick(self) -> None:
        self.drain()
        if self.failed is not None and not self.failed.done():
            self._watchdog = asyncio.get_running_loop().call_later(self.WATCHDOG, self._tick)

    def read_batch(self) -> bool:
        router, on_frames = self.router, self.on_frames
        batch = router.recv_batch(256)
        users = router.users
        try:
            if users:
                for frames, user in zip(batch, users, strict=True):
                    on_frames(frames, user)
            else:
                for frames in batch:
                    on_frames(frames, "")
        finally:  # replies held during the batch leave even when a message's handling raised
            if self.after_batch is not None:
                self.after_batch()
        # A short batch ended in Again; EVENTS re-arms the FD signal (a send in after_batch may have
        # eaten it) and says whether more came meanwhile.
        return len(batch) < 256 and not router.channel.readable()
