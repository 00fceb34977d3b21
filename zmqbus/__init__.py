"""zmqbus: a brokerless ZeroMQ message bus for components that talk only through messages.

The public API is re-exported here; see README.md and docs/PROTOCOL.md.
"""
from __future__ import annotations

from .broker import BrokerStatistics, MessageBroker, Subscription
from .codec import DEFAULT_MAX_MESSAGE_SIZE, PROTOCOL_VERSION, Codec
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
from .topics import Pattern, compile_pattern, validate_topic
from .transport import SocketConfig

__version__ = "0.1.0"

__all__ = [
    "BrokerStatistics", "BusTimeout", "ClosedError", "Codec", "DEFAULT_MAX_MESSAGE_SIZE", "DecodeError",
    "EncodeError", "Forwarder", "ForwarderStatistics", "MessageBroker", "MessageMetadata",
    "MessageTooLarge", "NO_RETRY", "NoResponder", "PROTOCOL_VERSION", "RemoteError", "RequestError",
    "RequestTimeout", "RetryPolicy", "RetryableError", "Pattern", "ProcessingMessage", "ProtocolError",
    "SocketConfig", "Subscription", "TopicError", "TransportError", "ZmqbusError", "compile_pattern",
    "register_message_types", "run_forwarder", "validate_topic", "__version__",
]
