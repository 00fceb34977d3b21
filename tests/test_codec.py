"""Codec: round trips, every malformed input as one DecodeError with a reason."""

from __future__ import annotations

import datetime
import enum
import uuid
from dataclasses import dataclass

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from zmqbus import DecodeError, EncodeError, MessageMetadata, MessageTooLarge, ProcessingMessage, TopicError
from zmqbus.core.codec import ENVELOPE_FIELDS, PROTOCOL_VERSION, SEPARATOR, Codec, pack, split_request, unpack


class Kind(enum.Enum):
    START = "component.start.request"


def frames(msg: ProcessingMessage, codec: Codec | None = None, seq: int = 1) -> tuple[bytes, bytes]:
    codec = codec or Codec()
    head = codec.frame_head(msg)
    return head[:-1], codec.encode(msg, head, "pub-1", seq, "default-source")


def test_round_trip_keeps_every_field() -> None:
    md = MessageMetadata(
        correlation_id="c-1",
        source_component="manager",
        target_component="handler",
        causation_id="m-0",
        attempt=2,
        deadline=1e9 + 0.5,
        headers={"k": [1, 2]},
    )
    msg = ProcessingMessage(Kind.START, {"doc": "d-1", "n": 3, "raw": b"\x00\xff"}, md)
    topic, payload = frames(msg, seq=7)
    assert topic == b"component.start.request"
    out = Codec().decode(topic, payload)
    assert out.message_type == "component.start.request"  # unregistered: the plain str
    assert out.content == {"doc": "d-1", "n": 3, "raw": b"\x00\xff"}
    assert out.topic == "component.start.request"
    got = out.metadata
    assert (got.correlation_id, got.source_component, got.target_component) == ("c-1", "manager", "handler")
    assert (got.message_id, got.causation_id, got.attempt, got.deadline) == (md.message_id, "m-0", 2, 1e9 + 0.5)
    assert (got.publisher_id, got.sequence, got.headers, got.timestamp) == ("pub-1", 7, {"k": [1, 2]}, md.timestamp)


def test_defaults_fill_in_source_and_correlation() -> None:
    msg = ProcessingMessage("a.b", {})
    out = Codec().decode(*frames(msg))
    assert out.metadata.source_component == "default-source"
    assert out.metadata.correlation_id == msg.metadata.message_id


def test_registered_enum_comes_back() -> None:
    from zmqbus import register_message_types

    register_message_types(Kind)
    out = Codec().decode(*frames(ProcessingMessage(Kind.START, {})))
    assert out.message_type is Kind.START


def test_payload_layout_is_the_documented_array() -> None:
    _topic, payload = frames(ProcessingMessage("a.b", {"x": 1}, MessageMetadata("c", "s", "t")))
    arr = msgpack.unpackb(payload)
    assert len(arr) == len(ENVELOPE_FIELDS) == 14
    assert arr[0] == PROTOCOL_VERSION and arr[1] == "a.b" and arr[13] == {"x": 1}
    assert payload[0] == 0x9E  # fixarray of 14: never the first byte of a topic


def test_common_python_types_are_encoded() -> None:
    @dataclass
    class Point:
        x: int

    when = datetime.datetime(2026, 1, 2, 3, 4, 5)
    uid = uuid.UUID(int=1)
    content = {"kind": Kind.START, "when": when, "id": uid, "tags": {"a"}, "p": Point(1), "t": (1, 2)}
    out = Codec().decode(*frames(ProcessingMessage("a.b", content)))
    assert out.content == {
        "kind": "component.start.request",
        "when": when.isoformat(),
        "id": str(uid),
        "tags": ["a"],
        "p": {"x": 1},
        "t": [1, 2],
    }


def test_unencodable_content_is_an_encode_error() -> None:
    with pytest.raises(EncodeError, match="cannot encode"):
        frames(ProcessingMessage("a.b", {"f": object()}))
    with pytest.raises(EncodeError):
        pack(object())


@pytest.mark.parametrize(
    "md",
    [
        MessageMetadata(correlation_id=5),  # type: ignore[arg-type]
        MessageMetadata(target_component=1),  # type: ignore[arg-type]
        MessageMetadata(attempt=0),
        MessageMetadata(timestamp="now"),  # type: ignore[arg-type]
    ],
)
def test_bad_metadata_is_an_encode_error(md: MessageMetadata) -> None:
    with pytest.raises(EncodeError):
        frames(ProcessingMessage("a.b", {}, md))


