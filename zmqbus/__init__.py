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
    "bus.broker": ("MessageBroker", "BrokerStatistics"),
    "bus.forwarder": ("Forwarder", "ForwarderStatistics", "run_forwarder"),
    "core.message": ("ProcessingMessage", "MessageMetadata", "register_message_types"),
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
    ),
    "core.security": ("KeyRing",),
    "core.policy": ("SubscriptionLimits",),
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


if TYPE_CHECKING:  # what type checkers and IDEs see
    from .bus.broker import BrokerStatistics as BrokerStatistics
    from .bus.broker import MessageBroker as MessageBroker
    from .bus.forwarder import (
        Forwarder as Forwarder,
    )
    from .bus.forwarder import (
        ForwarderStatistics as ForwarderStatistics,
    )
    from .bus.forwarder import (
        run_forwarder as run_forwarder,
    )
    from .core.codec import DEFAULT_MAX_MESSAGE_SIZE as DEFAULT_MAX_MESSAGE_SIZE
    from .core.codec import PROTOCOL_VERSION as PROTOCOL_VERSION
    from .core.errors import (
        AuthenticationRefused as AuthenticationRefused,
    )
    from .core.errors import (
        BusTimeout as BusTimeout,
    )
    from .core.errors import (
        ClosedError as ClosedError,
    )
    from .core.errors import (
        DecodeError as DecodeError,
    )
    from .core.errors import (
        EncodeError as EncodeError,
    )
    from .core.errors import (
        InsecureEndpoint as InsecureEndpoint,
    )
    from .core.errors import (
        MessageTooLarge as MessageTooLarge,
    )
    from .core.errors import (
        NoResponder as NoResponder,
    )
    from .core.errors import (
        ProtocolError as ProtocolError,
    )
    from .core.errors import (
        RemoteError as RemoteError,
    )
    from .core.errors import (
        RequestError as RequestError,
    )
    from .core.errors import (
        RequestTimeout as RequestTimeout,
    )
    from .core.errors import (
        RetryableError as RetryableError,
    )
    from .core.errors import (
        SecurityError as SecurityError,
    )
    from .core.errors import (
        TopicError as TopicError,
    )
    from .core.errors import (
        TransportError as TransportError,
    )
    from .core.errors import (
        ZmqbusError as ZmqbusError,
    )
    from .core.message import (
        MessageMetadata as MessageMetadata,
    )
    from .core.message import (
        ProcessingMessage as ProcessingMessage,
    )
    from .core.message import (
        register_message_types as register_message_types,
    )
    from .core.policy import SubscriptionLimits as SubscriptionLimits
    from .core.retry import NO_RETRY as NO_RETRY
    from .core.retry import RetryPolicy as RetryPolicy
    from .core.security import KeyRing as KeyRing
    from .core.topics import validate_topic as validate_topic
    from .core.workflow import (
        ComponentContext as ComponentContext,
    )
    from .core.workflow import (
        ComponentState as ComponentState,
    )
    from .core.workflow import (
        InvalidTransition as InvalidTransition,
    )
    from .core.workflow import (
        UnknownState as UnknownState,
    )
    from .framework.component import (
        Component as Component,
    )
    from .framework.component import (
        Handler as Handler,
    )
    from .framework.component import (
        Manager as Manager,
    )
    from .framework.component import (
        Processor as Processor,
    )
    from .framework.component import (
        on as on,
    )
    from .framework.component import (
        service as service,
    )
    from .io.security import keygen as keygen
    from .io.security import load_keys as load_keys
    from .io.security import load_policy as load_policy
