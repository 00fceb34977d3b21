"""The ``zmqbus soak`` driver: real processes over tcp loopback, faults on a timer, one verdict.

It starts a forwarder, subscribers, responders, publishers and a caller (each
its own spawned process), restarts the forwarder (SIGKILL, then a new one on
the same endpoints) and kills a responder (SIGKILL, then a replacement) on
their timers, then stops the faults, lets the bus settle, stops everyone in
order and classifies every message and request (:mod:`.classify`). Every
process it starts is ended by its pid, whatever happens.

The verdict fails on any loss (recovery is on: nothing may be lost, counted
or not), duplicate or out-of-order delivery, double execution on one
instance, or undocumented error. ``kill_subscriber_every`` kills a
subscriber with SIGKILL and starts it again with the same stream positions
(it must miss nothing published while it was down).
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import random
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..framework.procs import forwarder_process, spawn, stop_process, tcp_endpoints
from ..soak import roles
from .classify import classify_pubsub, classify_requests, longest_pauses

__all__ = ["SoakOptions", "SoakError", "run_soak", "format_report"]

_mp = multiprocessing.get_context("spawn")


class SoakError(Exception):
    """The soak itself could not run (a role did not start, or left no report)."""


@dataclass
class SoakOptions:
    duration: float = 30.0
    publishers: int = 2
    subscribers: int = 2
    responders: int = 2
    restart_forwarder_every: float = 0.0  # seconds; 0: never (with several forwarders: one at a time, in turn)
    kill_responder_every: float = 0.0
    kill_subscriber_every: float = 0.0  # SIGKILL a subscriber and start it again (same streams, resumed)
    rate: float = 500.0  # messages per second per publisher
    request_rate: float = 50.0  # requests per second
    settle: float = 2.0  # seconds between the last fault and stopping the publishers (reconnections finish)
    forwarders: int = 1  # more than one: a redundant bus, every process connected to all


def _rss_kb(pid: int | None) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


@dataclass
class _Proc:
    label: str
    proc: Any
    stop: Any = None
    rss_start: int | None = None
    rss_end: int | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class _Run:
    opts: SoakOptions
    workdir: str
    progress: Callable[[str], None]
    pub: str = ""
    sub: str = ""
    pairs: list[tuple[str, str]] = field(default_factory=list)  # one per forwarder
    procs: list[_Proc] = field(default_factory=list)
    forwarders: list[_Proc] = field(default_factory=list)
    restarts: list[float] = field(default_factory=list)
    kills: int = 0
    subscriber_kills: int = 0

    def start_role(self, label: str, target: Callable[..., Any], *args: Any, timeout: float = 60.0) -> _Proc:
        ready, stop = _mp.Event(), _mp.Event()
        p = _Proc(
            label, spawn(target, self.pub, self.sub, *args, self.workdir, ready, stop, name=f"soak-{label}"), stop
        )
        self.procs.append(p)
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if not p.proc.is_alive() or time.monotonic() > deadline:
                raise SoakError(f"{label} did not get ready (exit code {p.proc.exitcode})")
        p.rss_start = _rss_kb(p.proc.pid)
        return p

    def start_forwarder(self, index: int) -> None:
        pub, sub = self.pairs[index]
        proc = _Proc(
            "forwarder" if len(self.pairs) == 1 else f"forwarder-{index}",
            forwarder_process(pub, sub, stats_interval=None),
        )
        if index < len(self.forwarders):
            self.forwarders[index] = proc
        else:
            self.forwarders.append(proc)
        self.procs.append(proc)

    def restart_forwarder(self) -> None:
        index = len(self.restarts) % len(self.forwarders)  # in turn: on a redundant bus one is always up
        old = self.forwarders[index].proc
        self.forwarders[index].rss_end = _rss_kb(old.pid)
        os.kill(old.pid, signal.SIGKILL)
        old.join(10)
        self.restarts.append(time.monotonic())
        self.start_forwarder(index)
        self.progress(f"killed and restarted {self.forwarders[index].label} ({len(self.restarts)})")

    def kill_responder(self, index: int) -> None:
        live = [p for p in self.procs if p.label.startswith("responder") and p.proc.is_alive()]
        victim = random.choice(live)
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.join(10)
        self.kills += 1
        self.start_role(f"responder-{index}", roles.responder, f"responder-{index}")
        self.progress(f"killed {victim.label} (pid {victim.proc.pid}), started responder-{index}")

    def kill_subscriber(self) -> None:
        live = [p for p in self.procs if p.label.startswith("subscriber") and p.proc.is_alive()]
        victim = random.choice(live)
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.join(10)
        self.subscriber_kills += 1
        index = int(victim.label.rsplit("-", 1)[1])
        topics = self.opts.publishers * roles.TOPICS_PER_PUBLISHER
        self.start_role(victim.label, roles.subscriber, index, topics)  # the same streams, resumed
        self.progress(f"killed {victim.label} (pid {victim.proc.pid}) and started it again")

    def stop_roles(self, prefix: str, timeout: float = 45.0) -> None:
        group = [p for p in self.procs if p.label.startswith(prefix) and p.proc.is_alive()]
        for p in group:
            p.rss_end = _rss_kb(p.proc.pid)
            p.stop.set()
        deadline = time.monotonic() + timeout
        for p in group:
            p.proc.join(max(0.1, deadline - time.monotonic()))

    def end_all(self) -> None:
        for p in self.procs:
            if p.proc.is_alive():
                stop_process(p.proc, timeout=5.0)


def run_soak(opts: SoakOptions, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run one soak (see the module docstring) and return its report; ``report["passed"]`` is the verdict."""
    with tempfile.TemporaryDirectory(prefix="zmqbus-soak-") as workdir:
        run = _Run(opts, workdir, progress)
        run.pairs = [tcp_endpoints() for _ in range(max(1, opts.forwarders))]
        run.pub, run.sub = ",".join(p for p, _ in run.pairs), ",".join(s for _, s in run.pairs)
        try:
            _drive(run)
            return _report(run)
        finally:
            run.end_all()


