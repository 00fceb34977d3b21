"""The one exception tree of zmqbus.

Every error zmqbus raises derives from :class:`ZmqbusError`; ``zmq.ZMQError``
and msgpack's exceptions are translated at the boundary where they occur and
never reach a user::

    ZmqbusError
    ├── TopicError            an invalid topic or subscription pattern (also ValueError)
    ├── ProtocolError         a message that breaks docs/PROTOCOL.md
    │   ├── EncodeError       we cannot put this on the wire (our side's fault)
    │   │   └── MessageTooLarge
    │   └── DecodeError       a peer sent something we cannot read (their side's fault)
    ├── TransportError        a socket-level failure (bind, connect, closed context)
    ├── BusTimeout            a wait ran out of time (also TimeoutError)
    └── ClosedError           the client or forwarder is already closed

The split between :class:`EncodeError` and :class:`DecodeError` mirrors h11's
Local/RemoteProtocolError: the first means "fix your code", the second
"a peer misbehaved; it was counted and dropped".
"""
from __future__ import annotations


class ZmqbusError(Exception):
    """Root of every exception raised by zmqbus."""


class TopicError(ZmqbusError, ValueError):
    """A topic or pattern does not follow the dotted-word grammar."""


class ProtocolError(ZmqbusError):
    """A message does not follow the wire protocol."""


class EncodeError(ProtocolError):
    """A message cannot be encoded (unsupported content type, bad field)."""


class MessageTooLarge(EncodeError):
    """An encoded message exceeds the configured ``max_message_size``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"encoded message is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class DecodeError(ProtocolError):
    """Frames received from a peer cannot be decoded.

    ``reason`` is a short stable token (``"frames"``, ``"msgpack"``,
    ``"version"``, ``"field"``, ``"topic"``, ``"size"``) used as the counter key
    in statistics; the message text gives the detail.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TransportError(ZmqbusError):
    """A socket operation failed (bad endpoint, address in use, context gone)."""


class BusTimeout(ZmqbusError, TimeoutError):
    """A bounded wait ran out (for example ``ready()`` or a blocked publish)."""


class ClosedError(ZmqbusError):
    """The object was used after ``close()``."""
