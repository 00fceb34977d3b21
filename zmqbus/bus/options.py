"""The settings of a :class:`~zmqbus.MessageBroker`, in one frozen dataclass.

``MessageBroker(pub, sub, name=..., heartbeat=..., ...)`` takes each setting
as a keyword argument, as before; ``MessageBroker(pub, sub,
options=BrokerOptions(...))`` takes them all at once (a component runner, a
test, a configuration file). Each field's meaning is documented here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TypedDict

from ..core import config
from ..core.codec import DEFAULT_MAX_MESSAGE_SIZE
from ..core.errors import SecurityError
from ..core.policy import Policy
from ..core.security import KeyRing
from ..io.security import config_keys, config_policy
from ..io.transport import SocketConfig
from .port import RpcOptions

__all__ = ["BrokerOptions", "BrokerSettings"]


@dataclass(frozen=True, kw_only=True)
class BrokerOptions:
    """How a client publishes, receives, serves and secures itself (every field has a default).

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
    :param history: recovery (PROTOCOL.md section 14), on by default: this client keeps what it publishes
        (within ``history_messages``, ``history_bytes`` and ``history_age`` seconds, oldest evicted first)
        and serves it to subscribers that missed some, and it fetches what it misses itself. Default:
        ``$ZMQBUS_HISTORY`` (``0`` turns it off), else on.
    :param history_messages: messages kept, at most (all topics together).
    :param history_bytes: bytes of messages kept, at most (all topics together).
    :param history_age: seconds a message is kept, at most.
    :param holdback: seconds a subscriber holds later messages of a stream while it fetches missing ones;
        what has not come by then is counted lost.
    :param resume_file: where this subscriber records, before each message is handled, how far it got in
        each stream; a process restarted with the same file fetches what was published meanwhile (within
        the publishers' history) and never handles a message twice. ``zmqbus run`` and ``zmqbus up`` give
        each component replica one under ``$ZMQBUS_STATE_DIR``. Default: none.
    :param batching: send several messages of one topic in one frame when more than one is published in
        the same event-loop turn (PROTOCOL.md section 2.4; :mod:`zmqbus.bus.batching`): fewer, larger
        frames, no added wait. Every receiver on the bus must understand batch frames (zmqbus from
        protocol revision 2.2 on; another must implement section 2.4), so it is off unless asked:
        default ``$ZMQBUS_BATCHING`` (``1``), else off.
    :param batch_messages: messages in one batch frame, at most (2 to 65535).
    :param redundant_skew: on a redundant bus (several forwarders), seconds a
        missing number may wait for the other forwarder's copy before it is
        counted lost.
    :param metrics_port: serve Prometheus metrics of this client at
        ``http://metrics_addr:metrics_port/metrics`` while it runs (needs
        ``zmqbus[metrics]``; :mod:`zmqbus.bus.metrics`). Default: none.
    :param metrics_addr: the address that serves them (default loopback).
    :param replica: which replica of its component this client is (``zmqbus run``/``up`` number them
        from 1): announced in its presence and used in its metric labels (``name``, ``replica``), which
        so stay the same across restarts. Default: 1.
    """

    name: str = ""
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    hwm: int = 100_000
    publish_timeout: float = 10.0
    linger: float = 1.0
    rpc_bind: str | None = None
    rpc_advertise: str | None = None
    heartbeat: float = 1.0
    liveness: int = 3
    reply_cache_size: int = 10_000
    max_concurrency: int = 100
    max_queue: int = 1000
    max_queued_bytes: int = 64 * 1024 * 1024
    max_pending_handlers: int = 1000
    keys: KeyRing | None = None
    insecure: bool | None = None
    policy: Policy | None = None
    history: bool | None = None
    history_messages: int = 100_000
    history_bytes: int = 64 * 1024 * 1024
    history_age: float = 60.0
    holdback: float = 1.0
    resume_file: str | None = None
    batching: bool | None = None
    batch_messages: int = 64
    redundant_skew: float = 2.0
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    replica: int = 1

    def socket_config(self) -> SocketConfig:
        return SocketConfig(hwm=self.hwm, linger=self.linger, max_message_size=self.max_message_size)

    def security(self) -> tuple[KeyRing | None, bool, Policy | None]:
        """Keys, insecure and policy, each from the environment where not given; raise :class:`SecurityError`
        for a policy without keys (it names keys)."""
        keys = self.keys if self.keys is not None else config_keys()
        policy = self.policy if self.policy is not None else config_policy()
        if policy is not None and keys is None:
            raise SecurityError("a policy names keys: it needs CURVE keys (keys=, $ZMQBUS_KEYS)")
        return keys, config.insecure(self.insecure), policy

    def rpc(self, insecure: bool) -> RpcOptions:
        """The responder's settings (bind and advertise from the environment where not given)."""
        return RpcOptions(
            config.rpc_bind(self.rpc_bind),
            config.rpc_advertise(self.rpc_advertise),
            self.heartbeat,
            self.liveness,
            self.reply_cache_size,
            self.max_concurrency,
            insecure,
            self.max_queue,
            self.max_queued_bytes,
            self.replica,
        )


class BrokerSettings(TypedDict, total=False):
    """The keyword arguments ``MessageBroker(...)`` takes: :class:`BrokerOptions`'s fields, for type checkers."""

    name: str
    max_message_size: int
    hwm: int
    publish_timeout: float
    linger: float
    rpc_bind: str | None
    rpc_advertise: str | None
    heartbeat: float
    liveness: int
    reply_cache_size: int
    max_concurrency: int
    max_queue: int
    max_queued_bytes: int
    max_pending_handlers: int
    keys: KeyRing | None
    insecure: bool | None
    policy: Policy | None
    history: bool | None
    history_messages: int
    history_bytes: int
    history_age: float
    holdback: float
    resume_file: str | None
    batching: bool | None
    batch_messages: int
    redundant_skew: float
    metrics_port: int | None
    metrics_addr: str
    replica: int


if set(BrokerSettings.__annotations__) != {f.name for f in fields(BrokerOptions)}:  # pragma: no cover
    raise ImportError("options: BrokerSettings and BrokerOptions name different settings")
