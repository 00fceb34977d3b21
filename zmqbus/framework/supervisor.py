"""Supervising a topology: a forwarder and component replicas as processes, kept running.

:class:`Supervisor` starts a forwarder and component replicas (spawned processes, a fresh ZeroMQ
context in each), restarts a process that dies (backoff doubling from 0.5 s up to 10 s) unless it
crash-loops (more than ``crash_limit`` restarts in 60 s), and stops everything in order: the
components first, the forwarder last.

A component that is alive but no longer runs (stopped with SIGSTOP, its event loop blocked, a
deadlock) is found by its liveness check: its event loop beats a heartbeat in shared memory every
:data:`~.runner.BEAT_INTERVAL` (1 s); one that has not beaten for ``hung_after`` seconds (default
10: ten missed beats; at start-up, the start-up timeout on top) is killed by pid with SIGKILL, then
restarted like any process that died (the same backoff and crash-loop count).
"""

from __future__ import annotations

import logging
import multiprocessing.process
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core import config
from .procs import forwarder_process, spawn, stop_process
from .runner import STARTUP_TIMEOUT, ComponentSpec, Topology, component_main

__all__ = ["Supervisor", "HUNG_AFTER"]

log = logging.getLogger("zmqbus.framework.runner")

#: Seconds without a heartbeat after which a running component counts as hung (ten missed beats).
HUNG_AFTER = 10.0
_mp = multiprocessing.get_context("spawn")


@dataclass(eq=False)
class _Managed:
    label: str
    start: Callable[[Any], multiprocessing.process.BaseProcess]
    proc: multiprocessing.process.BaseProcess | None = None
    restarts: list[float] = field(default_factory=list)
    next_start: float = 0.0
    given_up: bool = False
    #: A component's heartbeat (shared memory; None for a forwarder) and when its process started.
    beat: Any = None
    started: float = 0.0

    def launch(self) -> multiprocessing.process.BaseProcess:
        if self.beat is not None:
            self.beat.value = 0.0
        self.started = time.monotonic()
        self.proc = self.start(self.beat)
        return self.proc