def test_bad_message_type_and_topic() -> None:
    with pytest.raises(EncodeError):
        frames(ProcessingMessage(42, {}))  # type: ignore[arg-type]
    with pytest.raises(TopicError):
        frames(ProcessingMessage("a..b", {}))


def test_too_large_is_refused_before_sending() -> None:
    codec = Codec(max_message_size=1000)
    with pytest.raises(MessageTooLarge) as info:
        frames(ProcessingMessage("a.b", {"blob": b"x" * 2000}), codec)
    assert info.value.size > 2000 and info.value.limit == 1000


def envelope(**changes: object) -> list[object]:
    values = [PROTOCOL_VERSION, "a.b", "m-1", "c-1", None, "src", None, 1.5, "pub", 1, 1, None, None, {}]
    base = dict(zip(ENVELOPE_FIELDS, values, strict=True))
    base.update(changes)
    return list(base.values())


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"\xc1", "msgpack"),  # never-used byte
        (b"\x9e\x01", "msgpack"),  # truncated array
        (b"\xdb\xff\xff\xff\xff", "msgpack"),  # str32 declaring 4 GiB: a "bomb"
        (b"\xdd\x7f\xff\xff\xff", "msgpack"),  # array32 declaring 2^31 items
        (msgpack.packb(envelope()) + b"\x00", "msgpack"),  # trailing bytes
        (msgpack.packb({"v": 1}), "field"),  # a map, not an array
        (msgpack.packb([PROTOCOL_VERSION, "a.b"]), "field"),  # too short
        (msgpack.packb(envelope(version=1)), "version"),  # version 1: two frames
        (msgpack.packb(envelope(version=3)), "version"),
        (msgpack.packb(envelope(version=True)), "version"),
        (msgpack.packb([99]), "version"),
        (msgpack.packb(envelope(version="1")), "version"),
        (msgpack.packb(envelope(message_id=5)), "field"),
        (msgpack.packb(envelope(sequence=-1)), "field"),
        (msgpack.packb(envelope(attempt=0)), "field"),
        (msgpack.packb(envelope(timestamp="x")), "field"),
        (msgpack.packb(envelope(headers=[1])), "field"),
        (msgpack.packb(envelope(target=3)), "field"),
        (msgpack.packb(envelope(content=msgpack.ExtType(5, b"x"))), "msgpack"),  # ext types refused
        (msgpack.packb(envelope(headers={1: "x"})), "field"),  # header keys are str
        (msgpack.packb(envelope() + [1])[:-1] + b"\xc1", "msgpack"),  # bad byte in an extra element
    ],
)
def test_malformed_payloads(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        Codec().decode(b"a.b", payload)
    assert info.value.reason == reason


def test_bad_topic_frame_and_size() -> None:
    payload = msgpack.packb(envelope())
    with pytest.raises(DecodeError) as info:
        Codec().decode(b"\xff\xfe", payload)
    assert info.value.reason == "topic"
    with pytest.raises(DecodeError) as info:
        Codec(max_message_size=10).decode(b"a.b", payload)
    assert info.value.reason == "size"


def test_later_minor_revision_fields_are_ignored() -> None:
    out = Codec().decode(b"a.b", msgpack.packb(envelope() + ["future", 42]))
    assert out.content == {} and out.metadata.message_id == "m-1"


def test_aware_datetimes_travel_as_msgpack_timestamps() -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.UTC)
    topic, payload = frames(ProcessingMessage("a.b", {"at": when}))
    assert b"\xd7\xff" in payload or b"\xc7\x0c\xff" in payload  # ext -1, the standard timestamp
    assert Codec().decode(topic, payload).content == {"at": when}


def test_content_map_keys_may_be_any_scalar() -> None:
    """msgpack-python encodes int keys, so the decoder accepts them too (PROTOCOL.md section 3)."""
    out = Codec().decode(b"a.b", msgpack.packb(envelope(content={1: "int key", "s": 2})))
    assert out.content == {1: "int key", "s": 2}


@pytest.mark.parametrize("size", [10, 100_000])
def test_decode_frame_splits_topic_and_payload(size: int) -> None:
    msg = ProcessingMessage("a.b", {"blob": b"x" * size})
    topic, payload = frames(msg)
    out = Codec().decode_frame(topic + SEPARATOR + payload)
    assert out.topic == "a.b" and out.content == msg.content


