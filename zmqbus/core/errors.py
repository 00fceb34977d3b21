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
    ├── ClosedError           the client or forwarder is already closed
    ├── SecurityError         keys missing, unreadable or malformed (docs/SECURITY.md)
    │   ├── InsecureEndpoint  a non-loopback tcp endpoint without keys (fail closed)
    │   └── AuthenticationRefused  the forwarder refused this member's key, or it has the wrong one
    ├── RequestError          a request produced no reply
    │   ├── RemoteError       the responder's handler raised (type, message, correlation id)
    │   ├── NoResponder       no live instance of the service
    │   └── RequestTimeout    deadline or tries ran out (also TimeoutError)
    └── InvalidTransition     a workflow state change the state machine does not allow
                              (defined in zmqbus.core.workflow; also ValueError)

    RetryableError            raise it in a handler: the work may succeed if tried again

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


class RequestError(ZmqbusError):
    """A request did not produce a reply."""


class RemoteError(RequestError):
    """The responder answered with an error (its handler raised, or it refused the request).

    ``error_type`` is the remote exception's class name, ``code`` one of
    ``handler_error``, ``malformed``, ``unknown_service``, ``expired``,
    ``shutting_down``.
    """

    def __init__(
        self,
        error_type: str,
        message: str,
        correlation_id: str,
        code: str = "handler_error",
        service: str = "",
        *,
        retryable: bool = False,
        reported: bool = False,
    ) -> None:
        super().__init__(f"{service or 'service'} raised {error_type}: {message} (correlation id {correlation_id})")
        self.error_type = error_type
        self.remote_message = message
        self.correlation_id = correlation_id
        self.code = code
        self.service = service
        #: What the responder said: True when another instance might succeed.
        self.retryable = retryable
        #: The responder already reported it to the error handler (a zmqbus Component does).
        self.reported = reported


class NoResponder(RequestError):
    """No live instance of the service is known."""

    def __init__(self, service: str, detail: str = "") -> None:
        super().__init__(f"no live instance of service {service!r}" + (f": {detail}" if detail else ""))
        self.service = service


class RequestTimeout(RequestError, TimeoutError):
    """The request's deadline passed or its tries ran out without a reply."""

    def __init__(self, service: str, attempts: int, elapsed: float, reason: str) -> None:
        super().__init__(
            f"request to {service!r} got no reply after {attempts} attempt(s) in {elapsed:.3f} s ({reason})"
        )
        self.service = service
        self.attempts = attempts
        self.elapsed = elapsed
        self.reason = reason


class SecurityError(ZmqbusError):
    """Keys are missing, unreadable or malformed, or a setting would leave a socket open to anyone."""


class InsecureEndpoint(SecurityError):
    """A non-loopback tcp endpoint without keys (pass ``insecure=True`` / ``--insecure`` to allow it)."""


class AuthenticationRefused(SecurityError):
    """A forwarder refused this member's public key (or this member has the wrong server key)."""


class Forbidden(SecurityError, PermissionError):
    """This member's own policy does not allow what it was asked to do (publish, subscribe, serve):
    refused here, before anything leaves, rather than dropped in silence at the forwarder."""


class RetryableError(Exception):
    """Raise from a handler when trying the same work again may succeed.

    A service handler that raises it answers with a *retryable* error, so the
    caller tries again (on another instance where one exists); the component
    framework retries subscribed work the same way. Any other exception is
    treated as fatal, except ``TimeoutError`` and ``ConnectionError``.
    Deliberately not a :class:`ZmqbusError`: it is the user's to raise.
    """


def is_retryable(exc: BaseException) -> bool:
    """The framework's classification of a handler's exception."""
    if isinstance(exc, RemoteError):
        return False
    return isinstance(exc, (RetryableError, TimeoutError, ConnectionError))
