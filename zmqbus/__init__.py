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
    "core.workflow": ("ComponentState", "ComponentContext", "InvalidTransition"),
    "core.errors": ("ZmqbusError", "TopicError", "ProtocolError", "EncodeError", "MessageTooLarge", "DecodeError",
                    "TransportError", "BusTimeout", "ClosedError", "RequestError", "RemoteError", "NoResponder",
                    "RequestTimeout", "RetryableError"),
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
    from .bus.broker import BrokerStatistics, MessageBroker
    from .bus.forwarder import Forwarder, ForwarderStatistics, run_forwarder
    from .core.codec import DEFAULT_MAX_MESSAGE_SIZE, PROTOCOL_VERSION
    from .core.errors import (
        BusTimeout,
        ClosedError,
        DecodeError,
        EncodeError,
        MessageTooLarge,
        NoResponder,
        ProtocolError,
        RemoteError,
        RequestError,
        RequestTimeout,
        RetryableError,
        TopicError,
        TransportError,
        ZmqbusError,
    )
    from .core.message import MessageMetadata, ProcessingMessage, register_message_types
    from .core.retry import NO_RETRY, RetryPolicy
    from .core.topics import validate_topic
    from .core.workflow import ComponentContext, ComponentState, InvalidTransition
    from .framework.component import Component, Handler, Manager, Processor, on, service
