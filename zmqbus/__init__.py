"""zmqbus: a brokerless ZeroMQ message bus for components that talk only through messages.

What users write code with is exported here (see README.md and
docs/PROTOCOL.md); internals stay in their modules. Names are imported
lazily, on first use, so ``import zmqbus.core.topics`` (the pure core) loads
neither pyzmq nor asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# module -> the names it exports here
_MODULES = {
    "bus.broker": ("MessageBroker",),
    "bus.options": ("BrokerOptions",),
    "bus.forwarder": ("Forwarder",),
    "bus.forwarding": ("run_forwarder",),
    "bus.metrics": ("serve_metrics",),
    "bus.tracing": ("enable_tracing",),
    "core.snapshots": ("BrokerStatistics", "ForwarderStatistics"),
    "core.message": ("ProcessingMessage", "MessageMetadata", "register_message_types", "time_left"),
    "core.codec": ("PROTOCOL_VERSION", "DEFAULT_MAX_MESSAGE_SIZE"),
    "core.topics": ("validate_topic",),
    "core.retry": ("RetryPolicy", "NO_RETRY"),
    "framework.component": ("Component", "Manager", "Handler", "Processor", "on", "service"),
    "core.workflow": ("ComponentState", "ComponentContext", "InvalidTransition", "UnknownState"),
    "core.errors": (
        "ZmqbusError",
        "TopicError",
        "ProtocolError",
        "EncodeError",
        "MessageTooLarge",
        "DecodeError",
        "TransportError",
        "BusTimeout",
        "ClosedError",
        "RequestError",
        "RemoteError",
        "NoResponder",
        "RequestTimeout",
        "RetryableError",
        "SecurityError",
        "InsecureEndpoint",
        "AuthenticationRefused",
        "Forbidden",
    ),
    "core.security": ("KeyRing",),
    "core.policy": ("Policy", "SubscriptionLimits"),
    "io.security": ("load_keys", "keygen", "load_policy"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zmqbus' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what type checkers and IDEs see (explicit re-exports: `import X as X`)
    from .bus.broker import MessageBroker as MessageBroker
    from .bus.forwarder import Forwarder as Forwarder
    from .bus.forwarding import run_forwarder as run_forwarder
    from .bus.metrics import serve_metrics as serve_metrics
    from .bus.options import BrokerOptions as BrokerOptions
    from .bus.tracing import enable_tracing as enable_tracing
    from .core.codec import DEFAULT_MAX_MESSAGE_SIZE as DEFAULT_MAX_MESSAGE_SIZE, PROTOCOL_VERSION as PROTOCOL_VERSION
    from .core.errors import (
        AuthenticationRefused as AuthenticationRefused,
        BusTimeout as BusTimeout,
        ClosedError as ClosedError,
        DecodeError as DecodeError,
        EncodeError as EncodeError,
        Forbidden as Forbidden,
        InsecureEndpoint as InsecureEndpoint,
        MessageTooLarge as MessageTooLarge,
        NoResponder as NoResponder,
        ProtocolError as ProtocolError,
        RemoteError as RemoteError,
        RequestError as RequestError,
        RequestTimeout as RequestTimeout,
        RetryableError as RetryableError,
        SecurityError as SecurityError,
        TopicError as TopicError,
        TransportError as TransportError,
        ZmqbusError as ZmqbusError,
    )
    from .core.message import (
        MessageMetadata as MessageMetadata,
        ProcessingMessage as ProcessingMessage,
        register_message_types as register_message_types,
        time_left as time_left,
    )
    from .core.policy import Policy as Policy, SubscriptionLimits as SubscriptionLimits
    from .core.retry import NO_RETRY as NO_RETRY, RetryPolicy as RetryPolicy
    from .core.security import KeyRing as KeyRing
    from .core.snapshots import BrokerStatistics as BrokerStatistics, ForwarderStatistics as ForwarderStatistics
    from .core.topics import validate_topic as validate_topic
    from .core.workflow import (
        ComponentContext as ComponentContext,
        ComponentState as ComponentState,
        InvalidTransition as InvalidTransition,
        UnknownState as UnknownState,
    )
    from .framework.component import (
        Component as Component,
        Handler as Handler,
        Manager as Manager,
        Processor as Processor,
        on as on,
        service as service,
    )
    from .io.security import keygen as keygen, load_keys as load_keys, load_policy as load_policy
