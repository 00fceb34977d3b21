"""Typed control contents of the wire protocol: presence, discovery and error replies.

Pure code (no sockets): each type turns into the msgpack-ready content map
that docs/PROTOCOL.md specifies (``to_content``) and is read back from one
(``from_content``), so the responder and the caller share one definition
instead of building and parsing maps by hand. A content that breaks the
document raises :class:`DecodeError` (reason ``field``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import DecodeError, RemoteError

__all__ = [
    "PRESENCE_TOPIC",
    "DISCOVER_TOPIC",
    "FORWARDER_QUERY_TOPIC",
    "ERROR_CODES",
    "Presence",
    "ErrorReply",
    "discover_content",
    "discovered_service",
]

#: Responders announce themselves here (PROTOCOL.md section 8.1).
PRESENCE_TOPIC = "_zmqbus.presence"
#: Callers ask for a service here.
DISCOVER_TOPIC = "_zmqbus.discover"
#: A message on this topic makes a forwarder publish its statistics at once (PROTOCOL.md section 5).
FORWARDER_QUERY_TOPIC = "_zmqbus.forwarder.query"
#: The ``code`` of an error reply (PROTOCOL.md section 8.2).
ERROR_CODES = ("handler_error", "malformed", "unknown_service", "expired", "shutting_down", "overloaded", "forbidden")


def _field(content: Any, key: str) -> Any:
    try:
        return content[key]
    except (KeyError, TypeError, IndexError):
        raise DecodeError("field", f"control content lacks {key!r}") from None


@dataclass(frozen=True, kw_only=True)
class Presence:
    """A responder's announcement (PROTOCOL.md section 8.1)."""

    instance: str
    endpoint: str
    services: tuple[str, ...]
    interval: float
    liveness: int
    load: int = 0
    leaving: bool = False
    #: The responder's CURVE public key (Z85) on a secure bus: callers connect with it as the server key.
    key: str | None = None

    def to_content(self) -> dict[str, Any]:
        out = {
            "instance": self.instance,
            "endpoint": self.endpoint,
            "services": list(self.services),
            "interval": self.interval,
            "liveness": self.liveness,
            "load": self.load,
            "leaving": self.leaving,
        }
        if self.key is not None:
            out["key"] = self.key
        return out

    @classmethod
    def from_content(cls, content: Any) -> Presence:
        """Read an announcement; raise :class:`DecodeError` if it breaks section 8.1.

        ``interval`` may be an int; ``instance`` must be usable as a routing id
        (1 to 255 bytes of UTF-8, not starting with a NUL byte).
        """
        instance, endpoint = _field(content, "instance"), _field(content, "endpoint")
        services, interval, liveness = (
            _field(content, "services"),
            _field(content, "interval"),
            _field(content, "liveness"),
        )
        load, leaving, key = content.get("load", 0), content.get("leaving", False), content.get("key")
        if not (
            isinstance(instance, str)
            and isinstance(endpoint, str)
            and isinstance(services, list | tuple)
            and all(isinstance(s, str) for s in services)
        ):
            raise DecodeError("field", "presence: instance, endpoint and services must be strings")
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise DecodeError("field", "presence: interval must be a positive number")
        if isinstance(liveness, bool) or not isinstance(liveness, int) or liveness < 1:
            raise DecodeError("field", "presence: liveness must be a positive integer")
        if isinstance(load, bool) or not isinstance(load, int) or not isinstance(leaving, bool):
            raise DecodeError("field", "presence: load must be an integer and leaving a boolean")
        if key is not None and not (isinstance(key, str) and len(key) == 40 and key.isascii()):
            raise DecodeError("field", "presence: key must be a 40-character Z85 CURVE public key")
        try:
            routing_id = instance.encode()
        except UnicodeEncodeError:
            raise DecodeError("field", "presence: instance is not UTF-8") from None
        if not 0 < len(routing_id) <= 255 or routing_id[0] == 0:
            raise DecodeError("field", "presence: instance is not a usable routing id")
        return cls(
            instance=instance,
            endpoint=endpoint,
            services=tuple(services),
            interval=float(interval),
            liveness=liveness,
            load=load,
            leaving=leaving,
            key=key,
        )


def discover_content(service: str) -> dict[str, str]:
    """The content of a ``_zmqbus.discover`` query for ``service``."""
    return {"service": service}


def discovered_service(content: Any) -> str | None:
    """The service a discovery query asks for (None: any)."""
    service = content.get("service") if isinstance(content, dict) else None
    return service if isinstance(service, str) else None


@dataclass(frozen=True, kw_only=True)
class ErrorReply:
    """The content of an ``ERR`` reply (PROTOCOL.md section 8.2)."""

    code: str
    type: str
    message: str
    retryable: bool
    #: The responder already sent the error to the error handler: callers need not report it again.
    reported: bool = False

    def to_content(self) -> dict[str, Any]:
        out = {"code": self.code, "type": self.type, "message": self.message, "retryable": self.retryable}
        if self.reported:
            out["reported"] = True
        return out

    @classmethod
    def from_content(cls, content: Any) -> ErrorReply:
        """Read an error reply leniently: a peer's missing or odd field gets a safe default (not retryable)."""
        c = content if isinstance(content, dict) else {}
        return cls(
            code=str(c.get("code", "handler_error")),
            type=str(c.get("type", "Error")),
            message=str(c.get("message", "")),
            retryable=c.get("retryable") is True,
            reported=c.get("reported") is True,
        )

    def to_exception(self, correlation_id: str, service: str) -> RemoteError:
        """The :class:`RemoteError` a caller raises for this reply."""
        return RemoteError(
            self.type,
            self.message,
            correlation_id,
            self.code,
            service,
            retryable=self.retryable,
            reported=self.reported,
        )