def _drive(run: _Run) -> None:
    opts = run.opts
    for i in range(len(run.pairs)):
        run.start_forwarder(i)
    for i in range(opts.subscribers):
        run.start_role(f"subscriber-{i}", roles.subscriber, i, opts.publishers * roles.TOPICS_PER_PUBLISHER)
    for i in range(opts.responders):
        run.start_role(f"responder-{i}", roles.responder, f"responder-{i}")
    for i in range(opts.publishers):
        run.start_role(f"publisher-{i}", roles.publisher, i, opts.rate)
    run.start_role("caller", roles.caller, opts.request_rate)
    run.progress(f"running for {opts.duration:g} s on {run.pub} / {run.sub}")
    start = time.monotonic()
    next_restart = start + opts.restart_forwarder_every if opts.restart_forwarder_every else float("inf")
    next_kill = start + opts.kill_responder_every if opts.kill_responder_every else float("inf")
    next_sub_kill = start + opts.kill_subscriber_every if opts.kill_subscriber_every else float("inf")
    index = opts.responders
    while True:
        now = time.monotonic()
        for fwd in run.forwarders:
            if fwd.rss_start is None and now - fwd.started >= 1.0:
                fwd.rss_start = _rss_kb(fwd.proc.pid)  # once it is up and serving
        if now - start >= opts.duration:
            break
        if now >= next_restart:
            run.restart_forwarder()
            next_restart += opts.restart_forwarder_every
        if now >= next_kill:
            run.kill_responder(index)
            index += 1
            next_kill += opts.kill_responder_every
        if now >= next_sub_kill:
            run.kill_subscriber()
            next_sub_kill += opts.kill_subscriber_every
        time.sleep(0.05)
    time.sleep(opts.settle)  # queued messages flush, reconnections finish
    run.progress("stopping: publishers and caller first")
    run.stop_roles("publisher")
    run.stop_roles("caller")
    for fwd in run.forwarders:
        fwd.rss_end = _rss_kb(fwd.proc.pid)
    run.stop_roles("subscriber")
    run.stop_roles("responder")


