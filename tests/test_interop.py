"""Interop: tests/raw_peer.py, written from docs/PROTOCOL.md alone, talks to zmqbus."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from zmqbus import MessageBroker, MessageMetadata, ProcessingMessage
from zmqbus.testing import Recorder

RAW_PEER = os.path.join(os.path.dirname(__file__), "raw_peer.py")


@pytest.fixture
def start_raw_peer(ipc_pair: tuple[str, str], spawn_forwarder: Any) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start a forwarder and then tests/raw_peer.py (``*mode``); the peer is ended by pid at teardown."""
    spawn_forwarder(*ipc_pair, stats_interval=None)
    procs: list[subprocess.Popen[str]] = []

    def start(*mode: str) -> subprocess.Popen[str]:
        procs.append(subprocess.Popen([sys.executable, RAW_PEER, *ipc_pair, *mode], stdout=subprocess.PIPE, text=True))
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()  # by pid (Popen.kill signals this child only)
        proc.wait(5)
        assert proc.stdout is not None
        proc.stdout.close()


async def readline(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)).strip()


async def test_raw_client_publishes_and_subscribes(ipc_pair: tuple[str, str], start_raw_peer: Any) -> None:
    raw_peer = start_raw_peer()
    async with MessageBroker(*ipc_pair, name="pytest") as b:
        coll = Recorder()
        b.subscribe("pytest", "interop.from_raw.#", coll)
        await b.ready(timeout=20)
        assert await readline(raw_peer) == "ready"
        sent = ProcessingMessage(
            "interop.to_raw",
            {"n": [1, 2.5, "three", None, b"\x04"]},
            MessageMetadata(correlation_id="conv-1", source_component="pytest"),
        )
        await b.publish(sent)
        await coll.wait_for(count=4, timeout=20)
        got = coll.messages
        assert await readline(raw_peer) == "sent"
        first = got[0]
        assert first.content == {
            "echo": {"n": [1, 2.5, "three", None, b"\x04"]},
            "type_seen": "interop.to_raw",
            "source_seen": "pytest",
        }
        md = first.metadata
        assert (md.correlation_id, md.causation_id, md.source_component, md.target_component) == (
            "conv-1",
            sent.metadata.message_id,
            "raw",
            "pytest",
        )
        assert md.headers == {"lang": "raw"} and md.publisher_id == "raw-pub"
        assert [m.metadata.sequence for m in got] == [1, 2, 3, 9]
        assert got[3].content == "last"
        assert b.statistics().gaps == 5  # 4..8 were never sent: counted as lost


async def test_zmqbus_calls_a_raw_responder(ipc_pair: tuple[str, str], start_raw_peer: Any) -> None:
    """A responder written from PROTOCOL.md section 8 (ROUTER + presence by hand) serves zmqbus callers."""
    proc = start_raw_peer("serve")
    assert (await readline(proc)).startswith("serving tcp://")
    async with MessageBroker(*ipc_pair, name="pytest") as b:
        msg = ProcessingMessage("raw.upper", "hello", MessageMetadata(correlation_id="conv-up"))
        reply = await b.request("raw.upper", msg, timeout=20)
        assert reply.content == "HELLO"
        assert reply.metadata.correlation_id == "conv-up"
        assert reply.metadata.causation_id == msg.metadata.message_id
        assert reply.metadata.target_component == "pytest"
