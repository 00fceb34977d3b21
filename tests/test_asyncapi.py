"""`zmqbus asyncapi`: the bus's contract as an AsyncAPI 3.0 document, valid against the official schema."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from zmqbus import Component, Manager, ProcessingMessage, on
from zmqbus.core.codec import ENVELOPE_FIELDS
from zmqbus.framework.asyncapi import asyncapi_document
from zmqbus.framework.demo import DEMO_COMPONENTS

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads(gzip.decompress((Path(__file__).parent / "data" / "asyncapi-3.0.0.schema.json.gz").read_bytes()))


def check(doc: dict[str, Any]) -> None:
    """Valid against AsyncAPI 3.0.0's JSON Schema, and every local $ref points at something."""
    jsonschema.Draft7Validator(SCHEMA).validate(doc)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                target: Any = doc
                for part in ref.removeprefix("#/").split("/"):
                    assert isinstance(target, dict) and part in target, f"dangling {ref}"
                    target = target[part]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)


class Kind(str, Enum):
    START = "loan.start.request"
    DONE = "loan.complete"


class GuideStyle(Component):
    """Subscribes the guide's way, in _setup_message_handlers."""

    component_name = "loans"
    message_types = (Kind,)

    def _setup_message_handlers(self) -> None:
        self.message_broker.subscribe(self.component_name, "loan.start.request.#", self._start)

    async def _start(self, message: ProcessingMessage) -> None:
        pass


class Watcher(Manager):
    @on("*.error")
    async def seen(self, message: ProcessingMessage) -> None:
        pass


def test_the_examples_document_is_valid_asyncapi_3() -> None:
    doc = asyncapi_document(DEMO_COMPONENTS)
    check(doc)
    ops = doc["operations"]
    assert ops["chunk_analyzer.serve.ingest.analyze"]["action"] == "receive"
    assert "reply" in ops["chunk_analyzer.serve.ingest.analyze"]
    assert ops["ingest_manager.receive.ingest.request.HASH"]["action"] == "receive"
    assert doc["channels"]["ingest.request.HASH"]["address"] == "ingest.request.#"
    assert ops["ingest_manager.send.ingest.complete"]["action"] == "send"
    envelope = doc["components"]["schemas"]["envelope"]["properties"]
    assert [name for name, _ in sorted(envelope.items(), key=lambda kv: kv[1]["x-position"])] == list(
        ENVELOPE_FIELDS[:-1]
    )


def test_guide_style_subscriptions_decorators_and_message_types_all_appear() -> None:
    doc = asyncapi_document([GuideStyle, Watcher], title="loans", version="2.1.0")
    check(doc)
    ops = doc["operations"]
    receive = ops["loans.receive.loan.start.request.HASH"]
    assert receive["messages"] == [{"$ref": "#/channels/loan.start.request.HASH/messages/loan.start.request"}]
    assert ops["loans.send.loan.complete"]["action"] == "send"  # a type it uses and does not receive
    assert "watcher.receive.STAR.error" in ops and doc["channels"]["STAR.error"]["address"] == "*.error"
    assert doc["info"]["title"] == "loans" and doc["info"]["version"] == "2.1.0"


@pytest.mark.slow
def test_the_command_writes_what_docs_holds_and_refuses_a_bad_spec(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ZMQBUS_PUB", "ZMQBUS_SUB")}
    out = tmp_path / "asyncapi.json"
    done = subprocess.run(
        [sys.executable, "-m", "zmqbus.cli", "asyncapi", "--out", str(out)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    check(json.loads(out.read_text()))
    assert out.read_text() == (ROOT / "docs" / "asyncapi.json").read_text(), "docs/asyncapi.json is stale: regenerate"
    bad = subprocess.run(
        [sys.executable, "-m", "zmqbus.cli", "asyncapi", "nowhere:Nothing"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 1 and "cannot load 'nowhere:Nothing'" in bad.stderr
