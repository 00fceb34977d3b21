"""The bus's contract as an AsyncAPI 3.0 document, read off component classes (``zmqbus asyncapi``).

Each class is built once on a broker that is never started (no socket opens) and read as the bus would
see it: its subscriptions (``@on``, ``subscribe``, the guide's ``_setup_message_handlers``) become
``receive`` operations on channels whose address is the pattern; its services (``@service``,
``serve``) ``receive`` operations with a ``reply``; the members of its ``message_types`` that none of
its own patterns match, ``send`` operations (a component names the types it uses; those it does not
receive, it publishes). Every message is one envelope (PROTOCOL.md section 3: a msgpack array, its
fields described here by name and position as the message's headers) whose ``content`` is the payload.

Control traffic (``_zmqbus.*``: presence, discovery, probes, history) is PROTOCOL.md's, not listed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .. import __version__
from ..bus.broker import MessageBroker
from ..core.codec import ENVELOPE_FIELDS, PROTOCOL_VERSION
from ..core.message import type_name
from ..core.topics import RESERVED_PREFIX, compile_pattern
from .component import Component
from .runner import load_component

__all__ = ["asyncapi_document", "ENVELOPE_SCHEMA"]

_FIELD_DOCS: dict[str, tuple[Any, str]] = {
    "version": ({"type": "integer", "const": PROTOCOL_VERSION}, "protocol version"),
    "message_type": ({"type": "string"}, "the message type (the topic unless published under another)"),
    "message_id": ({"type": "string"}, "unique id of this message; retries of the same work reuse it"),
    "correlation_id": ({"type": "string"}, "the conversation (workflow) this message belongs to"),
    "causation_id": ({"type": ["string", "null"]}, "the message_id of the message that caused this one"),
    "source": ({"type": "string"}, "the sending component"),
    "target": ({"type": ["string", "null"]}, "the intended component, null for anyone"),
    "timestamp": ({"type": "number"}, "when the message was created, seconds since the Unix epoch"),
    "publisher_id": ({"type": "string"}, "the publishing client, unique per client"),
    "sequence": ({"type": "integer", "minimum": 0}, "per (publisher_id, topic) counter: 1, 2, 3, ..."),
    "attempt": ({"type": "integer", "minimum": 1}, "1 for a first try, 2 for the first retry, ..."),
    "deadline": ({"type": ["number", "null"]}, "absolute time after which the work is useless (epoch seconds)"),
    "headers": ({"type": ["object", "null"]}, "free-form metadata; W3C trace context when tracing is on"),
    "content": ({}, "the message body, any msgpack value (the message's payload)"),
}

#: PROTOCOL.md section 3's envelope, by name; ``x-position`` is each field's index in the msgpack array.
ENVELOPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The zmqbus envelope (docs/PROTOCOL.md section 3): on the wire, one msgpack array of these "
    "fields in x-position order, after the topic frame prefix; shown by name here.",
    "required": [f for f in ENVELOPE_FIELDS if f != "content"],
    "properties": {
        name: {**_FIELD_DOCS[name][0], "description": _FIELD_DOCS[name][1], "x-position": i}
        for i, name in enumerate(ENVELOPE_FIELDS)
        if name != "content"
    },
}


def _key(text: str) -> str:
    """A component-map key (``^[\\w\\d.\\-_]+$``) for a topic, pattern or service."""
    return re.sub(r"[^\w.\-]", "_", text.replace("#", "HASH").replace("*", "STAR"))


def _inspect(cls: type[Component]) -> tuple[str, list[str], list[str], list[str]]:
    """(name, subscribed patterns, served services, message types) of one component class."""
    broker = MessageBroker("ipc:///zmqbus-asyncapi/pub", "ipc:///zmqbus-asyncapi/sub", history=False)
    component = cls(broker)
    patterns = sorted({p for _, p in broker.subscriptions() if not p.startswith(RESERVED_PREFIX)})
    services = sorted(s for s in broker.services if not s.startswith(RESERVED_PREFIX))
    types = [type_name(m) for enum in cls.message_types for m in enum]
    return component.component_name, patterns, services, types


def asyncapi_document(
    components: Iterable[str | type[Component]],
    *,
    title: str = "zmqbus bus",
    version: str = "1.0.0",
    pub: str = "tcp://127.0.0.1:5570",
    sub: str = "tcp://127.0.0.1:5571",
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of a bus made of ``components`` (classes, or ``module:Class`` specs)."""
    classes = [load_component(c) if isinstance(c, str) else c for c in components]
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}

    def message(name: str, summary: str) -> dict[str, str]:
        key = _key(name)
        messages.setdefault(
            key,
            {
                "name": name,
                "title": name,
                "summary": summary,
                "contentType": "application/msgpack",
                "headers": {"$ref": "#/components/schemas/envelope"},
                "payload": {"description": "the envelope's content"},
                "correlationId": {"location": "$message.header#/correlation_id"},
            },
        )
        return {"$ref": f"#/components/messages/{key}"}

    def channel(key: str, address: str, servers: list[str], description: str, msgs: dict[str, Any]) -> str:
        entry = channels.setdefault(
            key,
            {
                "address": address,
                "description": description,
                "servers": [{"$ref": f"#/servers/{s}"} for s in servers],
                "messages": {},
            },
        )
        entry["messages"].update(msgs)
        return key

    def refs(channel_key: str) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/{channel_key}/messages/{m}"} for m in channels[channel_key]["messages"]]

    names = []
    for cls in classes:
        name, patterns, services, types = _inspect(cls)
        names.append(name)
        compiled = [compile_pattern(p) for p in patterns]
        for pattern in patterns:
            matching = {_key(t): message(t, f"a {t} message") for t in types if compile_pattern(pattern).match(t)}
            key = channel(
                _key(pattern),
                pattern,
                ["subscribers"],
                "messages on topics matching this pattern (AMQP-style: * one word, # any words)",
                matching or {"any": message("any", "any message on a matching topic")},
            )
            operations[_key(f"{name}.receive.{pattern}")] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{key}"},
                "summary": f"{name} subscribes to {pattern}",
                "messages": refs(key),
            }
        for t in types:
            if any(p.match(t) for p in compiled):
                continue
            key = channel(_key(t), t, ["publishers"], f"{t} messages", {_key(t): message(t, f"a {t} message")})
            operations[_key(f"{name}.send.{t}")] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{key}"},
                "summary": f"{name} publishes {t}",
                "messages": refs(key),
            }
        for svc in services:
            request_key = channel(
                _key(f"request.{svc}"),
                svc,
                ["responders"],
                f"requests for the {svc} service (REQ frame, PROTOCOL.md section 8)",
                {_key(svc): message(svc, f"a request to {svc}")},
            )
            reply_key = channel(
                _key(f"reply.{svc}"),
                f"{svc}.reply",
                ["responders"],
                f"replies of {svc} (REP frame; an ERR frame's content is the error, PROTOCOL.md section 8.3)",
                {_key(f"{svc}.reply"): message(f"{svc}.reply", f"the reply of {svc}")},
            )
            operations[_key(f"{name}.serve.{svc}")] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{request_key}"},
                "summary": f"{name} serves {svc}",
                "messages": refs(request_key),
                "reply": {"channel": {"$ref": f"#/channels/{reply_key}"}, "messages": refs(reply_key)},
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": title,
            "version": version,
            "description": f"Generated by zmqbus {__version__} from {', '.join(names) or 'no component'} "
            f"(wire protocol version {PROTOCOL_VERSION}: docs/PROTOCOL.md).",
        },
        "defaultContentType": "application/msgpack",
        "servers": {
            "publishers": {
                "host": _host(pub),
                "protocol": "zmtp",
                "protocolVersion": "3.1",
                "description": f"the forwarder's XSUB side ({pub}): publishers connect and send topic frames",
            },
            "subscribers": {
                "host": _host(sub),
                "protocol": "zmtp",
                "protocolVersion": "3.1",
                "description": f"the forwarder's XPUB side ({sub}): subscribers connect and subscribe by prefix",
            },
            "responders": {
                "host": "{endpoint}",
                "protocol": "zmtp",
                "protocolVersion": "3.1",
                "description": "each responder's ROUTER, at the endpoint its presence on _zmqbus.presence announces",
                "variables": {"endpoint": {"description": "host:port from the instance's presence"}},
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": {"envelope": ENVELOPE_SCHEMA}, "messages": messages},
    }


def _host(endpoint: str) -> str:
    return endpoint.split("://", 1)[-1]
