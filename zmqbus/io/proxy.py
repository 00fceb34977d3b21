"""The forwarder's sockets and threads: the XSUB/XPUB proxy, its control socket and its monitors.

:class:`ProxySockets` creates, configures and binds everything the forwarder
needs; :meth:`ProxySockets.run` is the proxy thread (libzmq's
``zmq_proxy_steerable`` in C, or the guarded loop of :mod:`.guarded`);
:class:`Watch` is the watch thread, which reads the monitors until libzmq
stops them and gives the forwarder its ticks. Everything the forwarder
decides (counting, statistics, the backlog bound) lives in
:mod:`zmqbus.bus.forwarder` and the pure core; this module only moves
frames and events.

The monitors' rule (DESIGN.md section 6): libzmq's I/O thread sends each
monitor event into an inproc PAIR and blocks while it has no reader, holding
the socket's monitor lock. So a monitor's reader outlives the monitor
(closed only after ``MONITOR_STOPPED``, which libzmq sends last), and
``disable_monitor()`` is never called.
"""

from __future__ import annotations

import array
import fcntl
import functools
import logging
import os
import select
import socket
import struct
import termios
import threading
from collections.abc import Callable
from typing import NamedTuple

import zmq

from ..core.connections import ConnectionEvent, EventKind
from ..core.errors import TransportError
from ..core.guard import MAX_SUBSCRIPTION_FRAME, SUBSCRIPTION_QUEUE, SUBSCRIPTION_RCVBUF, Guard
from ..core.security import KeyRing
from .guarded import run_guarded_proxy
from .security import apply_server
from .sockets import get_context, mapped_errors
from .transport import SocketConfig

__all__ = [
    "ProxyCounters",
    "ProxySockets",
    "Watch",
    "writable",
    "cut_connections",
    "raise_file_limit",
    "give_back_memory",
    "tcp_counters",
]

log = logging.getLogger("zmqbus.bus.forwarder")

_MONITORED = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_MONITOR_STOPPED
)


class ProxyCounters(NamedTuple):
    """``zmq_proxy_steerable``'s eight STATISTICS counters, in libzmq's order.

    The frontend is the publishers' XSUB, the backend the subscribers' XPUB:
    ``frontend_in`` is what publishers sent, ``backend_out`` what was handed to
    the XPUB once, ``backend_in`` the subscriptions subscribers sent.
    """

    frontend_in_frames: int
    frontend_in_bytes: int
    frontend_out_frames: int
    frontend_out_bytes: int
    backend_in_frames: int
    backend_in_bytes: int
    backend_out_frames: int
    backend_out_bytes: int


def decode_event(frames: list[bytes], publisher_side: bool) -> ConnectionEvent:
    """A monitor message as a :class:`ConnectionEvent` (the value of ACCEPTED and DISCONNECTED is the fd)."""
    event, fd = struct.unpack("=hi", frames[0][:6])
    if event & zmq.EVENT_MONITOR_STOPPED:
        kind = EventKind.STOPPED
    elif event & zmq.EVENT_ACCEPTED:
        kind = EventKind.ACCEPTED
    elif event & zmq.EVENT_DISCONNECTED:
        kind = EventKind.DISCONNECTED
    elif event & zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        kind = EventKind.AUTH_FAILED
    else:
        kind = EventKind.HANDSHAKE_FAILED
        # HANDSHAKE_FAILED_PROTOCOL's value is the ZMTP error: a mechanism mismatch is a peer without keys
        if event & zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and fd == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return ConnectionEvent(kind, fd, publisher_side, "no_key")
    return ConnectionEvent(kind, fd, publisher_side)