class Supervisor:
    """Starts, watches and stops the processes of a topology (see the module docstring)."""

    def __init__(
        self,
        topology: Topology,
        *,
        crash_limit: int = 5,
        log_level: int = logging.WARNING,
        on_event: Callable[[str], None] | None = None,
        keep_going: bool = False,
        clock: Callable[[], float] = time.monotonic,
        hung_after: float | None = HUNG_AFTER,
    ) -> None:
        self.topology = topology
        #: Seconds without a heartbeat after which a component is killed and restarted (None: never).
        self.hung_after = hung_after
        self.crash_limit = crash_limit
        self.keep_going = keep_going
        #: Why supervision must end (a process it gave up on), else None. A
        #: forwarder given up on always ends it; a component only without ``keep_going``.
        self.failure: str | None = None
        self._clock = clock
        self.on_event = on_event or (lambda text: log.info("%s", text))
        self._forwarders: list[_Managed] = []
        self._components: list[_Managed] = []
        t = topology
        if t.forwarder:
            pairs = list(zip(config.split_endpoints(t.pub), config.split_endpoints(t.sub), strict=True))
            for i, (pub, sub) in enumerate(pairs):  # several: a redundant bus, one forwarder per pair
                label = "forwarder" if len(pairs) == 1 else f"forwarder#{i + 1}"
                self._forwarders.append(_Managed(label, _forwarder_starter(pub, sub)))
        for spec in t.components:
            for r in range(spec.replicas):
                label = f"{spec.name or spec.cls.rsplit(':', 1)[1]}#{r + 1}"
                beat = _mp.Value("d", 0.0, lock=False)
                self._components.append(_Managed(label, _starter(spec, t, log_level, r + 1), beat=beat))

    @property
    def managed(self) -> list[_Managed]:
        return self._forwarders + self._components

    def pids(self) -> dict[str, int | None]:
        return {m.label: (m.proc.pid if m.proc is not None else None) for m in self.managed}

    def start(self) -> None:
        for m in self.managed:
            proc = m.launch()
            self.on_event(f"started {m.label} (pid {proc.pid})")

    def check(self) -> None:
        """Restart processes that died (call it periodically); set :attr:`failure` on giving up."""
        now = self._clock()
        for m in self.managed:
            if m.given_up or m.proc is None:
                continue
            if m.proc.is_alive():
                self._check_liveness(m)
                continue
            if m.next_start == 0.0:
                m.restarts = [t for t in m.restarts if now - t < 60.0]
                if len(m.restarts) >= self.crash_limit:
                    m.given_up = True
                    reason = (
                        f"{m.label} crash-loops ({len(m.restarts)} restarts in 60 s, last exit code "
                        f"{m.proc.exitcode}): giving up on it"
                    )
                    self.on_event(reason)
                    if m in self._forwarders or not self.keep_going:
                        self.failure = self.failure or reason
                    continue
                delay = min(10.0, 0.5 * 2 ** len(m.restarts))
                m.next_start = now + delay
                self.on_event(f"{m.label} (pid {m.proc.pid}) exited with {m.proc.exitcode}; restarting in {delay:g} s")
            elif now >= m.next_start:
                m.restarts.append(now)
                m.next_start = 0.0
                proc = m.launch()
                self.on_event(f"restarted {m.label} (pid {proc.pid})")

    def _check_liveness(self, m: _Managed) -> None:
        """Kill (SIGKILL, by pid) a component whose heartbeat stopped: the next check restarts it."""
        if self.hung_after is None or m.beat is None or m.proc is None or m.proc.pid is None:
            return
        now, last = time.monotonic(), m.beat.value
        if last == 0.0:  # not yet beating: start-up (imports, the forwarder) may take its timeout
            if now - m.started < STARTUP_TIMEOUT + self.hung_after:
                return
            silent = now - m.started
        elif now - last < self.hung_after:
            return
        else:
            silent = now - last
        self.on_event(
            f"{m.label} (pid {m.proc.pid}) stopped answering its liveness check (no heartbeat for "
            f"{silent:.1f} s); killing it"
        )
        try:
            os.kill(m.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        m.proc.join(5.0)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the components (then the forwarder), SIGKILL what does not exit in time."""
        for m in self._components:
            if m.proc is not None and m.proc.pid is not None and m.proc.is_alive():
                os.kill(m.proc.pid, signal.SIGTERM)
        deadline = self._clock() + timeout
        for m in self._components:
            if m.proc is not None:
                stop_process(m.proc, timeout=max(0.1, deadline - self._clock()))
        for m in self._forwarders:
            if m.proc is not None:
                stop_process(m.proc, timeout=5.0)
        self.on_event("all processes stopped")

    def run_until(self, stop: Callable[[], bool], interval: float = 0.2) -> None:
        """Supervise until ``stop()`` is true or supervision fails (see :attr:`failure`)."""
        while not stop() and self.failure is None:
            self.check()
            time.sleep(interval)


def _forwarder_starter(pub: str, sub: str) -> Callable[[Any], multiprocessing.process.BaseProcess]:
    return lambda beat: forwarder_process(pub, sub, stats_interval=5.0)


def _starter(
    spec: ComponentSpec, topology: Topology, log_level: int, replica: int = 1
) -> Callable[[Any], multiprocessing.process.BaseProcess]:
    def start(beat: Any) -> multiprocessing.process.BaseProcess:
        return spawn(
            component_main,
            spec.cls,
            spec.name,
            topology.pub,
            topology.sub,
            log_level,
            10.0,
            STARTUP_TIMEOUT,
            None if spec.metrics_port is None else spec.metrics_port + replica - 1,
            "127.0.0.1",
            replica,
            beat,
            name=f"zmqbus-{spec.name or spec.cls}",
        )

    return start
