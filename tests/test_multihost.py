"""zmqbus across hosts: real processes in three network namespaces joined by a bridge (tests/netbed.py).

Pub/sub with exact loss accounting through a partition, request/reply with
``--rpc-advertise`` failing over when a responder's host is cut off and using it
again when it comes back, and a redundant bus losing nothing when a forwarder's
host is cut off. Skipped, with the reason, where namespaces cannot be made.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from netbed import NetBed, unavailable

_WHY = unavailable()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_WHY is not None, reason=f"no multi-host test bed: {_WHY}"),
    pytest.mark.timeout(150),
]


@pytest.fixture
def bed() -> Iterator[NetBed]:
    b = NetBed(3).up()
    try:
        yield b
    finally:
        b.down()


class Lines:
    """A process's output, line by line, read in a thread (so a wait can time out)."""

    def __init__(self, stream: Any) -> None:
        self._q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self._q.put(line)
        self._q.put(None)

    def wait(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last lines: {self.seen[-5:]}")
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the process ended before {what}; last lines: {self.seen[-5:]}")
            self.seen.append(line.rstrip())
            if predicate(line):
                return line

    def json(self, key: str, timeout: float, what: str) -> dict[str, Any]:
        return json.loads(self.wait(lambda line: line.startswith("{") and f'"{key}"' in line, timeout, what))


def _role(bed: NetBed, host: str, call: str) -> subprocess.Popen[str]:
    return bed.run(host, "-c", f"import netbed_roles as r; r.{call}")


def _forwarder(bed: NetBed, host: str) -> tuple[str, str]:
    a = bed.addr(host)
    pub, sub = f"tcp://{a}:5570", f"tcp://{a}:5571"
    bed.zmqbus(host, "--insecure", "forwarder", "--pub", pub, "--sub", sub, "--stats-interval", "0")
    return pub, sub


def test_pubsub_across_hosts_loses_nothing_through_a_partition(bed: NetBed) -> None:
    """The subscriber's host cut off for 2 s mid-stream: everything arrives, in order, once (what the
    cut cost, if anything, is fetched from the publisher on its own host, at its advertised address)."""
    pub, sub = _forwarder(bed, "h1")
    n = 4000
    receiver = Lines(_role(bed, "h3", f"subscriber({pub!r}, {sub!r}, 'bed.data', {n}, 60)").stdout)
    receiver.json("ready", 40, "the subscriber on h3 to reach the forwarder on h1")
    sender = Lines(_role(bed, "h2", f"publisher({pub!r}, {sub!r}, 'bed.data', {n}, 1000)").stdout)
    sender.wait(lambda line: '"sent": 1000' in line, 30, "a quarter of the stream")
    bed.partition("h3")
    time.sleep(2.0)  # the fault's length, not a wait for something to happen
    bed.heal("h3")
    sender.json("done", 60, "the publisher to finish")
    result = receiver.json("got", 90, "the subscriber's account")
    got, gaps = result["got"], result["gaps"]
    assert got == list(range(n)), f"in order, each once, none lost: {len(got)} of {n}, {gaps} counted lost"
    assert gaps == 0


def test_requests_fail_over_when_a_responders_host_is_cut_off_and_come_back(bed: NetBed) -> None:
    pub, sub = _forwarder(bed, "h1")
    for host in ("h2", "h3"):
        proc = bed.zmqbus(
            host,
            "--insecure",
            "run",
            "netbed_roles:Echo",
            "--pub",
            pub,
            "--sub",
            sub,
            "--rpc-bind",
            "tcp://0.0.0.0:*",
            "--rpc-advertise",
            bed.addr(host),
        )
        Lines(proc.stderr).wait(lambda line: "zmqbus run: echo ready" in line, 40, f"the responder on {host}")
    calls = Lines(_role(bed, "h1", f"caller({pub!r}, {sub!r}, 90, 0.05, 4.0)").stdout)
    by: set[str] = set()
    while len(by) < 2:  # both hosts serve, each reached at its advertised address
        by.add(calls.json("ok", 30, "replies from both responders")["by"])
    bed.partition("h2")
    outcomes: list[dict[str, Any]] = []
    while not (len(outcomes) >= 10 and all(o.get("instances") == 1 for o in outcomes[-10:])):
        outcomes.append(calls.json("ok", 30, "requests while h2 is cut off"))
    assert all(o["ok"] for o in outcomes), [o for o in outcomes if not o["ok"]]
    assert max(o["ms"] for o in outcomes) < 4000, "every request within its deadline"
    survivor = outcomes[-1]["by"]
    bed.heal("h2")
    back = calls.wait(
        lambda line: '"ok": true' in line and survivor not in line,
        40,
        "the responder on h2 to serve again once its host is back",
    )
    assert json.loads(back)["by"] in by


def test_a_redundant_bus_across_hosts_loses_nothing_when_a_forwarders_host_is_cut_off(bed: NetBed) -> None:
    (p1, s1), (p2, s2) = _forwarder(bed, "h1"), _forwarder(bed, "h2")
    pub, sub = f"{p1},{p2}", f"{s1},{s2}"
    n = 3000
    receiver = Lines(_role(bed, "h3", f"subscriber({pub!r}, {sub!r}, 'bed.data', {n}, 60)").stdout)
    receiver.json("ready", 40, "the subscriber to reach the forwarders")
    sender = Lines(_role(bed, "h3", f"publisher({pub!r}, {sub!r}, 'bed.data', {n}, 1000)").stdout)
    sender.wait(lambda line: '"sent": 1000' in line, 30, "a third of the stream")
    bed.partition("h1")  # one forwarder's host vanishes mid-stream
    sender.json("done", 60, "the publisher to finish")
    result = receiver.json("got", 90, "the subscriber's account")
    assert sorted(result["got"]) == list(range(n)) and len(result["got"]) == n, "each message exactly once"
    assert result["gaps"] == 0 and result["duplicates"] > 0
