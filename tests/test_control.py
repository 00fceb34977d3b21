"""Typed control contents (zmqbus.core.control): to and from the wire maps of PROTOCOL.md sections 8.1 and 8.2."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from zmqbus import DecodeError, RemoteError
from zmqbus.core.control import ErrorReply, Presence, discover_content, discovered_service

PRESENCE = {
    "instance": "a1-2",
    "endpoint": "tcp://10.0.0.5:41234",
    "services": ["calc.add", "calc.mul"],
    "interval": 1.0,
    "liveness": 3,
    "load": 2,
    "leaving": False,
}


def test_presence_round_trips_through_msgpack() -> None:
    p = Presence.from_content(msgpack.unpackb(msgpack.packb(PRESENCE)))
    assert p == Presence(
        instance="a1-2",
        endpoint="tcp://10.0.0.5:41234",
        services=("calc.add", "calc.mul"),
        interval=1.0,
        liveness=3,
        load=2,
        leaving=False,
    )
    assert p.to_content() == PRESENCE


def test_presence_accepts_an_int_interval_and_missing_optionals() -> None:
    content = {k: v for k, v in PRESENCE.items() if k not in ("load", "leaving")}
    p = Presence.from_content(dict(content, interval=2))
    assert (p.interval, p.load, p.leaving) == (2.0, 0, False)


@pytest.mark.parametrize(
    "change",
    [
        {"instance": None},
        {"instance": ""},
        {"instance": "\x00abc"},
        {"instance": "x" * 256},
        {"services": "calc.add"},
        {"services": [1]},
        {"interval": 0},
        {"interval": "1"},
        {"interval": True},
        {"liveness": 0},
        {"liveness": 1.5},
        {"load": "2"},
        {"leaving": 1},
    ],
)
def test_malformed_presence_is_a_decode_error(change: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as info:
        Presence.from_content(dict(PRESENCE, **change))
    assert info.value.reason == "field"


def test_presence_missing_a_field_or_not_a_map() -> None:
    for content in ({k: v for k, v in PRESENCE.items() if k != "endpoint"}, [1, 2], None):
        with pytest.raises(DecodeError):
            Presence.from_content(content)


def test_error_reply_round_trip_and_leniency() -> None:
    e = ErrorReply(code="shutting_down", type="ShuttingDown", message="bye", retryable=True)
    assert ErrorReply.from_content(e.to_content()) == e
    # a peer's odd error content: safe defaults, never retryable unless it says exactly true
    assert ErrorReply.from_content({"retryable": "yes"}) == ErrorReply(
        code="handler_error", type="Error", message="", retryable=False
    )
    assert ErrorReply.from_content(None).code == "handler_error"
    assert ErrorReply.from_content({"code": "x"}).retryable is False
    exc = e.to_exception("wf-1", "calc.add")
    assert isinstance(exc, RemoteError)
    assert (exc.code, exc.error_type, exc.remote_message, exc.correlation_id, exc.service, exc.retryable) == (
        "shutting_down",
        "ShuttingDown",
        "bye",
        "wf-1",
        "calc.add",
        True,
    )


def test_discovery_content() -> None:
    assert discovered_service(discover_content("calc.add")) == "calc.add"
    assert discovered_service({}) is None and discovered_service("x") is None
    assert discovered_service({"service": 3}) is None