class ProxySockets:
    """The forwarder's bound sockets: XSUB (publishers), XPUB (subscribers), their monitors, a control PAIR.

    :meth:`bind` makes them all or none (a failure closes what it made and
    raises :class:`TransportError`); :meth:`run` is the proxy thread's body;
    :meth:`counters` and :meth:`terminate` talk to it from any thread.
    """

    def __init__(self, name: str, config: SocketConfig, guarded: bool = False) -> None:
        self.name = name  # unique: it names the inproc endpoints
        self.config = config
        self.guarded = guarded  # the guarded proxy will run: subscriptions are bounded as they arrive
        # The guarded loop's counters (frames/bytes in and out, publishers' side then subscribers', libzmq's
        # order): read directly, never waiting for the loop to finish a batch.
        self._guarded_counts = [0] * 8
        self.internal_in = f"inproc://zmqbus-{name}-in"
        self.internal_out = f"inproc://zmqbus-{name}-out"
        self._control_addr = f"inproc://zmqbus-{name}-control"
        self._ctx = get_context()
        self._lock = threading.Lock()
        self._xsub: zmq.Socket[bytes] | None = None
        self._xpub: zmq.Socket[bytes] | None = None
        self._control: zmq.Socket[bytes] | None = None
        self.monitors: tuple[zmq.Socket[bytes], zmq.Socket[bytes]] | None = None

    def bind(self, pub_endpoint: str, sub_endpoint: str, keys: KeyRing | None, zap_domain: str) -> None:
        """Create, secure and bind every socket (the ZAP domain must be registered already)."""
        ctx = self._ctx
        with mapped_errors("create the forwarder's sockets"):
            xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
        control: zmq.Socket[bytes] | None = None
        try:
            with mapped_errors("configure the forwarder's sockets"):
                for sock in (xsub, xpub):
                    self.config.apply(sock)
                    apply_server(sock, keys, zap_domain)
                if self.guarded:
                    # What a subscriber sends the XPUB is subscriptions only. libzmq keeps each one it reads
                    # (XPUB_MANUAL) until the connection goes, so what one connection has in flight is bounded
                    # too: a short queue (the sender waits, nothing is lost) and frames no longer than a
                    # subscription can be (a longer one ends the connection).
                    xpub.setsockopt(zmq.RCVHWM, SUBSCRIPTION_QUEUE)
                    xpub.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_FRAME)
                    # and a small kernel receive buffer: a cut (shutdown) does not empty it, libzmq reads it all
                    xpub.setsockopt(zmq.RCVBUF, SUBSCRIPTION_RCVBUF)
            with mapped_errors(f"bind {pub_endpoint}"):
                xsub.bind(pub_endpoint)
            with mapped_errors(f"bind {sub_endpoint}"):
                xpub.bind(sub_endpoint)
            with mapped_errors("bind the forwarder's internal endpoints"):
                xsub.bind(self.internal_in)
                xpub.bind(self.internal_out)
            # Our own monitor addresses: pyzmq's default is named after the socket's fd, which a new
            # forwarder can reuse while libzmq still holds the old monitor's endpoint. (A monitor already
            # made is not closed on failure: closing its reader before libzmq stops it is the deadlock.)
            with mapped_errors("monitor the forwarder's sockets"):
                self.monitors = (
                    xsub.get_monitor_socket(_MONITORED, f"inproc://zmqbus-{self.name}-monitor-pub"),
                    xpub.get_monitor_socket(_MONITORED, f"inproc://zmqbus-{self.name}-monitor-sub"),
                )
            with mapped_errors("bind the forwarder's control socket"):
                control = ctx.socket(zmq.PAIR)
                control.bind(self._control_addr)
        except BaseException:
            xsub.close(0)
            xpub.close(0)
            if control is not None:
                control.close(0)
            raise
        self._xsub, self._xpub, self._control = xsub, xpub, control

    def run(self, guard: Guard | None, cut: Callable[[list[int]], object] = lambda fds: None) -> None:
        """The proxy thread: forward until :meth:`terminate` (or the context ends), then close both sockets.
        ``cut`` shuts down the subscriber connections the guard names (a subscription flood).

        Raises what stopped the proxy otherwise (the forwarder reports it).
        """
        xsub, xpub = self._xsub, self._xpub
        assert xsub is not None and xpub is not None, "bind() first"
        control = self._ctx.socket(zmq.PAIR)
        control.connect(self._control_addr)
        try:
            if guard is None:
                zmq.proxy_steerable(xsub, xpub, None, control)
            else:
                run_guarded_proxy(xsub, xpub, control, guard, cut, self._guarded_counts)
        except zmq.ContextTerminated:
            pass
        finally:
            # Never disable_monitor() here (see the module docstring); closing is safe: libzmq's reaper
            # stops the monitors when it destroys the sockets, after the linger.
            for sock in (xsub, xpub):
                sock.close(int(self.config.linger * 1000))
            control.close(0)

    def counters(self, timeout: float) -> ProxyCounters:
        """Ask the proxy thread for its counters; raise :class:`TransportError` if it does not answer.
        The guarded proxy's are read at once (the loop may be in the middle of a batch)."""
        if self.guarded:
            with self._lock:
                if self._control is None:
                    raise TransportError("the forwarder's proxy is not running")
                return ProxyCounters(*self._guarded_counts)
        with self._lock:
            control = self._control
            if control is None:
                raise TransportError("the forwarder's proxy is not running")
            with mapped_errors("forwarder statistics"):
                control.send(b"STATISTICS")
                if not control.poll(int(timeout * 1000)):
                    raise TransportError("forwarder did not answer STATISTICS in time")
                return ProxyCounters(*(struct.unpack("=Q", f)[0] for f in control.recv_multipart()))

    def terminate(self) -> None:
        """Tell the proxy thread to end (it closes the proxy sockets itself)."""
        with self._lock, mapped_errors("stop the forwarder"):
            if self._control is not None:
                try:
                    self._control.send(b"TERMINATE", zmq.NOBLOCK)
                except zmq.Again:
                    pass

    def close(self) -> None:
        """Close the control socket (after the proxy thread ended, or gave up waiting for it)."""
        with self._lock:
            if self._control is not None:
                self._control.close(0)
                self._control = None


