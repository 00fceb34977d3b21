"""The forwarder: an XSUB/XPUB proxy that runs at C speed, with counters.

Publishers connect to ``pub_endpoint`` (XSUB), subscribers to
``sub_endpoint`` (XPUB). Messages are moved by libzmq's ``zmq_proxy_steerable``
in a thread that holds no GIL; Python only runs to read statistics, watch the
sockets' monitor events (connections, disconnections, failed handshakes such as
garbage bytes on the port) and, optionally, publish its statistics on the bus
as ``_zmqbus.forwarder.stats``. The forwarder never decodes a message.

``MAXMSGSIZE`` is set on both sockets: a publisher that sends a larger frame is
disconnected by ZeroMQ (and reconnects), which is counted as a disconnect; it
never reaches a subscriber.

Use :func:`run_forwarder` for a process that stops on SIGINT/SIGTERM, or
:class:`Forwarder` to embed one in a thread (``inproc://`` works when the
clients live in the same process).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import struct
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import zmq

from ..core import config
from ..core.backlog import BacklogBound
from ..core.codec import Codec
from ..core.control import FORWARDER_QUERY_TOPIC
from ..core.errors import ClosedError, SecurityError, TransportError, ZmqbusError
from ..core.ids import new_id
from ..core.message import MessageMetadata, ProcessingMessage
from ..core.policy import Policy, SubscriptionLimits
from ..core.ratelog import RateLimitedLog
from ..core.security import KeyRing, check_endpoint
from ..io.security import apply_server, config_keys, config_policy, reread_keys, zap_handler
from ..io.transport import SocketConfig, get_context, mapped_errors
from .guarded import PolicyGuard, run_guarded_proxy

__all__ = ["Forwarder", "ForwarderStatistics", "run_forwarder", "STATS_TOPIC", "QUERY_TOPIC"]

log = logging.getLogger(__name__)

STATS_TOPIC = "_zmqbus.forwarder.stats"
#: A message on this topic makes the forwarder publish its statistics at once (at most 20 a second).
QUERY_TOPIC = FORWARDER_QUERY_TOPIC
DEFAULT_MAX_QUEUED_BYTES = 128 * 1024 * 1024
_BACKLOG_EVERY = 0.2  # seconds between samples of the subscribers' connections

# MONITOR_STOPPED is the last event libzmq sends, when it destroys the socket:
# the watch thread reads every monitor until then (see _run_watch).
_MONITORED = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_MONITOR_STOPPED
)
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


@dataclass(frozen=True)
class ForwarderStatistics:
    """Counters of a running forwarder.

    ``frames_in``/``bytes_in`` count what publishers sent (a zmqbus message is
    one frame); ``frames_out``/``bytes_out`` what was handed to the XPUB
    side once (ZeroMQ then copies it to each matching subscriber).
    ``subscription_frames`` counts (un)subscriptions from subscribers.
    """

    frames_in: int
    bytes_in: int
    frames_out: int
    bytes_out: int
    subscription_frames: int
    publisher_connects: int
    publisher_disconnects: int
    subscriber_connects: int
    subscriber_disconnects: int
    handshake_failures: int
    uptime: float
    #: Handshakes the allow-list refused, by reason (``unknown_key``...); empty without keys.
    refused: dict[str, int] = field(default_factory=dict)
    #: Subscribers cut because more than ``max_queued_bytes`` could be queued for them.
    slow_subscribers_cut: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Forwarder:
    """An XSUB/XPUB forwarder running in background threads of this process.

    :param pub_endpoint: bind address for publishers (tcp or ipc; inproc too).
    :param sub_endpoint: bind address for subscribers.
    :param socket_config: high-water marks, linger and ``MAXMSGSIZE``.
    :param stats_interval: seconds between statistics messages on the bus
        (``None``: do not publish them).
    :param keys: the forwarder's CURVE keys (:func:`zmqbus.load_keys` with
        ``server=False``): both endpoints become CURVE servers that accept
        only the allow-list's keys (docs/SECURITY.md). Default: the key folder
        ``$ZMQBUS_KEYS``, if set.
    :param insecure: allow binding a non-loopback tcp endpoint without keys.
    :param policy: per-key permissions (:func:`zmqbus.load_policy`; default:
        the file ``$ZMQBUS_POLICY``, if set). Needs keys. Enforced in the
        guarded proxy (Python sees every message: slower; see SECURITY.md).
    :param subscription_limits: bounds on subscriptions (per connection, in
        all, bytes in all: :class:`SubscriptionLimits`). Default: on, with the
        default bounds, when the forwarder has keys (an exposed bus), off on a
        plaintext one (local and trusted; libzmq's C proxy, the fastest).
        ``True``/``False`` force them on or off. They need the guarded proxy,
        as a policy does.
    :param max_connections: live connections (both endpoints together) past
        which new clients are refused, with a log line; counted in
        ``statistics().refused["connection_limit"]``. Connections that never
        complete a handshake are dropped after ``socket_config.handshake_ivl``.
    :param max_queued_bytes: the most that may be queued for one subscriber
        whose connection takes no more bytes (its kernel buffers are full)
        before the forwarder cuts it (default 128 MiB; ``None``: no bound but
        the high-water mark). The cut subscriber reconnects by itself and
        counts what it missed as gaps; ``statistics().slow_subscribers_cut``
        counts the cuts. See :mod:`zmqbus.core.backlog` for how it is bounded.
    :param metrics_port: serve Prometheus metrics at
        ``http://metrics_addr:metrics_port/metrics`` while it runs (needs
        ``zmqbus[metrics]``). Default: none.
    :param metrics_addr: the address that serves them (default loopback).

    ``start()`` binds (raising :class:`TransportError` at once for a busy
    port or a bad endpoint) and returns; ``stop()`` ends the proxy and closes
    every socket within the configured linger.
    """

    def __init__(
        self,
        pub_endpoint: str | None = None,
        sub_endpoint: str | None = None,
        *,
        socket_config: SocketConfig | None = None,
        stats_interval: float | None = 5.0,
        keys: KeyRing | None = None,
        insecure: bool | None = None,
        max_connections: int = 10_000,
        policy: Policy | None = None,
        subscription_limits: SubscriptionLimits | bool | None = None,
        max_queued_bytes: int | None = DEFAULT_MAX_QUEUED_BYTES,
        metrics_port: int | None = None,
        metrics_addr: str = "127.0.0.1",
    ) -> None:
        self.metrics_port, self.metrics_addr = metrics_port, metrics_addr
        self._metrics: Any = None
        self.keys = keys if keys is not None else config_keys(server=False)
        self.policy = policy if policy is not None else config_policy()
        if self.policy is not None and self.keys is None:
            raise SecurityError("a policy names keys: it needs CURVE keys (--keys) to know who is who")
        if subscription_limits is None:
            subscription_limits = self.keys is not None
        limits = (
            subscription_limits
            if isinstance(subscription_limits, SubscriptionLimits)
            else SubscriptionLimits()
            if subscription_limits or self.policy is not None
            else None
        )
        self.guard: PolicyGuard | None = None if limits is None else PolicyGuard(self.policy, limits)
        self.max_connections = max_connections
        self.backlog = BacklogBound(max_queued_bytes) if max_queued_bytes else None
        self.insecure = config.insecure(insecure)
        self._zap_domain: str | None = None
        self.pub_endpoint = config.pub_endpoint(pub_endpoint)
        self.sub_endpoint = config.sub_endpoint(sub_endpoint)
        self.socket_config = socket_config or SocketConfig()
        self.stats_interval = stats_interval
        self._ctx = get_context()
        self._id = "forwarder-" + new_id()
        self._control_addr = f"inproc://zmqbus-{self._id}-control"
        self._internal_addr = f"inproc://zmqbus-{self._id}-in"
        self._internal_out = f"inproc://zmqbus-{self._id}-out"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._events = {"pc": 0, "pd": 0, "sc": 0, "sd": 0, "hf": 0}
        self._started_at = 0.0
        self._control: zmq.Socket[bytes] | None = None
        self._proxy_error: BaseException | None = None
        self._faults = RateLimitedLog(log)
        self._admissions = 0  # clients the ZAP handler asked _admit about
        self._live_fds: set[int] = set()  # accepted connections not yet disconnected (monitor events)
        self._sub_fds: set[int] = set()  # the subscriber side's among them

    def start(self) -> Forwarder:
        """Bind both endpoints and start forwarding. Returns ``self``."""
        if self._control is not None:
            raise ZmqbusError("forwarder already started")
        if self._stop.is_set():
            raise ClosedError("forwarder was stopped")
        for endpoint in (self.pub_endpoint, self.sub_endpoint):
            check_endpoint(endpoint, self.keys, self.insecure, "bind the forwarder at")
        if self.metrics_port is not None and self._metrics is None:
            # Before the bus binds: once a client gets through, the metrics are up too.
            from .metrics import serve_metrics

            self._metrics = serve_metrics(self.metrics_port, self, addr=self.metrics_addr)
        ctx = self._ctx
        with mapped_errors("create the forwarder's sockets"):
            xsub = ctx.socket(zmq.XSUB)
            xpub = ctx.socket(zmq.XPUB)
        control: zmq.Socket[bytes] | None = None
        try:
            with mapped_errors("configure the forwarder's sockets"):
                for sock in (xsub, xpub):
                    self.socket_config.apply(sock)
            # Every client is admitted by the ZAP handler, registered before the
            # first bind (a server with ZAP_ENFORCE_DOMAIN and no handler refuses
            # everyone): the allow-list with keys, the connection limit always.
            self._zap_domain = zap_handler().register(
                None if self.keys is None else dict(self.keys.allowed), "forwarder", self._admit
            )
            for sock in (xsub, xpub):
                apply_server(sock, self.keys, self._zap_domain)
            with mapped_errors(f"bind {self.pub_endpoint}"):
                xsub.bind(self.pub_endpoint)
            with mapped_errors(f"bind {self.sub_endpoint}"):
                xpub.bind(self.sub_endpoint)
            with mapped_errors("bind the forwarder's internal endpoints"):
                xsub.bind(self._internal_addr)
                xpub.bind(self._internal_out)
            # Our own monitor addresses: pyzmq's default is named after the
            # socket's fd, which a new forwarder can reuse while libzmq still
            # holds the old monitor's endpoint (until the reaper destroys it).
            # (A monitor already made is not closed on failure: closing its
            # reader before libzmq stops it is the deadlock _run_watch avoids.)
            with mapped_errors("monitor the forwarder's sockets"):
                monitors = (
                    xsub.get_monitor_socket(_MONITORED, f"inproc://zmqbus-{self._id}-monitor-pub"),
                    xpub.get_monitor_socket(_MONITORED, f"inproc://zmqbus-{self._id}-monitor-sub"),
                )
            with mapped_errors("bind the forwarder's control socket"):
                control = ctx.socket(zmq.PAIR)
                control.bind(self._control_addr)
        except BaseException:
            xsub.close(0)
            xpub.close(0)
            if control is not None:
                control.close(0)
            self._forget_domain()
            if self._metrics is not None:
                self._metrics.close()
                self._metrics = None
            raise
        self._control = control
        self._started_at = time.monotonic()
        self._threads = [
            threading.Thread(target=self._run_proxy, args=(xsub, xpub), name="zmqbus-proxy", daemon=True),
            threading.Thread(target=self._run_watch, args=monitors, name="zmqbus-forwarder-watch", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info(
            "forwarder up: publishers -> %s, subscribers -> %s%s",
            self.pub_endpoint,
            self.sub_endpoint,
            "" if self.keys is None else f" (CURVE, {len(self.keys.allowed)} key(s) allowed)",
        )
        return self

    def _admit(self) -> str | None:
        """Called by the ZAP handler for each client it would accept: a limit reached, or None."""
        ev = self._events
        self._admissions += 1
        # Every connection that reaches ZAP was accepted first, but the watch thread may not have
        # read all those events yet: count the ones it has not as live (an upper bound), and only
        # near the limit wait (briefly, bounded) for the exact count.
        unseen = max(0, self._admissions - ev["pc"] - ev["sc"])
        live = ev["pc"] - ev["pd"] + ev["sc"] - ev["sd"] + unseen
        deadline = time.monotonic() + 0.2
        while live > self.max_connections and unseen and time.monotonic() < deadline:
            time.sleep(0.0005)
            unseen = max(0, self._admissions - ev["pc"] - ev["sc"])
            live = ev["pc"] - ev["pd"] + ev["sc"] - ev["sd"] + unseen
        if live > self.max_connections:
            self._faults.log(
                logging.WARNING,
                "connection-limit",
                "connection limit reached (%d live, max_connections %d): refusing new clients until some disconnect",
                live,
                self.max_connections,
            )
            return "connection_limit"
        return None

    def reload_keys(self) -> tuple[list[str], list[str]]:
        """Read the allow-list folder (and the policy file, if any) again; return the key names (added, removed).

        New connections see the new list at once. When a key was removed,
        every live connection is cut (its socket shut down, which libzmq sees
        as the peer leaving): members reconnect within about 100 ms and
        handshake again, and the removed key's handshake is refused. What was
        in flight on those connections is lost and counted as gaps, as in a
        forwarder restart. Raises :class:`SecurityError` if the folder cannot
        be read (the old list stays in force).
        """
        keys, domain = self.keys, self._zap_domain
        if keys is None or keys.allowed_dir is None or domain is None:
            raise ZmqbusError("this forwarder has no allow-list to reload (it was started without keys)")
        self.keys, policy, added, removed = reread_keys(keys, self.policy)
        zap_handler().update(domain, dict(self.keys.allowed))
        if policy is not None and self.guard is not None:
            self.policy = policy
            self.guard.replace_policy(policy)
        log.info(
            "allow-list reloaded from %s: %d key(s); added %s, removed %s",
            keys.allowed_dir,
            len(self.keys.allowed),
            added or "none",
            removed or "none",
        )
        if removed:
            cut = _cut_connections(list(self._live_fds), self._local_addresses())
            log.warning("cut %d live connection(s) so that the removed key(s) %s must handshake again", cut, removed)
        return added, removed

    def _local_addresses(self) -> set[object]:
        """What an accepted connection's local address is (a tcp port, an ipc path): to cut only ours."""
        out: set[object] = set()
        for endpoint in (self.pub_endpoint, self.sub_endpoint):
            scheme, _, rest = endpoint.partition("://")
            if scheme == "tcp" and rest.rsplit(":", 1)[-1].isdigit():
                out.add(int(rest.rsplit(":", 1)[-1]))
            elif scheme == "ipc":
                out.add(rest)
        return out

    def _forget_domain(self) -> None:
        if self._zap_domain is not None:
            zap_handler().unregister(self._zap_domain)
            self._zap_domain = None

    def _run_proxy(self, xsub: zmq.Socket[bytes], xpub: zmq.Socket[bytes]) -> None:
        control = self._ctx.socket(zmq.PAIR)
        control.connect(self._control_addr)
        try:
            if self.guard is None:
                zmq.proxy_steerable(xsub, xpub, None, control)
            else:
                run_guarded_proxy(xsub, xpub, control, self.guard)
        except zmq.ContextTerminated:
            pass
        except BaseException as exc:  # reported by stop() and statistics()
            self._proxy_error = exc
            log.error("forwarder proxy stopped: %s", exc)
        finally:
            # Never disable_monitor() here: it takes the socket's monitor lock
            # while holding the GIL, and an I/O thread may hold that lock,
            # blocked sending an event to a monitor nobody reads, which stops
            # every Python thread. Closing is safe: libzmq's reaper stops the
            # monitor when it destroys the socket (after the linger), and the
            # watch thread reads every monitor until then.
            for sock in (xsub, xpub):
                sock.close(int(self.socket_config.linger * 1000))
            control.close(0)

    def _run_watch(self, pub_monitor: zmq.Socket[bytes], sub_monitor: zmq.Socket[bytes]) -> None:
        """Count monitor events; publish statistics; read each monitor until libzmq stops it.

        A monitor's reader must outlive the monitor: libzmq's I/O thread sends
        each event into the monitor PAIR and blocks while it has no reader,
        holding the socket's monitor lock (DESIGN.md section 6). So this
        thread closes a monitor socket only after its MONITOR_STOPPED event,
        which libzmq sends last, when it destroys the monitored socket.
        """
        poller = zmq.Poller()
        live = {pub_monitor: True, sub_monitor: False}  # monitor -> publisher side?
        for sock in live:
            poller.register(sock, zmq.POLLIN)
        # Statistics go out every stats_interval and whenever someone asks (QUERY_TOPIC, read by a
        # SUB on the forwarder's own XPUB): `zmqbus stats` answers at once.
        stats_pub: zmq.Socket[bytes] | None = self._ctx.socket(zmq.PUB)
        queries: zmq.Socket[bytes] | None = self._ctx.socket(zmq.SUB)
        assert stats_pub is not None and queries is not None
        stats_pub.setsockopt(zmq.LINGER, 0)
        stats_pub.connect(self._internal_addr)
        queries.setsockopt(zmq.LINGER, 0)
        queries.setsockopt(zmq.SUBSCRIBE, QUERY_TOPIC.encode())
        queries.connect(self._internal_out)
        poller.register(queries, zmq.POLLIN)
        codec = Codec()
        seq = 0
        answered = 0.0
        next_stats = time.monotonic() + (self.stats_interval or 0)
        next_backlog = time.monotonic() + _BACKLOG_EVERY
        try:
            while live:
                for sock, _ in poller.poll(100):
                    if sock is queries:
                        sock.recv_multipart()
                        if stats_pub is not None and time.monotonic() - answered >= 0.05:
                            answered = time.monotonic()
                            seq += 1
                            self._publish_stats(stats_pub, codec, seq)
                        continue
                    if self._on_monitor_event(sock.recv_multipart(), live[sock]):
                        poller.unregister(sock)
                        del live[sock]
                        sock.close(0)
                if self.backlog is not None and time.monotonic() >= next_backlog and not self._stop.is_set():
                    next_backlog = time.monotonic() + _BACKLOG_EVERY
                    self._check_backlog(self.backlog)
                if (
                    stats_pub is not None
                    and self.stats_interval
                    and not self._stop.is_set()
                    and time.monotonic() >= next_stats
                ):
                    next_stats += self.stats_interval
                    seq += 1
                    self._publish_stats(stats_pub, codec, seq)
                if stats_pub is not None and self._stop.is_set():
                    stats_pub.close(0)
                    stats_pub = None
                if queries is not None and self._stop.is_set():
                    poller.unregister(queries)
                    queries.close(0)
                    queries = None
        except zmq.ZMQError as exc:
            if exc.errno != zmq.ETERM:
                log.warning("forwarder watch thread stopped: %s", exc)
        finally:
            for monitor in live:
                monitor.close(0)
            for own in (stats_pub, queries):
                if own is not None:
                    own.close(0)

    def _on_monitor_event(self, frames: list[bytes], publisher_side: bool) -> bool:
        """Count one monitor event; True when it is the monitor's last (MONITOR_STOPPED)."""
        event, fd = struct.unpack("=hi", frames[0][:6])  # ACCEPTED's and DISCONNECTED's value: the connection's fd
        side = "p" if publisher_side else "s"
        if event & zmq.EVENT_MONITOR_STOPPED:
            return True
        if event & zmq.EVENT_ACCEPTED:
            self._events[side + "c"] += 1
            self._live_fds.add(fd)
            if not publisher_side:
                self._sub_fds.add(fd)
        elif event & zmq.EVENT_DISCONNECTED:
            self._events[side + "d"] += 1
            self._live_fds.discard(fd)
            if not publisher_side:
                self._sub_fds.discard(fd)
            if self.guard is not None and not publisher_side:
                self.guard.closed(fd)
            log.debug("a %s disconnected", "publisher" if publisher_side else "subscriber")
        elif event & zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._events["hf"] += 1  # the ZAP handler logged who and why
        elif event & _HANDSHAKE_FAILED:
            self._events["hf"] += 1
            self._faults.log(
                logging.WARNING,
                "handshake",
                "handshake failed on the %s side (garbage bytes, a "
                "non-ZMTP peer, or a client without the right CURVE keys?): %d so far",
                "publisher" if publisher_side else "subscriber",
                self._events["hf"],
            )
        return False

    def _check_backlog(self, bound: BacklogBound) -> None:
        """Sample each subscriber connection's writability; cut those whose queue may pass the bound."""
        if not self._sub_fds:
            return
        try:
            forwarded = self._counters()[7]
        except (TransportError, ClosedError):
            return
        writable = _writable(self._sub_fds)
        slow = bound.check(forwarded, writable)
        if slow:
            cut = _cut_connections(slow, self._local_addresses())
            self._faults.log(
                logging.WARNING,
                "slow-subscriber",
                "cut %d subscriber(s) that took nothing while "
                "more than %d bytes (max_queued_bytes) could queue for them; they reconnect and "
                "count what they missed as gaps (%d cut so far)",
                cut,
                bound.max_bytes,
                bound.cut,
            )

    def _publish_stats(self, sock: zmq.Socket[bytes], codec: Codec, seq: int) -> None:
        try:
            stats = self.statistics()
        except (TransportError, ClosedError):
            return
        msg = ProcessingMessage(STATS_TOPIC, stats.as_dict(), MessageMetadata(source_component="forwarder"))
        head = codec.frame_head(msg)
        sock.send(head + codec.encode(msg, head, self._id, seq), zmq.NOBLOCK)

    def statistics(self, timeout: float = 2.0) -> ForwarderStatistics:
        """Read the proxy's counters (thread-safe). Raises :class:`ClosedError` once stopped."""
        values = self._counters(timeout)
        ev = self._events
        return ForwarderStatistics(
            frames_in=values[0],
            bytes_in=values[1],
            frames_out=values[6],
            bytes_out=values[7],
            subscription_frames=values[4],
            publisher_connects=ev["pc"],
            publisher_disconnects=ev["pd"],
            subscriber_connects=ev["sc"],
            subscriber_disconnects=ev["sd"],
            handshake_failures=ev["hf"],
            uptime=time.monotonic() - self._started_at,
            refused={
                **({} if self._zap_domain is None else zap_handler().refused(self._zap_domain)),
                **({} if self.guard is None else self.guard.refused),
            },
            slow_subscribers_cut=0 if self.backlog is None else self.backlog.cut,
        )

    def _counters(self, timeout: float = 2.0) -> list[int]:
        """The proxy's eight counters (zmq_proxy_steerable's STATISTICS)."""
        with self._lock:
            control = self._control
            if control is None or self._stop.is_set() or self._proxy_error is not None:
                raise ClosedError("forwarder is not running")
            with mapped_errors("forwarder statistics"):
                control.send(b"STATISTICS")
                if not control.poll(int(timeout * 1000)):
                    raise TransportError("forwarder did not answer STATISTICS in time")
                return [struct.unpack("=Q", f)[0] for f in control.recv_multipart()]

    def stop(self, timeout: float = 5.0) -> None:
        """Stop forwarding and close the sockets. Idempotent; returns within ``timeout`` seconds.

        The sockets get their linger to flush; the watch thread ends once
        libzmq has stopped both monitors (a daemon thread, so a peer that
        never drains cannot keep the process alive).
        """
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            control = self._control
            if control is not None:
                try:
                    control.send(b"TERMINATE", zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if control is not None:
            control.close(0)
        self._forget_domain()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        log.info("forwarder stopped")

    def __enter__(self) -> Forwarder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_forwarder(
    pub_endpoint: str | None = None,
    sub_endpoint: str | None = None,
    *,
    socket_config: SocketConfig | None = None,
    stats_interval: float | None = 5.0,
    log_interval: float | None = None,
    ready: threading.Event | None = None,
    keys: KeyRing | None = None,
    insecure: bool | None = None,
    max_connections: int = 10_000,
    max_queued_bytes: int | None = DEFAULT_MAX_QUEUED_BYTES,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
) -> ForwarderStatistics | None:
    """Run a forwarder in this process until SIGINT or SIGTERM; return its last counters.

    Must be called from the main thread (it installs signal handlers).
    ``log_interval`` logs the counters at INFO every so many seconds. SIGHUP
    reloads the allow-list of a forwarder with keys. The process's open-file
    limit is raised to its hard limit first: each connection holds a file.
    """
    _raise_file_limit()
    stop = threading.Event()
    reload = threading.Event()
    wake = threading.Event()

    def on_stop(*_: object) -> None:
        stop.set()
        wake.set()

    def on_hup(*_: object) -> None:
        reload.set()
        wake.set()

    previous = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    fwd = Forwarder(
        pub_endpoint,
        sub_endpoint,
        socket_config=socket_config,
        stats_interval=stats_interval,
        keys=keys,
        insecure=insecure,
        max_connections=max_connections,
        max_queued_bytes=max_queued_bytes,
        metrics_port=metrics_port,
        metrics_addr=metrics_addr,
    )
    last: ForwarderStatistics | None = None
    next_log = time.monotonic() + (log_interval or 0)
    try:
        fwd.start()
        if ready is not None:
            ready.set()
        while not stop.is_set():
            wake.wait(0.5)
            wake.clear()
            if reload.is_set():
                reload.clear()
                try:
                    fwd.reload_keys()
                except ZmqbusError as exc:
                    log.error("SIGHUP: the allow-list was not reloaded: %s", exc)
            if log_interval and time.monotonic() >= next_log:
                next_log += log_interval
                last = fwd.statistics()
                log.info("forwarder: %s", last)
        last = fwd.statistics()
    finally:
        fwd.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return last


def _raise_file_limit() -> None:
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


def _writable(fds: set[int]) -> dict[int, bool]:
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


def _cut_connections(fds: list[int], local: set[object]) -> int:
    """Shut down these accepted connections (libzmq owns the descriptors: it sees the peer leave and
    closes them itself). A descriptor whose local address is not one of ``local`` (closed and reused
    meanwhile) is left alone. Returns how many were cut."""
    import socket

    cut = 0
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
            cut += 1
        except OSError:
            pass
        finally:
            dup.close()
    return cut
