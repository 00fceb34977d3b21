"""Message objects, ids and the rate-limited log: pure code."""

from __future__ import annotations

import enum
import logging

import pytest

from zmqbus import MessageMetadata, ProcessingMessage, register_message_types
from zmqbus.core.ids import new_id, process_prefix
from zmqbus.core.message import resolve_message_type, type_name
from zmqbus.core.ratelog import RateLimitedLog


class StrKind(str, enum.Enum):
    A = "x.a"


class Numbered(enum.Enum):
    ONE = 1


def test_guide_construction_and_defaults() -> None:
    md = MessageMetadata(correlation_id="c", source_component="m", target_component="h")
    assert md.message_id.startswith(process_prefix())
    assert md.attempt == 1 and md.headers == {} and md.deadline is None and md.timestamp > 0
    fresh = MessageMetadata(message_id="id-1")
    assert fresh.correlation_id == "id-1"


def test_ids_are_unique_and_ordered() -> None:
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert [int(i.split("-")[1], 16) for i in ids] == sorted(int(i.split("-")[1], 16) for i in ids)


def test_type_names() -> None:
    assert type_name("a.b") == "a.b"
    assert type_name(StrKind.A) == "x.a"
    assert ProcessingMessage(StrKind.A).type_name == "x.a"
    with pytest.raises(TypeError):
        type_name(Numbered.ONE)
    with pytest.raises(TypeError):
        type_name(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        register_message_types(Numbered)


def test_registry() -> None:
    assert resolve_message_type("x.a") == "x.a"
    register_message_types(StrKind)
    assert resolve_message_type("x.a") is StrKind.A


def test_rate_limited_log(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    rl = RateLimitedLog(logging.getLogger("t"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        assert rl.log(logging.WARNING, "k", "bad %s", 1)
        for _ in range(5):
            assert not rl.log(logging.WARNING, "k", "bad %s", 2)
        assert rl.log(logging.WARNING, "other", "other key")
        now[0] = 10.5
        assert rl.log(logging.WARNING, "k", "bad %s", 3)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bad 1", "other key", "bad 3 (5 more like this suppressed)"]


def test_public_surface_and_a_pure_core_without_zmq() -> None:
    """`zmqbus` exports what users write code with, lazily: the pure core loads neither pyzmq nor asyncio."""
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, sys, zmqbus.core\n"
        "for m in pkgutil.iter_modules(zmqbus.core.__path__):\n"  # every module of the pure core
        "    importlib.import_module('zmqbus.core.' + m.name)\n"
        "assert 'zmq' not in sys.modules and 'asyncio' not in sys.modules, sorted(sys.modules)\n"
        "import zmqbus\n"
        "for name in zmqbus.__all__:\n"
        "    getattr(zmqbus, name)\n"
        "for internal in ('Codec', 'Pattern', 'SocketConfig', 'Subscription', 'compile_pattern'):\n"
        "    assert not hasattr(zmqbus, internal), internal\n"
        "assert zmqbus.Handler.__module__ == 'zmqbus.framework.component'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