@pytest.mark.parametrize(
    "frame,reason",
    [
        (b"a.b", "topic"),  # no separator
        (b"\x00" + msgpack.packb(envelope()), "topic"),  # empty topic
        (b"x" * 300 + b"\x00" + msgpack.packb(envelope()), "topic"),  # separator past 256 bytes
        (b"x" * 256 + b"\x00" + msgpack.packb(envelope()), "topic"),  # a 256-byte topic (1 to 255 allowed)
        (b"\xff\xfe\x00" + msgpack.packb(envelope()), "topic"),  # not UTF-8
        (b"a.b\x00", "msgpack"),  # nothing after the separator
        (b"a.b\x00" + msgpack.packb(envelope()) + b"\x00", "msgpack"),
    ],
)
def test_malformed_frames(frame: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        Codec().decode_frame(frame)
    assert info.value.reason == reason


def test_unpack_never_leaks_msgpack_errors() -> None:
    for data in (b"", b"\x92\x01", b"\xd9\x05ab"):
        with pytest.raises(DecodeError):
            unpack(data)


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_like)
def test_content_round_trips(content: object) -> None:
    assert Codec().decode(*frames(ProcessingMessage("a.b", content))).content == content


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    try:
        Codec().decode(b"a.b", data)
    except DecodeError:
        pass


def test_request_and_reply_frames_split_back() -> None:
    from zmqbus.core.codec import BUSY, ERR, REP, reply_frame, request_head, split_reply, split_request

    payload = msgpack.packb(envelope())
    assert split_request(request_head("calc.add") + payload) == (b"calc.add", payload)
    for kind in (REP, ERR, BUSY):
        assert split_reply(reply_frame(kind, payload)) == (kind, payload)
    big = b"\x9e" + b"x" * 10_000  # large frames are split without a copy
    service, rest = split_request(request_head("a") + big)  # type: ignore[misc]
    assert service == b"a" and bytes(rest) == big


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"REQ",
        b"REQ\x00",
        b"REQ\x00\x00payload",
        b"REP\x00x",
        b"HELLO\x00a\x00b",
        b"REQ\x00" + b"s" * 300 + b"\x00payload",
    ],
)
def test_malformed_request_frames(body: bytes) -> None:
    from zmqbus.core.codec import split_request

    assert split_request(body) is None


@pytest.mark.parametrize("body", [b"", b"REP", b"REQ\x00x", b"\x00x", b"BUSYX\x00x"])
def test_malformed_reply_frames(body: bytes) -> None:
    from zmqbus.core.codec import split_reply

    assert split_reply(body) is None


def test_a_service_name_is_checked_like_a_topic() -> None:
    from zmqbus.core.codec import request_head

    for bad in ("", "a\x00b", "a..b", "a.*"):
        with pytest.raises(TopicError):
            request_head(bad)


def test_topic_and_service_length_limits_on_receipt() -> None:
    """PROTOCOL.md section 2: a topic or service is 1 to 255 bytes, on the receiving side too."""
    payload = msgpack.packb(envelope())
    assert Codec().decode_frame(b"x" * 255 + b"\x00" + payload).topic == "x" * 255
    assert split_request(b"REQ\x00" + b"s" * 255 + b"\x00" + payload) is not None
    assert split_request(b"REQ\x00" + b"s" * 256 + b"\x00" + payload) is None


def test_content_keys_decode_as_documented() -> None:
    """PROTOCOL.md section 3: any scalar key decodes; an array key becomes a tuple (not validated)."""
    out = Codec().decode(b"a.b", msgpack.packb(envelope(content={(1, 2): "array key", b"k": 1, 2: 3})))
    assert out.content == {(1, 2): "array key", b"k": 1, 2: 3}


def test_every_metadata_field_survives_a_round_trip() -> None:
    """Decoding builds messages field by field (for speed): a field added to MessageMetadata
    without being carried would be caught here, since every field is compared by name."""
    import dataclasses

    md = MessageMetadata(
        correlation_id="c-1",
        source_component="s",
        target_component="t",
        causation_id="m-0",
        attempt=3,
        deadline=2e9,
        headers={"h": 1},
    )
    msg = ProcessingMessage("a.b", [1], md)
    topic, payload = frames(msg, seq=5)
    got = Codec().decode(topic, payload).metadata
    sent = dataclasses.replace(md, publisher_id="pub-1", sequence=5)  # set by the encoder
    for f in dataclasses.fields(MessageMetadata):
        assert getattr(got, f.name) == getattr(sent, f.name), f.name