def _load(workdir: str, label: str) -> dict[str, Any]:
    path = os.path.join(workdir, label + ".json")
    if not os.path.exists(path):
        raise SoakError(f"{label} left no report (did it crash?)")
    with open(path) as f:
        result: dict[str, Any] = json.load(f)
    return result


def _report(run: _Run) -> dict[str, Any]:
    opts = run.opts
    publishers = [_load(run.workdir, f"publisher-{i}") for i in range(opts.publishers)]
    subscribers = [_load(run.workdir, f"subscriber-{i}") for i in range(opts.subscribers)]
    executions: dict[str, list[str]] = {}
    for path in glob.glob(os.path.join(run.workdir, "exec-*.log")):
        with open(path) as f:
            executions[os.path.basename(path)[5:-4]] = [line.strip() for line in f if line.strip()]
    pubsub = classify_pubsub(publishers, subscribers)
    requests = classify_requests(_load(run.workdir, "caller")["outcomes"], executions)
    pauses = longest_pauses(run.restarts, [s["arrivals"] for s in subscribers])
    # Recovery is on in every role (the default): a message lost at all, counted or not, or one delivered
    # out of its stream's order, fails the soak too.
    passed = (
        pubsub["lost_silently"] == 0
        and pubsub["lost_counted"] == 0
        and pubsub["duplicated"] == 0
        and pubsub["out_of_order"] == 0
        and pubsub["unexpected"] == 0
        and requests["executed_twice_on_one_instance"] == 0
        and requests["undocumented"] == 0
    )
    return {
        "options": vars(opts),
        "passed": passed,
        "forwarder_restarts": len(run.restarts),
        "responder_kills": run.kills,
        "subscriber_kills": run.subscriber_kills,
        "pubsub": pubsub,
        "requests": requests,
        "pause_after_restart_s": {"each": pauses, "max": max(pauses, default=0.0)},
        "rss_kb": {
            p.label + ("" if not p.label.startswith("forwarder") else f"@{p.proc.pid}"): [p.rss_start, p.rss_end]
            for p in run.procs
            if p.rss_start is not None
        },
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    ps, rq = report["pubsub"], report["requests"]
    lines = [
        f"soak: {report['options']['duration']:g} s, {report['options'].get('forwarders', 1)} forwarder(s), "
        f"{report['forwarder_restarts']} forwarder kill(s) and restart(s), "
        f"{report['responder_kills']} responder kill(s), {report.get('subscriber_kills', 0)} subscriber kill(s)",
        f"pub/sub: delivered {ps['delivered']:,}, lost and counted {ps['lost_counted']:,}, lost and reported by the "
        f"publisher {ps['lost_reported']:,}, refused {ps['refused']:,}, LOST SILENTLY {ps['lost_silently']:,}, "
        f"DUPLICATED {ps['duplicated']:,}, OUT OF ORDER {ps.get('out_of_order', 0):,} (subscribers' gap counters: "
        f"{ps['gaps_counted_by_subscribers']:,}, resets: {ps['sequence_resets']}, recovered: "
        f"{ps.get('recovered', 0):,})",
        f"requests: {rq['sent']:,} sent: {rq['outcomes']}; undocumented errors {rq['undocumented']}, "
        f"EXECUTED TWICE ON ONE INSTANCE {rq['executed_twice_on_one_instance']}, on several instances "
        f"{rq['executed_on_several_instances']}",
        f"longest pause in delivery after a restart: {report['pause_after_restart_s']['max']:.3f} s "
        f"(each: {report['pause_after_restart_s']['each']})",
        "RSS kB (start, end): " + ", ".join(f"{k} {v[0]}->{v[1]}" for k, v in report["rss_kb"].items()),
        "PASSED" if report["passed"] else "FAILED",
    ]
    return "\n".join(lines)
