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
import threading
import time
from typing import Any

from ..core import config
from ..core.backlog import BacklogBound
from ..core.connections import ConnectionCounts, ConnectionEvent, EventKind
from ..core.errors import ClosedError, SecurityError, TransportError, ZmqbusError
from ..core.guard import PolicyGuard
from ..core.ids import new_id
from ..core.policy import Policy, SubscriptionLimits
from ..core.ratelog import RateLimitedLog
from ..core.security import KeyRing, check_endpoint
from ..core.snapshots import ForwarderStatistics, Sample
from ..io.proxy import ProxyCounters, ProxySockets, Watch, cut_connections, give_back_memory, tcp_counters, writable
from ..io.security import config_keys, config_policy, reread_keys, zap_handler
from ..io.transport import SocketConfig
from .forwarder_stats import DEFAULT_MAX_QUEUED_BYTES, QUERY_TOPIC, STATS_TOPIC, StatsPublisher
from .metrics import serve_metrics
from .samples import forwarder_samples

__all__ = ["Forwarder", "ForwarderStatistics", "STATS_TOPIC", "QUERY_TOPIC"]

log = logging.getLogger(__name__)

_BACKLOG_EVERY = 0.2  # seconds between samples of the subscribers' connections
_TRIM_AFTER = 64 * 1024  # prefix bytes freed by connections gone, worth giving memory back for


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
    :param subscription_limits: bounds on subscriptions (granted per
        connection and in all; asked in all, granted or refused, past which the
        connection holding the most is cut: :class:`SubscriptionLimits`). Default: on, with the
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
        self._refused: dict[str, int] = {}  # by reason, from the monitors (the watch thread writes)
        self._refused_lock = threading.Lock()
        self._metrics: Any = None
        self.keys = keys if keys is not None else config_keys(server=False)
        self.policy = policy if policy is not None else config_policy()
        if self.policy is not None and self.keys is None:
            raise SecurityError("a policy names keys: it needs CURVE keys (--keys) to know who is who")
        if subscription_limits is None:
            subscription_limits = self.keys is not None
        if isinstance(subscription_limits, SubscriptionLimits):
            limits: SubscriptionLimits | None = subscription_limits
        else:
            limits = SubscriptionLimits() if subscription_limits or self.policy is not None else None
        #: The policy and limits the guarded proxy enforces (None: libzmq's C proxy, nothing checked).
        self.policy_guard: PolicyGuard | None = None if limits is None else PolicyGuard(self.policy, limits)
        if self.policy_guard is not None and self.keys is not None:
            self.policy_guard.set_members(self.keys.allowed)  # presence bound to the key that sends it
        self.max_connections = max_connections
        self.backlog = BacklogBound(max_queued_bytes) if max_queued_bytes else None
        self.insecure = config.insecure(insecure)
        self.pub_endpoint = config.pub_endpoint(pub_endpoint)
        self.sub_endpoint = config.sub_endpoint(sub_endpoint)
        self.socket_config = socket_config or SocketConfig()
        self.stats_interval = stats_interval
        self.connections = ConnectionCounts()
        self._id = "forwarder-" + new_id()
        self._zap_domain: str | None = None
        self._proxy: ProxySockets | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started_at = 0.0
        self._proxy_error: BaseException | None = None
        self._faults = RateLimitedLog(log)
        self._stats = StatsPublisher(self.statistics, self._id, stats_interval)

    def start(self) -> Forwarder:
        """Bind both endpoints and start forwarding. Returns ``self``."""
        if self._proxy is not None:
            raise ZmqbusError("forwarder already started")
        if self._stop.is_set():
            raise ClosedError("forwarder was stopped")
        for endpoint in (self.pub_endpoint, self.sub_endpoint):
            check_endpoint(endpoint, self.keys, self.insecure, "bind the forwarder at")
        if self.metrics_port is not None and self._metrics is None:
            # Before the bus binds: once a client gets through, the metrics are up too.
            self._metrics = serve_metrics(self.metrics_port, self, addr=self.metrics_addr)
        # Every client is admitted by the ZAP handler, registered before the first bind (a server with
        # ZAP_ENFORCE_DOMAIN and no handler refuses everyone): the allow-list with keys, the connection
        # limit always.
        self._zap_domain = zap_handler().register(
            None if self.keys is None else dict(self.keys.allowed), "forwarder", self._admit
        )
        proxy = ProxySockets(self._id, self.socket_config, guarded=self.policy_guard is not None)
        try:
            proxy.bind(self.pub_endpoint, self.sub_endpoint, self.keys, self._zap_domain)
            # guarded: a tick every 20 ms, to catch a subscription flood while libzmq reads ahead of the proxy
            watch = Watch(proxy, QUERY_TOPIC, tick=0.1 if self.policy_guard is None else 0.02)
        except BaseException:
            self._release()
            raise
        self._proxy = proxy
        self._started_at = time.monotonic()
        self._threads = [
            threading.Thread(target=self._run_proxy, args=(proxy,), name="zmqbus-proxy", daemon=True),
            threading.Thread(
                target=watch.run,
                args=(self._on_event, self._stats.answer, self._on_tick, self._stop),
                name="zmqbus-forwarder-watch",
                daemon=True,
            ),
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
        if self.connections.admit(self.max_connections):
            return None
        self._faults.log(
            logging.WARNING,
            "connection-limit",
            "connection limit reached (%d live, max_connections %d): refusing new clients until some disconnect",
            self.connections.live(),
            self.max_connections,
        )
        return "connection_limit"

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
        if self.policy_guard is not None:
            self.policy_guard.set_members(self.keys.allowed)
        if policy is not None and self.policy_guard is not None:
            self.policy = policy
            self.policy_guard.replace_policy(policy)
        log.info(
            "allow-list reloaded from %s: %d key(s); added %s, removed %s",
            keys.allowed_dir,
            len(self.keys.allowed),
            added or "none",
            removed or "none",
        )
        if removed:
            cut = len(cut_connections(list(self.connections.live_fds), self._local_addresses()))
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

    def _run_proxy(self, proxy: ProxySockets) -> None:
        try:
            proxy.run(self.policy_guard, self._cut_flood)
        except BaseException as exc:  # reported by stop() and statistics()
            self._proxy_error = exc
            log.error("forwarder proxy stopped: %s", exc)

    # -- the watch thread's callbacks ------------------------------------------

    def _on_event(self, event: ConnectionEvent) -> None:
        self.connections.apply(event)
        side = "publisher" if event.publisher_side else "subscriber"
        if event.kind is EventKind.ACCEPTED and self.policy_guard is not None and not event.publisher_side:
            self.policy_guard.accepted(event.fd)
        if event.kind is EventKind.DISCONNECTED:
            if self.policy_guard is not None and not event.publisher_side:
                self._freed += self.policy_guard.closed(event.fd)
                if self._freed >= _TRIM_AFTER:  # a second after the last such close: libzmq has freed it
                    self._trim_at = time.monotonic() + 1.0
            log.debug("a %s disconnected", side)
        elif event.kind is EventKind.HANDSHAKE_FAILED:  # AUTH_FAILED: the ZAP handler logged who and why
            if event.reason:
                with self._refused_lock:
                    self._refused[event.reason] = self._refused.get(event.reason, 0) + 1
            self._faults.log(
                logging.WARNING,
                "handshake",
                "handshake failed on the %s side (garbage bytes, a non-ZMTP peer, or a client without the right "
                "CURVE keys?): %d so far",
                side,
                self.connections.handshake_failures,
            )

    def _handshake_refusals(self) -> dict[str, int]:
        """Refusals seen in the handshake itself (``no_key``), by reason."""
        with self._refused_lock:
            return dict(self._refused)

    def _cut_flood(self, fds: list[int]) -> None:
        """Cut the connections a subscription flood named (the guard logged why); tell it which could not be."""
        assert self.policy_guard is not None
        cut = cut_connections(fds, self._local_addresses())
        if len(cut) < len(fds):
            self.policy_guard.not_cut([fd for fd in fds if fd not in cut])

    _trim_at = 0.0
    _freed = 0  # prefix bytes freed by connections gone since the last time memory was given back

    def _received(self) -> dict[int, int]:
        """Bytes libzmq has read from each subscriber connection (tcp only: the kernel's counts)."""
        return {fd: c[1] for fd, c in tcp_counters(self.connections.subscriber_fds).items()}

    def _on_tick(self) -> bytes | None:
        guard = self.policy_guard
        if guard is not None:
            guard.sample_unread(self._received)
            if guard.pending_cuts:
                self._cut_flood(guard.take_cuts())
        if self.backlog is not None:
            self._check_backlog(self.backlog)
        if self._trim_at and time.monotonic() >= self._trim_at:
            self._trim_at, self._freed = 0.0, 0
            give_back_memory()
        return self._stats.tick()

    def _check_backlog(self, bound: BacklogBound) -> None:
        """Now and then, sample each subscriber connection's writability; cut those whose queue may pass
        the bound."""
        now = time.monotonic()
        if now < self._next_backlog or not self.connections.subscriber_fds:
            return
        self._next_backlog = now + _BACKLOG_EVERY
        try:
            forwarded = self._counters().backend_out_bytes
        except (TransportError, ClosedError):
            return
        fds = set(self.connections.subscriber_fds)
        acked = {fd: counters[0] for fd, counters in tcp_counters(fds).items()}
        slow = bound.check(forwarded, writable(fds), acked)
        if slow:
            cut = len(cut_connections(slow, self._local_addresses()))
            self._faults.log(
                logging.WARNING,
                "slow-subscriber",
                "cut %d subscriber(s) that took nothing while more than %d bytes (max_queued_bytes) could queue "
                "for them; they reconnect and count what they missed as gaps (%d cut so far)",
                cut,
                bound.max_bytes,
                bound.cut,
            )

    _next_backlog = 0.0

    # -- statistics and life cycle -------------------------------------------

    def statistics(self, timeout: float = 2.0) -> ForwarderStatistics:
        """Read the proxy's counters (thread-safe). Raises :class:`ClosedError` once stopped."""
        values, c = self._counters(timeout), self.connections
        return ForwarderStatistics(
            frames_in=values.frontend_in_frames,
            bytes_in=values.frontend_in_bytes,
            frames_out=values.backend_out_frames,
            bytes_out=values.backend_out_bytes,
            subscription_frames=values.backend_in_frames,
            publisher_connects=c.publisher_connects,
            publisher_disconnects=c.publisher_disconnects,
            subscriber_connects=c.subscriber_connects,
            subscriber_disconnects=c.subscriber_disconnects,
            handshake_failures=c.handshake_failures,
            uptime=time.monotonic() - self._started_at,
            refused={
                **({} if self._zap_domain is None else zap_handler().refused(self._zap_domain)),
                **({} if self.policy_guard is None else self.policy_guard.refused),
                **self._handshake_refusals(),
            },
            slow_subscribers_cut=0 if self.backlog is None else self.backlog.cut,
        )

    def metric_samples(self) -> list[Sample]:
        """This forwarder's metrics (:mod:`zmqbus.bus.metrics`; thread-safe). Empty once stopped."""
        try:
            return forwarder_samples(self.statistics())
        except ZmqbusError:
            return []

    def _counters(self, timeout: float = 2.0) -> ProxyCounters:
        proxy = self._proxy
        if proxy is None or self._stop.is_set() or self._proxy_error is not None:
            raise ClosedError("forwarder is not running")
        return proxy.counters(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop forwarding and close the sockets. Idempotent; returns within ``timeout`` seconds.

        The sockets get their linger to flush; the watch thread ends once
        libzmq has stopped both monitors (a daemon thread, so a peer that
        never drains cannot keep the process alive).
        """
        if self._stop.is_set():
            return
        self._stop.set()
        if self._proxy is not None:
            try:
                self._proxy.terminate()
            except ZmqbusError:
                pass
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._release()
        if self._proxy is not None:  # one that never started says nothing more than its error
            log.info("forwarder stopped")

    def _release(self) -> None:
        """Close what start() made besides the proxy's own sockets: control, ZAP domain, metrics."""
        if self._proxy is not None:
            self._proxy.close()
        if self._zap_domain is not None:
            zap_handler().unregister(self._zap_domain)
            self._zap_domain = None
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def __enter__(self) -> Forwarder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
