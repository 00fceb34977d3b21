"""Helpers to run bus processes (spawned, never forked) and end them by pid.

The ZeroMQ context is created inside each child (``spawn`` start method), so
no socket or context ever crosses a process boundary.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

from ..io.transport import SocketConfig

__all__ = ["spawn", "stop_process", "forwarder_process", "free_port", "tcp_endpoints", "environment"]

log = logging.getLogger(__name__)

_mp = multiprocessing.get_context("spawn")


def spawn(target: Callable[..., Any], *args: Any, name: str | None = None) -> multiprocessing.process.BaseProcess:
    """Start ``target(*args)`` in a new spawned process and return it."""
    proc = _mp.Process(target=target, args=args, name=name, daemon=True)
    proc.start()
    return proc


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for this block: processes spawned in it inherit them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def stop_process(proc: multiprocessing.process.BaseProcess, timeout: float = 5.0) -> int | None:
    """SIGTERM ``proc`` by pid, then SIGKILL if it is still alive after ``timeout``."""
    if proc.pid is not None and proc.is_alive():
        os.kill(proc.pid, signal.SIGTERM)
        proc.join(timeout)
        if proc.is_alive():
            log.warning("process %s (pid %d) ignored SIGTERM; killing it", proc.name, proc.pid)
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(timeout)
    return proc.exitcode


def _forwarder_main(pub: str, sub: str, hwm: int, stats_interval: float | None, log_level: int) -> None:
    from ..bus.forwarding import run_forwarder

    logging.basicConfig(level=log_level, format="%(asctime)s forwarder %(levelname)s %(message)s")
    run_forwarder(pub, sub, socket_config=SocketConfig(hwm=hwm), stats_interval=stats_interval)


def forwarder_process(
    pub: str, sub: str, *, hwm: int = 100_000, stats_interval: float | None = 5.0, log_level: int = logging.WARNING
) -> multiprocessing.process.BaseProcess:
    """Start a forwarder in its own process; stop it with :func:`stop_process`."""
    return spawn(_forwarder_main, pub, sub, hwm, stats_interval, log_level, name="zmqbus-forwarder")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests and benchmarks on loopback)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tcp_endpoints(host: str = "127.0.0.1") -> tuple[str, str]:
    """A pair of distinct free tcp endpoints for a forwarder: (publishers', subscribers').

    Both ports are held while the second is picked: two separate
    :func:`free_port` calls can return the same port.
    """
    with socket.socket() as a, socket.socket() as b:
        a.bind((host, 0))
        b.bind((host, 0))
        return f"tcp://{host}:{a.getsockname()[1]}", f"tcp://{host}:{b.getsockname()[1]}"
