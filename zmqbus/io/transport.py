"""The links: a client's two sockets to a forwarder (:class:`BusLink`) and the ROUTER of request/reply
(:class:`RouterLink`), on the primitives of :mod:`.sockets` (whose rules hold here too)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import zmq

from ..core.config import split_endpoints
from .sockets import Channel, fast_send, get_context, mapped_errors, user_id

__all__ = ["SocketConfig", "BusLink", "RouterLink"]


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

    def send_many(self, frames: list[bytes]) -> int:
        """Queue messages (one frame each) in order; return how many were taken: fewer than all when the
        high-water mark is reached (the rest were not sent)."""
        send = self._psend
        sent = 0
        try:
            for frame in frames:
                send(frame, 1)  # zmq.NOBLOCK
                sent += 1
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:
            with mapped_errors("publish"):
                raise exc
        return sent

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

    def send(self, peer: bytes, frame: bytes, recheck: bool = True) -> bool:
        """Send one message (``frame``) to ``peer``; False if the peer is unreachable or its queue is full.
        ``recheck=False``: the caller calls :meth:`Channel.recheck_now` after its run of sends."""
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
        if recheck:
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