class Watch:
    """The watch thread: monitor events, statistics queries and the forwarder's ticks, in one poll loop.

    It publishes on the forwarder's own XSUB (an inproc PUB) what the
    callbacks return, and reads queries from its XPUB (an inproc SUB of
    ``query_topic``). It ends once libzmq has stopped both monitors.
    """

    def __init__(self, proxy: ProxySockets, query_topic: str, tick: float = 0.1) -> None:
        assert proxy.monitors is not None, "bind() first"
        self._tick_ms = max(1, int(tick * 1000))
        self._monitors = {proxy.monitors[0]: True, proxy.monitors[1]: False}  # monitor -> publisher side?
        ctx = get_context()
        self._out: zmq.Socket[bytes] | None = ctx.socket(zmq.PUB)
        self._queries: zmq.Socket[bytes] | None = ctx.socket(zmq.SUB)
        self._out.setsockopt(zmq.LINGER, 0)
        self._out.connect(proxy.internal_in)
        self._queries.setsockopt(zmq.LINGER, 0)
        self._queries.setsockopt(zmq.SUBSCRIBE, query_topic.encode())
        self._queries.connect(proxy.internal_out)

    def run(
        self,
        on_event: Callable[[ConnectionEvent], None],
        on_query: Callable[[], bytes | None],
        on_tick: Callable[[], bytes | None],
        stopping: threading.Event,
    ) -> None:
        """Loop until both monitors stopped. A frame returned by ``on_query`` or ``on_tick`` is published;
        once ``stopping`` is set, queries and ticks end and their sockets close."""
        poller = zmq.Poller()
        live, queries = dict(self._monitors), self._queries
        for sock in (*live, queries):
            poller.register(sock, zmq.POLLIN)
        try:
            while live:
                for sock, _ in poller.poll(self._tick_ms):
                    if queries is not None and sock is queries:
                        sock.recv_multipart()
                        self._send(on_query())
                        continue
                    event = decode_event(sock.recv_multipart(), live[sock])
                    if event.kind is EventKind.STOPPED:
                        poller.unregister(sock)
                        del live[sock]
                        sock.close(0)
                    else:
                        on_event(event)
                if stopping.is_set():
                    if queries is not None:
                        poller.unregister(queries)
                        queries = None
                    self._close_own()
                else:
                    self._send(on_tick())
                    self._drain_subscriptions()
        except zmq.ZMQError as exc:
            if exc.errno != zmq.ETERM:
                log.warning("forwarder watch thread stopped: %s", exc)
        finally:
            for monitor in live:
                monitor.close(0)
            self._close_own()

    def _drain_subscriptions(self) -> None:
        """Let the statistics PUB take in the subscriptions the forwarder passes it (as to every publisher).
        Until a socket is used, libzmq leaves them queued in its pipe: with no statistics to send, every
        subscription and unsubscription ever made would pile up there."""
        if self._out is not None:
            self._out.getsockopt(zmq.EVENTS)

    def _send(self, frame: bytes | None) -> None:
        if frame is not None and self._out is not None:
            self._out.send(frame, zmq.NOBLOCK)

    def _close_own(self) -> None:
        for sock in (self._out, self._queries):
            if sock is not None:
                sock.close(0)
        self._out = self._queries = None


