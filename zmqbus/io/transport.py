"""The socket layer: the only place where pyzmq meets asyncio.

Rules of this module:

* Sockets are plain (sync) ``zmq.Socket`` objects, always used with
  ``NOBLOCK``; asyncio only learns *when* to try again, through the socket's
  ``FD`` registered with ``loop.add_reader``. Draining with non-blocking
  receives and awaiting only on ``zmq.Again`` is what lets one asyncio task
  receive several hundred thousand messages a second (one ``await`` per
  message caps near 80k).
* The ZeroMQ FD signals *changes*; after anything that may have consumed the
  signal (a send, a setsockopt) the waiting side must re-check ``EVENTS``.
  :meth:`Channel.wake` does that, and every wait is also bounded by a timeout.
* Each socket belongs to one thread (the event loop's).
* ``zmq.ZMQError`` never leaves this module: it becomes :class:`TransportError`
  or :class:`ClosedError`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import zmq

from ..core.config import split_endpoints
from ..core.errors import ClosedError, TransportError

__all__ = [
    "SocketConfig",
    "Channel",
    "BusLink",
    "RouterLink",
    "get_context",
    "mapped_errors",
    "fast_send",
    "mark_background",
    "user_id",
]

log = logging.getLogger(__name__)

_ctx: zmq.Context[zmq.Socket[bytes]] | None = None
_ctx_pid = 0
_ctx_lock = threading.Lock()


def get_context() -> zmq.Context[zmq.Socket[bytes]]:
    """This process's ZeroMQ context, created on first use.

    A context must never cross ``fork``: a child process gets a fresh one.
    """
    global _ctx, _ctx_pid
    with _ctx_lock:
        if _ctx is None or _ctx_pid != os.getpid() or _ctx.closed:
            _ctx = zmq.Context()
            _ctx_pid = os.getpid()
        return _ctx


def _flush_at_exit() -> None:
    """At interpreter exit, let sockets closed with a linger finish sending.

    ZeroMQ sends a closed socket's queued messages only while its context
    lives: a process that publishes a burst, closes its broker and exits
    would otherwise lose the tail of the burst (measured: 10-40% of 3,000
    messages of 16 KiB). Terminating the context waits at most each closed
    socket's linger.

    Sockets of a client that was never closed (its event loop no longer
    runs) are closed here first, with their linger, and a warning says so:
    their queue gets the same chance to leave, unconfirmed. Termination is
    skipped while any other socket is still open (a running forwarder), since
    the context would then wait for it forever; and it is bounded by
    :data:`EXIT_FLUSH_TIMEOUT` in any case: a socket that was garbage-collected
    without being closed (pyzmq's ``__del__`` closes it only if its
    ResourceWarning is not turned into an error) is invisible here and would
    hold ``term()`` forever (seen under pytest's ``-W error``).
    """
    ctx = _ctx
    if ctx is None or ctx.closed or _ctx_pid != os.getpid():
        return
    abandoned = [ch for ch in list(_channels) if not ch.sock.closed and not ch.in_use()]
    if abandoned:
        log.warning(
            "exiting with %d zmqbus socket(s) never closed (a MessageBroker without close()?): "
            "their queued messages get each socket's linger to leave, unconfirmed",
            len(abandoned),
        )
        for ch in abandoned:
            ch.sock.close()  # with the LINGER its SocketConfig set
    sockets = getattr(ctx, "_sockets", None)
    if sockets is None or any(not s.closed and s not in _background for s in list(sockets)):
        return
    # term() releases the GIL while it waits, so a helper thread bounds it.
    terminator = threading.Thread(target=ctx.term, name="zmqbus-exit-flush", daemon=True)
    terminator.start()
    terminator.join(EXIT_FLUSH_TIMEOUT)
    if terminator.is_alive():
        log.warning(
            "exit: the ZeroMQ context did not terminate within %g s (a socket dropped without close()?); "
            "exiting without waiting for it",
            EXIT_FLUSH_TIMEOUT,
        )


_background: weakref.WeakSet[zmq.Socket[bytes]] = weakref.WeakSet()


def mark_background(sock: zmq.Socket[bytes]) -> None:
    """A socket of a service thread that closes itself when the context terminates (the ZAP
    handler's): it does not hold back the exit flush."""
    _background.add(sock)


#: Seconds the exit flush may take at the most (each socket's linger is 1 s by default).
EXIT_FLUSH_TIMEOUT = 5.0

atexit.register(_flush_at_exit)


def fast_send(sock: zmq.Socket[bytes]) -> Any:
    """``sock.send`` without pyzmq's Python-level wrapper.

    The wrapper (``zmq.sugar.socket.Socket.send``) only adds the draft API's
    ``routing_id`` and ``group`` arguments, which zmqbus never uses, and costs
    0.25-0.45 us per call on top of the 0.25 us of the send itself. Falls
    back to ``sock.send`` if a pyzmq version lays its classes out otherwise.
    """
    base = getattr(getattr(zmq, "backend", None), "Socket", None)
    send = getattr(base, "send", None)
    if base is None or send is None or not isinstance(sock, base):
        return sock.send
    return send.__get__(sock, type(sock))


@contextlib.contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """Translate ``zmq.ZMQError`` raised inside the block."""
    try:
        yield
    except zmq.ZMQError as exc:
        if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
            raise ClosedError(f"{what}: socket or context closed") from None
        raise TransportError(f"{what}: {exc.strerror}") from None


@dataclass(frozen=True)
class SocketConfig:
    """Socket options shared by the client and the forwarder.

    ``hwm`` is the high-water mark in messages per peer, each way. ZeroMQ's
    default of 1000 silently dropped 45% of messages under overload in our
    measurements, so the default is larger and every drop is counted by
    sequence gaps. ``linger`` (seconds) bounds how long ``close`` waits to
    flush. ``max_message_size`` is set as ``MAXMSGSIZE`` on receiving sockets:
    a peer that sends a larger frame is disconnected by ZeroMQ.
    """

    hwm: int = 100_000
    linger: float = 1.0
    max_message_size: int = 1024 * 1024
    reconnect_ivl: float = 0.1
    reconnect_ivl_max: float = 2.0
    #: A connection that has not completed its ZMTP (and CURVE) handshake by then is dropped:
    #: idle TCP connections cannot pile up (ZeroMQ's default is 30 s).
    handshake_ivl: float = 10.0

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.setsockopt(zmq.LINGER, int(self.linger * 1000))
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
        sock.setsockopt(zmq.RECONNECT_IVL, int(self.reconnect_ivl * 1000))
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(self.reconnect_ivl_max * 1000))
        sock.setsockopt(zmq.HANDSHAKE_IVL, int(self.handshake_ivl * 1000))


class Channel:
    """Awaitable readiness for one non-blocking zmq socket."""

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self.sock = sock
        _channels.add(self)
        with mapped_errors("socket fd"):
            self._fd = int(sock.getsockopt(zmq.FD))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[tuple[int, asyncio.Future[bool]]] = []
        self._recheck_due = False

    def wait_readable(self, timeout: float | None) -> Coroutine[Any, Any, bool]:
        """Wait until a receive may succeed (False on timeout; see :meth:`wait`). Returns :meth:`wait`'s
        coroutine itself: no second coroutine per wait on the hot path."""
        return self.wait(zmq.POLLIN, timeout)

    def wait_writable(self, timeout: float | None) -> Coroutine[Any, Any, bool]:
        """Wait until a send may succeed (False on timeout; see :meth:`wait`)."""
        return self.wait(zmq.POLLOUT, timeout)

    async def wait(self, event: int, timeout: float | None) -> bool:
        """Wait until ``event`` (``zmq.POLLIN``/``POLLOUT``) may be possible.

        Returns False on timeout. Callers must still handle ``zmq.Again``:
        readiness is a hint, re-checked by the next non-blocking call.
        """
        with mapped_errors("wait"):
            if int(self.sock.getsockopt(zmq.EVENTS)) & event:
                return True
        loop = asyncio.get_running_loop()
        if self._loop is None:
            # Registered once for the channel's life: request/reply waits after
            # almost every small batch, and add/remove_reader each time would
            # cost two epoll_ctl calls. Reading EVENTS in the callback drains
            # ZeroMQ's signal, so an idle registration never spins.
            self._loop = loop
            loop.add_reader(self._fd, self._on_fd)
        fut: asyncio.Future[bool] = loop.create_future()
        waiter = (event, fut)
        self._waiters.append(waiter)
        timer = loop.call_later(timeout, _resolve, fut, False) if timeout is not None else None
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def in_use(self) -> bool:
        """True while the event loop that waits on this socket is running."""
        return self._loop is not None and self._loop.is_running()

    def wake(self) -> None:
        """Make every waiter re-check (after an operation that may eat the FD edge)."""
        for _, fut in self._waiters:
            _resolve(fut, True)

    def recheck(self) -> None:
        """After a send on a socket someone waits on: wake them if their event is ready now.

        A send processes ZeroMQ's command mailbox and so can consume the FD
        signal of a message that arrived meanwhile; without this the waiter
        would sleep until its timeout.
        """
        if self._waiters and not self._recheck_due and self._loop is not None:
            # Deferred to the loop's next turn (which runs before it polls again),
            # and coalesced: reading EVENTS costs a syscall (about 2 us), and a
            # busy caller sends many requests per turn.
            self._recheck_due = True
            self._loop.call_soon(self._deferred_recheck)

    def _deferred_recheck(self) -> None:
        self._recheck_due = False
        if self._waiters:
            self._on_fd()

    def _on_fd(self) -> None:
        try:
            events = int(self.sock.getsockopt(zmq.EVENTS))  # also clears the FD signal
        except zmq.ZMQError:
            events = zmq.POLLIN | zmq.POLLOUT  # let the waiter find out why
        for event, fut in self._waiters:
            if events & event:
                _resolve(fut, True)

    def _unwatch(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            self._loop = None

    def close(self, linger: float | None = None) -> None:
        self.wake()
        self._unwatch()
        with mapped_errors("close"):
            self.sock.close(linger=None if linger is None else int(linger * 1000))


_channels: weakref.WeakSet[Channel] = weakref.WeakSet()


def user_id(frame: zmq.Frame) -> str:
    """The ZAP user id (a key name) of the connection a frame came from; "" if none."""
    try:
        user = frame.get("User-Id")
    except zmq.ZMQError:
        return ""
    return user if isinstance(user, str) else ""


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class BusLink:
    """A client's two sockets to a forwarder.

    The publishing socket is an ``XPUB`` with ``XPUB_NODROP``: at the
    high-water mark a send fails with ``Again`` and :meth:`send` returns False,
    so the caller can wait instead of losing the message silently (a ``PUB``
    would drop it). The receiving socket is a plain ``SUB``.
    """

    def __init__(self, config: SocketConfig) -> None:
        ctx = get_context()
        self.config = config
        with mapped_errors("create sockets"):
            pub = ctx.socket(zmq.XPUB)
            config.apply(pub)
            pub.setsockopt(zmq.XPUB_NODROP, 1)
            sub = ctx.socket(zmq.SUB)
            config.apply(sub)
        self.pub = Channel(pub)
        self.sub = Channel(sub)
        self._psend = fast_send(pub)
        self._srecv = sub.recv

    def connect(self, pub_endpoint: str, sub_endpoint: str) -> None:
        """Connect to a forwarder, or to several (comma-separated endpoints: a redundant bus).
        ZeroMQ reconnects by itself afterwards."""
        for endpoint in split_endpoints(pub_endpoint):
            with mapped_errors(f"connect to {endpoint}"):
                self.pub.sock.connect(endpoint)
        for endpoint in split_endpoints(sub_endpoint):
            with mapped_errors(f"connect to {endpoint}"):
                self.sub.sock.connect(endpoint)

    def send(self, frame: bytes) -> bool:
        """Queue one message (one frame); False when the high-water mark is reached."""
        try:
            self._psend(frame, 1)  # zmq.NOBLOCK
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            with mapped_errors("publish"):
                raise exc
        return True

    @staticmethod
    async def wait_room(attempt: int) -> None:
        """Wait before trying a refused :meth:`send` again (``attempt`` counts from 0).

        Readiness cannot be awaited here: libzmq reports ``POLLOUT`` on an ``XPUB`` at all times, even
        when ``XPUB_NODROP`` refuses sends at the high-water mark (libzmq issue 1597), so a wait on
        :meth:`Channel.wait_writable` returns at once and a retry loop on it would spin without ever
        yielding to the event loop. The pause starts at 0.5 ms and doubles up to 20 ms.
        """
        await asyncio.sleep(min(0.0005 * (1 << min(attempt, 6)), 0.02))

    def subscribe(self, prefix: bytes) -> None:
        with mapped_errors("subscribe"):
            self.sub.sock.setsockopt(zmq.SUBSCRIBE, prefix)
        self.sub.wake()

    def unsubscribe(self, prefix: bytes) -> None:
        with mapped_errors("unsubscribe"):
            self.sub.sock.setsockopt(zmq.UNSUBSCRIBE, prefix)
        self.sub.wake()

    def recv_batch(self, limit: int) -> list[bytes]:
        """Receive up to ``limit`` frames without blocking.

        Every frame is a message on its own (PROTOCOL.md section 2): a peer
        that sends several frames at once sends several messages, each decoded
        (or counted as malformed) by itself, so there is no framing to lose.
        """
        out: list[bytes] = []
        append = out.append
        recv = self._srecv
        try:
            for _ in range(limit):
                append(recv(1))  # zmq.NOBLOCK
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:
            with mapped_errors("receive"):
                raise exc
        return out

    def read_notices(self) -> list[bytes]:
        """The subscription notices queued on the XPUB, oldest first (``0x01`` + prefix: subscribed,
        ``0x00`` + prefix: unsubscribed); reading them also keeps them from piling up."""
        out: list[bytes] = []
        recv = self.pub.sock.recv
        with contextlib.suppress(zmq.ZMQError):
            while True:
                out.append(recv(zmq.NOBLOCK))
        return out

    def close(self, linger: float | None = None) -> None:
        """Close both sockets; queued outgoing messages get ``linger`` seconds."""
        self.sub.close(0)
        self.pub.close(self.config.linger if linger is None else linger)


class RouterLink:
    """A ROUTER socket for peer-to-peer requests (both the caller's and the responder's).

    The caller's ROUTER has ``ROUTER_MANDATORY`` set: a send to a peer that is
    not (yet, or any more) connected fails at once (:meth:`send` returns
    False) instead of vanishing. Peers are addressed by routing id; the caller
    names each responder with ``CONNECT_ROUTING_ID`` when it connects.
    """

    def __init__(
        self,
        config: SocketConfig,
        routing_id: bytes | None = None,
        *,
        mandatory: bool = False,
        with_users: bool = False,
    ) -> None:
        with mapped_errors("create ROUTER socket"):
            sock = get_context().socket(zmq.ROUTER)
            config.apply(sock)
            if routing_id is not None:
                sock.setsockopt(zmq.ROUTING_ID, routing_id)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1 if mandatory else 0)
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting peer takes over its routing id
        self.config = config
        self.channel = Channel(sock)
        self._send = fast_send(sock)
        #: With ``with_users``: the ZAP user id (key name) of each message of the last batch, in order.
        self.users: list[str] | None = [] if with_users else None

    def bind(self, endpoint: str) -> str:
        """Bind (``tcp://host:*`` picks a free port) and return the endpoint actually bound."""
        with mapped_errors(f"bind {endpoint}"):
            self.channel.sock.bind(endpoint)
            last = self.channel.sock.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else str(last)

    def connect(self, endpoint: str, peer_id: bytes, server_key: bytes | None = None) -> None:
        """Connect to a peer, naming it ``peer_id``; ``server_key``: its CURVE public key (a secure bus)."""
        with mapped_errors(f"connect to {endpoint}"):
            self.channel.sock.setsockopt(zmq.CONNECT_ROUTING_ID, peer_id)
            if server_key is not None:
                self.channel.sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            self.channel.sock.connect(endpoint)

    def disconnect(self, endpoint: str) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.channel.sock.disconnect(endpoint)

    def send(self, peer: bytes, frame: bytes) -> bool:
        """Send one message (``frame``) to ``peer``; False if the peer is unreachable or its queue is full."""
        send = self._send
        try:
            send(peer, 3)  # SNDMORE | NOBLOCK: EHOSTUNREACH / Again can only happen here
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False
            with mapped_errors("send"):
                raise exc
        try:
            send(frame, 0)  # the rest of a message whose first frame was taken never blocks
        except zmq.ZMQError as exc:
            with mapped_errors("send"):
                raise exc
        self.channel.recheck()
        return True

    def recv_batch(self, limit: int) -> list[list[bytes]]:
        """Up to ``limit`` whole messages (routing id first), without blocking.

        Frames are read one by one with their ``more`` flag (``recv_multipart``
        checks ``RCVMORE`` with a getsockopt per frame, about 0.7 us each).
        """
        out: list[list[bytes]] = []
        recv = self.channel.sock.recv
        users = self.users
        if users is not None:
            users.clear()
        try:
            for _ in range(limit):
                try:
                    peer = recv(1)  # zmq.NOBLOCK; the routing id, always followed by the rest
                except zmq.Again:
                    break
                frame = recv(1, copy=False)  # a Frame: its more flag (no getsockopt) and its key name
                frames = [peer, frame.bytes]
                while frame.more:  # the rest of a multipart message is always there
                    frame = recv(1, copy=False)
                    frames.append(frame.bytes)
                out.append(frames)
                if users is not None:
                    users.append(user_id(frame))
        except zmq.ZMQError as exc:
            with mapped_errors("receive"):
                raise exc
        return out

    def close(self, linger: float | None = None) -> None:
        self.channel.close(self.config.linger if linger is None else linger)
