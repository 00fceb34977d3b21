"""Encoding and decoding of pub/sub frames (docs/PROTOCOL.md, version 1).

A message is three frames: ``topic`` (UTF-8), ``envelope`` (a msgpack array,
see :data:`ENVELOPE_FIELDS`) and ``content`` (msgpack). Pure code: bytes in,
objects out. Everything that goes wrong raises :class:`EncodeError` (our side)
or :class:`DecodeError` (the peer's side) with a reason; msgpack's own
exceptions never escape. No pickle, no ext types.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import uuid
from functools import lru_cache
from typing import Any

import msgpack

from .errors import DecodeError, EncodeError, MessageTooLarge
from .message import MessageMetadata, ProcessingMessage, resolve_message_type, type_name
from .topics import validate_topic

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "ENVELOPE_FIELDS",
    "Codec",
    "pack",
    "unpack",
    "topic_bytes",
]

PROTOCOL_VERSION = 1
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024  # bytes, all frames together

#: Positions in the envelope array. Decoders ignore elements past the last.
ENVELOPE_FIELDS = (
    "version", "message_type", "message_id", "correlation_id", "causation_id",
    "source", "target", "timestamp", "publisher_id", "sequence", "attempt",
    "deadline", "headers",
)
_ENVELOPE_LEN = len(ENVELOPE_FIELDS)


def _default(obj: Any) -> Any:
    """Map common Python types onto msgpack's; anything else is an error."""
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if isinstance(obj, (uuid.UUID, decimal.Decimal)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"cannot encode an object of type {type(obj).__name__}")


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def unpack(data: bytes) -> Any:
    """Decode one msgpack object safely; raise :class:`DecodeError`.

    Container and string sizes are bounded by the input's length (a "msgpack
    bomb" declaring a huge length fails at once), map keys must be str or
    bytes, ext types are refused, trailing bytes are an error.
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_reject_ext)
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        # ExtraData, FormatError, StackError and UnicodeDecodeError are ValueErrors.
        raise DecodeError("msgpack", f"{type(exc).__name__}: {exc}") from None


_packer = msgpack.Packer(default=_default, use_bin_type=True, autoreset=True)


def pack(obj: Any) -> bytes:
    """Encode one object as msgpack; raise :class:`EncodeError`."""
    try:
        return _packer.pack(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(str(exc)) from None


@lru_cache(maxsize=4096)
def topic_bytes(topic: str) -> bytes:
    """Validate ``topic`` and return its frame bytes (cached)."""
    return validate_topic(topic).encode()


def _opt_str(value: Any) -> bool:
    return value is None or type(value) is str


class Codec:
    """Encodes and decodes messages under one size limit.

    One instance per client; not thread-safe (it reuses one msgpack Packer).
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        self.max_message_size = max_message_size
        self._pack = msgpack.Packer(default=_default, use_bin_type=True, autoreset=True).pack

    def topic_frame(self, message: ProcessingMessage, topic: str | None = None) -> bytes:
        """The validated topic frame: ``topic``, else ``message.topic``, else its type's name."""
        if topic is None:
            topic = message.topic
            if topic is None:
                try:
                    topic = type_name(message.message_type)
                except TypeError as exc:
                    raise EncodeError(str(exc)) from None
        return topic_bytes(topic)

    def encode(
        self,
        message: ProcessingMessage,
        tframe: bytes,
        publisher_id: str,
        sequence: int,
        source: str = "",
    ) -> tuple[bytes, bytes]:
        """Return the envelope and content frames for ``message`` sent on ``tframe``.

        ``source`` fills in an empty ``source_component``. Raises
        :class:`EncodeError` or :class:`MessageTooLarge`.
        """
        md = message.metadata
        try:
            name = type_name(message.message_type)
        except TypeError as exc:
            raise EncodeError(str(exc)) from None
        src = md.source_component or source
        if not (
            type(md.message_id) is str and type(md.correlation_id) is str and type(src) is str
            and _opt_str(md.causation_id) and _opt_str(md.target_component)
            and type(md.attempt) is int and md.attempt >= 1
            and isinstance(md.timestamp, (int, float))
            and (md.deadline is None or isinstance(md.deadline, (int, float)))
        ):
            raise EncodeError(f"invalid metadata field types: {md!r}")
        try:
            env = self._pack([
                PROTOCOL_VERSION, name, md.message_id, md.correlation_id, md.causation_id,
                src, md.target_component, float(md.timestamp), publisher_id, sequence,
                md.attempt, None if md.deadline is None else float(md.deadline),
                md.headers or None,
            ])
            body = self._pack(message.content)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"cannot encode {name} message: {exc}") from None
        size = len(tframe) + len(env) + len(body)
        if size > self.max_message_size:
            raise MessageTooLarge(size, self.max_message_size)
        return env, body

    def decode(self, topic: bytes, envelope: bytes, content: bytes) -> ProcessingMessage:
        """Build a :class:`ProcessingMessage` from three frames; raise :class:`DecodeError`."""
        size = len(topic) + len(envelope) + len(content)
        if size > self.max_message_size:
            raise DecodeError("size", f"{size} bytes over the limit of {self.max_message_size}")
        try:
            tstr = topic.decode()
        except UnicodeDecodeError:
            raise DecodeError("topic", "topic frame is not UTF-8") from None
        env = unpack(envelope)
        if type(env) is not list or len(env) < _ENVELOPE_LEN:
            if type(env) is list and env and env[0] != PROTOCOL_VERSION:
                raise DecodeError("version", f"unsupported protocol version {env[0]!r}")
            raise DecodeError("field", f"envelope must be an array of at least {_ENVELOPE_LEN} elements")
        (version, mtype, mid, cid, cause, src, dst, ts, pub, seq, att, deadline, headers) = env[:_ENVELOPE_LEN]
        if version != PROTOCOL_VERSION or type(version) is not int:
            raise DecodeError("version", f"unsupported protocol version {version!r}")
        if not (
            type(mtype) is str and type(mid) is str and type(cid) is str and type(src) is str
            and type(pub) is str and _opt_str(cause) and _opt_str(dst)
            and type(ts) in (float, int) and type(seq) is int and seq >= 0
            and type(att) is int and att >= 1
            and (deadline is None or type(deadline) in (float, int))
            and (headers is None or type(headers) is dict)
        ):
            raise DecodeError("field", "envelope field of the wrong type")
        body = unpack(content)
        md = MessageMetadata(
            cid, src, dst, mid, cause, ts, pub, seq, att, deadline,
            {} if headers is None else headers,
        )
        return ProcessingMessage(resolve_message_type(mtype), body, md, tstr)


def decode_frames(codec: Codec, frames: list[bytes]) -> ProcessingMessage:
    """Decode a whole multipart message, checking the frame count first."""
    if len(frames) != 3:
        raise DecodeError("frames", f"expected 3 frames, got {len(frames)}")
    return codec.decode(frames[0], frames[1], frames[2])

