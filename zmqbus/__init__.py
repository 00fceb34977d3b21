"""zmqbus: a brokerless ZeroMQ message bus for components that talk only through messages.

What users write code with is exported here (see README.md and
docs/PROTOCOL.md); internals stay in their modules. Names are imported
lazily, on first use, so ``import zmqbus.topics`` (the pure core) loads
neither pyzmq nor asyncio.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    # the client and the forwarder
    "MessageBroker": "broker", "BrokerStatistics": "broker",
    "Forwarder": "forwarder", "ForwarderStatistics": "forwarder", "run_forwarder": "forwarder",
    # messages
    "ProcessingMessage": "message", "MessageMetadata": "message", "register_message_types": "message",
    "PROTOCOL_VERSION": "codec", "DEFAULT_MAX_MESSAGE_SIZE": "codec", "validate_topic": "topics",
    # requests
    "RetryPolicy": "retry", "NO_RETRY": "retry",
    # components
    "Component": "component", "Manager": "component", "Handler": "component", "Processor": "component",
    "on": "component", "service": "component",
    "ComponentState": "workflow", "ComponentContext": "workflow", "InvalidTransition": "workflow",
    # errors
    "ZmqbusError": "errors", "TopicError": "errors", "ProtocolError": "errors", "EncodeError": "errors",
    "MessageTooLarge": "errors", "DecodeError": "errors", "TransportError": "errors", "BusTimeout": "errors",
    "ClosedError": "errors", "RequestError": "errors", "RemoteError": "errors", "NoResponder": "errors",
    "RequestTimeout": "errors", "RetryableError": "errors",
}

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
    from .broker import BrokerStatistics, MessageBroker
    from .codec import DEFAULT_MAX_MESSAGE_SIZE, PROTOCOL_VERSION
    from .component import Component, Handler, Manager, Processor, on, service
    from .errors import (
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
    from .forwarder import Forwarder, ForwarderStatistics, run_forwarder
    from .message import MessageMetadata, ProcessingMessage, register_message_types
    from .retry import NO_RETRY, RetryPolicy
    from .topics import validate_topic
    from .workflow import ComponentContext, ComponentState, InvalidTransition