def writable(fds: set[int]) -> dict[int, bool]:
    """Whether each connection's kernel send buffer can take more bytes now (a look, no I/O).

    A descriptor closed meanwhile (POLLNVAL) or whose peer left counts as
    writable: libzmq is about to report it gone, and it holds no backlog worth a cut.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLOUT)
    out = dict.fromkeys(fds, False)
    for fd, _ in poller.poll(0):
        out[fd] = True
    return out


#: ``struct tcp_info`` (Linux 4.2 and later): where ``tcpi_bytes_acked`` and ``tcpi_bytes_received`` are.
_TCP_INFO_SIZE, _BYTES_ACKED, _BYTES_RECEIVED = 232, 120, 128


def tcp_counters(fds: set[int] | list[int]) -> dict[int, tuple[int, int]]:
    """Each tcp connection's counters: bytes the peer acknowledged, bytes libzmq has read from it.

    A look, no I/O: ``TCP_INFO`` (``tcpi_bytes_acked``, ``tcpi_bytes_received``)
    and ``FIONREAD`` (received bytes not read yet) on libzmq's own descriptor,
    never closed here. Connections that are not tcp (ipc), closed meanwhile,
    or on a kernel without these counters are left out.
    """
    out: dict[int, tuple[int, int]] = {}
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None:  # pragma: no cover - not Linux
        return out
    waiting = array.array("i", [0])
    for fd in fds:
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, _TCP_INFO_SIZE)
            fcntl.ioctl(fd, termios.FIONREAD, waiting)
        except OSError:
            continue
        finally:
            sock.detach()  # libzmq's descriptor: never closed here
        if len(info) >= _BYTES_RECEIVED + 8:
            acked, received = struct.unpack_from("=QQ", info, _BYTES_ACKED)
            out[fd] = (acked, received - waiting[0])
    return out


def cut_connections(fds: list[int], local: set[object]) -> list[int]:
    """Shut down these accepted connections (libzmq owns the descriptors: it sees the peer leave and
    closes them itself). A descriptor whose local address is not one of ``local`` (a tcp port, an ipc
    path: closed and reused meanwhile) is left alone. Returns those that were cut."""
    cut: list[int] = []
    for fd in fds:
        try:
            dup = socket.socket(fileno=os.dup(fd))  # a duplicate: closing it never closes libzmq's
        except OSError:
            continue  # gone meanwhile, or not a socket
        try:
            name = dup.getsockname()
            if (name[1] if isinstance(name, tuple) else name) not in local:
                continue
            dup.shutdown(socket.SHUT_RDWR)
            cut.append(fd)
        except OSError:
            pass
        finally:
            dup.close()
    return cut


def raise_file_limit() -> None:
    """Raise this process's soft limit of open files to the hard one (a forwarder holds one per connection)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open-file limit raised from %d to %d", soft, target)
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)


def give_back_memory() -> bool:
    """Return the C heap's free memory to the operating system (glibc's ``malloc_trim``).

    libzmq frees a closed connection's subscription tries, but glibc keeps the
    freed pages in its heap: without this a forwarder cut free of a
    subscription flood would stay at its peak size. False where there is no
    glibc (musl, macOS): nothing done.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
