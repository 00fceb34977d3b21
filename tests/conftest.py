"""Shared fixtures: endpoints, forwarders (in a thread or a process), async tests.

``async def`` tests, ``wait_until`` and the recorders come from zmqbus's own
test kit (``zmqbus.testing``, a pytest plugin installed with zmqbus). Every process a fixture starts is ended by its pid
in teardown; nothing is ever killed by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from zmqbus import Forwarder
from zmqbus.core.config import ipc_endpoints
from zmqbus.framework.procs import forwarder_process, stop_process, tcp_endpoints

#: Tests that measure or bound wall-clock time (benchmarks, soaks, storms, hang bounds): under
#: pytest-xdist with ``--dist loadgroup`` (the README's test command) they run one after another
#: on one worker, never two at once; the other worker runs the rest.
TIMED = pytest.mark.xdist_group("timed")


@pytest.fixture(autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Components keep state (the error handler's dead letters) in a folder of this test, not in ~/.local:
    a port reused by a later test must not bring back an earlier test's dead letters."""
    monkeypatch.setenv("ZMQBUS_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def ipc_pair(tmp_path: Any) -> tuple[str, str]:
    """A fresh pair of ipc endpoints inside the test's temp dir."""
    return ipc_endpoints(str(tmp_path))


@pytest.fixture
def tcp_pair() -> tuple[str, str]:
    return tcp_endpoints()


@pytest.fixture
def forwarder(tcp_pair: tuple[str, str]) -> Iterator[Forwarder]:
    """A real forwarder in a thread of the test process, on tcp loopback."""
    fwd = Forwarder(*tcp_pair, stats_interval=None).start()
    yield fwd
    fwd.stop()


@pytest.fixture
def spawn_forwarder() -> Iterator[Callable[..., Any]]:
    """Start forwarder processes; all are ended by pid at teardown."""
    procs: list[Any] = []

    def start(pub: str, sub: str, **kwargs: Any) -> Any:
        proc = forwarder_process(pub, sub, **kwargs)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_process(proc, timeout=3.0)


def end_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Send ``sig`` to a process a test started, wait for it; SIGKILL it if it outlives ``timeout`` (a test
    never leaves one behind). Returns its exit status (as it ended on ``sig``, or -9 after the kill)."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def run_cli() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``zmqbus`` command lines as real processes (tests/ on their path); each is ended by pid."""
    procs: list[subprocess.Popen[str]] = []
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zmqbus.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
