"""A forwarder as a process: :func:`run_forwarder` runs one until SIGINT or SIGTERM (SIGHUP reloads keys)."""

from __future__ import annotations

import logging
import signal
import threading
import time

from ..core.errors import ZmqbusError
from ..core.security import KeyRing
from ..io.proxy import raise_file_limit
from ..io.transport import SocketConfig
from .forwarder import Forwarder, ForwarderStatistics
from .forwarder_stats import DEFAULT_MAX_QUEUED_BYTES

__all__ = ["run_forwarder"]

log = logging.getLogger("zmqbus.bus.forwarder")


def run_forwarder(
    pub_endpoint: str | None = None,
    sub_endpoint: str | None = None,
    *,
    socket_config: SocketConfig | None = None,
    stats_interval: float | None = 5.0,
    log_interval: float | None = None,
    ready: threading.Event | None = None,
    keys: KeyRing | None = None,
    insecure: bool | None = None,
    max_connections: int = 10_000,
    max_queued_bytes: int | None = DEFAULT_MAX_QUEUED_BYTES,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
    signals: list[int] | None = None,
) -> ForwarderStatistics | None:
    """Run a forwarder in this process until SIGINT or SIGTERM; return its last counters.

    Must be called from the main thread (it installs signal handlers). ``signals``, if given, gets the
    number of each stopping signal received (the CLI exits with 128 + the first).
    ``log_interval`` logs the counters at INFO every so many seconds. SIGHUP
    reloads the allow-list of a forwarder with keys. The process's open-file
    limit is raised to its hard limit first: each connection holds a file.
    """
    raise_file_limit()
    stop = threading.Event()
    reload = threading.Event()
    wake = threading.Event()

    def on_stop(signum: int, *_: object) -> None:
        if signals is not None:
            signals.append(signum)
        stop.set()
        wake.set()

    def on_hup(*_: object) -> None:
        reload.set()
        wake.set()

    previous = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    fwd = Forwarder(
        pub_endpoint,
        sub_endpoint,
        socket_config=socket_config,
        stats_interval=stats_interval,
        keys=keys,
        insecure=insecure,
        max_connections=max_connections,
        max_queued_bytes=max_queued_bytes,
        metrics_port=metrics_port,
        metrics_addr=metrics_addr,
    )
    last: ForwarderStatistics | None = None
    next_log = time.monotonic() + (log_interval or 0)
    try:
        fwd.start()
        if ready is not None:
            ready.set()
        while not stop.is_set():
            wake.wait(0.5)
            wake.clear()
            if reload.is_set():
                reload.clear()
                try:
                    fwd.reload_keys()
                except ZmqbusError as exc:
                    log.error("SIGHUP: the allow-list was not reloaded: %s", exc)
            if log_interval and time.monotonic() >= next_log:
                next_log += log_interval
                last = fwd.statistics()
                log.info("forwarder: %s", last)
        last = fwd.statistics()
    finally:
        fwd.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return last
