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
    "FORWARDER_STATS_TOPIC",
    "ERROR_CODES",
    "Presence",
    "ErrorReply",
    "discover_content",
    "discovered_service",
    "HISTORY_SERVICE",
    "MAX_ANNOUNCED_STREAMS",
    "HistoryQuery",
    "HistoryReply",
]

#: Responders announce themselves here (PROTOCOL.md section 8.1).
PRESENCE_TOPIC = "_zmqbus.presence"
#: Callers ask for a service here.
DISCOVER_TOPIC = "_zmqbus.discover"
#: A message on this topic makes a forwarder publish its statistics at once (PROTOCOL.md section 5).
FORWARDER_QUERY_TOPIC = "_zmqbus.forwarder.query"
#: The forwarder's statistics; under a policy only the forwarder itself may publish them (section 12).
FORWARDER_STATS_TOPIC = "_zmqbus.forwarder.stats"
#: A publisher's history is fetched through this service (PROTOCOL.md section 14).
HISTORY_SERVICE = "_zmqbus.history"
#: The most streams one presence announcement names (PROTOCOL.md section 14).
MAX_ANNOUNCED_STREAMS = 10_000
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
    #: A publisher's recent streams: topic -> the last sequence number it published there (section 14).
    streams: dict[str, int] | None = None
    #: Who runs it (section 8.1, optional): ``pid``, ``host``, ``version``, ``started`` (epoch seconds),
    #: ``name``, ``replica``; for operators (``zmqbus ls``), never for routing.
    info: dict[str, Any] | None = None

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
        if self.streams:
            out["streams"] = self.streams
        if self.info:
            out["info"] = self.info
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
        streams, info = content.get("streams"), content.get("info")
        if info is not None and not (
            isinstance(info, dict)
            and len(info) <= 16
            and all(
                isinstance(k, str) and (isinstance(v, int | float) or (isinstance(v, str) and len(v) <= 256))
                for k, v in info.items()
            )
        ):
            info = None  # informative only: a malformed one is dropped, the announcement still counts
        if streams is not None and not (
            isinstance(streams, dict)
            and len(streams) <= MAX_ANNOUNCED_STREAMS
            and all(isinstance(t, str) and type(n) is int and n > 0 for t, n in streams.items())
        ):
            raise DecodeError("field", "presence: streams must map topics to positive sequence numbers")
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
            streams=streams,
            info=info,
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


@dataclass(frozen=True, kw_only=True)
class HistoryQuery:
    """A subscriber's request to a publisher's ``_zmqbus.history`` service (PROTOCOL.md section 14): the
    numbers ``first`` to ``last`` (None: up to the newest) on ``topic``, or (``since``, a time in seconds
    since the epoch) from the first message published at that time or later; at most ``limit``."""

    topic: str
    first: int = 1
    last: int | None = None
    since: float | None = None
    limit: int = 1000

    def to_content(self) -> dict[str, Any]:
        return {"topic": self.topic, "first": self.first, "last": self.last, "since": self.since, "limit": self.limit}

    @classmethod
    def from_content(cls, content: Any, max_limit: int) -> HistoryQuery:
        """Read a query; raise :class:`DecodeError` if it breaks section 14 (``limit`` is capped at ``max_limit``)."""
        topic, first = _field(content, "topic"), _field(content, "first")
        last, since, limit = content.get("last"), content.get("since"), content.get("limit", max_limit)
        if not isinstance(topic, str) or type(first) is not int or first < 1:
            raise DecodeError("field", "history: topic must be a string and first a positive integer")
        if last is not None and (type(last) is not int or last < first):
            raise DecodeError("field", "history: last must be an integer not below first")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)):
            raise DecodeError("field", "history: since must be a number")
        if type(limit) is not int or limit < 1:
            raise DecodeError("field", "history: limit must be a positive integer")
        return cls(topic=topic, first=first, last=last, since=since, limit=min(limit, max_limit))


@dataclass(frozen=True, kw_only=True)
class HistoryReply:
    """A publisher's answer: ``frames`` (whole messages, ``topic NUL payload``) from number ``first`` on, and the
    ``oldest`` and ``last`` numbers it holds on the topic now (0, 0: none)."""

    frames: tuple[bytes, ...]
    first: int
    oldest: int
    last: int

    def to_content(self) -> dict[str, Any]:
        return {"frames": list(self.frames), "first": self.first, "oldest": self.oldest, "last": self.last}

    @classmethod
    def from_content(cls, content: Any) -> HistoryReply:
        frames, first = _field(content, "frames"), _field(content, "first")
        oldest, last = _field(content, "oldest"), _field(content, "last")
        if not isinstance(frames, list) or not all(isinstance(f, bytes) for f in frames):
            raise DecodeError("field", "history reply: frames must be a list of binary frames")
        if not all(type(n) is int and n >= 0 for n in (first, oldest, last)):
            raise DecodeError("field", "history reply: first, oldest and last must be integers")
        return cls(frames=tuple(frames), first=first, oldest=oldest, last=last)
