"""Answers an operator can trust (issue 24): checks that catch typos, no shadowed packages, fast and exact
discovery answers, clean shutdowns, standard metrics, a word when the forwarder goes and comes back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_observability import Flaky
from test_ops import Doubler, cli

from zmqbus import MessageBroker, RemoteError
from zmqbus.bus.metrics import serve_metrics
from zmqbus.bus.samples import DECODE_REASONS, REFUSAL_REASONS, SERVED_OUTCOMES
from zmqbus.core.stats import REQUEST_OUTCOMES
from zmqbus.framework.procs import free_port, tcp_endpoints
from zmqbus.testing import TestBus

from conftest import end_process

CLI = [sys.executable, "-m", "zmqbus.cli"]
#: How the installed console script starts: the current folder is not on its import path.
CONSOLE_SCRIPT = [sys.executable, "-c", "import sys; sys.path.pop(0); from zmqbus.cli import main; main()"]


# -- up --check catches every kind of typo, as up would ---------------------------------------------


@pytest.mark.parametrize(
    ("pub", "says"),
    [
        ("tcp//127.0.0.1:59729", "no '://'"),
        ("tcp://127.0.0.1", "names no port"),
        ("tcp://127.0.0.1:99999", "port must be a number from 1 to 65535"),
        ("tcp://127.0.0.1:http", "port must be a number"),
        ("tpc://127.0.0.1:5570", "unknown transport 'tpc'"),
        ("tcp://local host:5570", "is not a host name or address"),
        ("inproc://bus", "never leave their process"),
        ("ipc:///no/such/folder/bus.pub", "does not exist"),
    ],
)
def test_up_check_refuses_a_bad_endpoint(tmp_path: Path, pub: str, says: str) -> None:
    topo = tmp_path / "topology.toml"
    topo.write_text(f'[bus]\npub = "{pub}"\nsub = "tcp://127.0.0.1:5571"\n')
    done = subprocess.run([*CLI, "up", "--check", str(topo)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and says in done.stderr, done.stderr
    assert "valid;" not in done.stdout


def test_up_check_refuses_a_class_it_cannot_import_and_accepts_a_good_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[component]]\nclass = "zmqbus.components.ingest:NoSuchClass"\n')
    done = subprocess.run([*CLI, "up", "--check", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "cannot load 'zmqbus.components.ingest:NoSuchClass'" in done.stderr
    good = tmp_path / "good.toml"
    good.write_text(
        f'[bus]\npub = "ipc://{tmp_path}/bus.pub"\nsub = "ipc://{tmp_path}/bus.sub"\n'
        '[[component]]\nclass = "zmqbus.components.ingest:ChunkAnalyzer"\n'
    )
    done = subprocess.run([*CLI, "up", "--check", str(good)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "valid;" in done.stdout, done.stderr


# -- the current folder never shadows an installed package ------------------------------------------


@pytest.mark.slow
def test_up_in_a_folder_named_like_an_installed_package_runs_the_installed_one(tmp_path: Path) -> None:
    """A checkout's zmqbus/ folder (no components in it) beside an installed zmqbus: `zmqbus up` must run
    zmqbus.components from the installed package, in its component processes too."""
    (tmp_path / "zmqbus").mkdir()
    (tmp_path / "zmqbus" / "__init__.py").write_text("")  # what `cd checkout` puts first on the path
    pub, sub = tcp_endpoints()
    (tmp_path / "topology.toml").write_text(
        f'[bus]\npub = "{pub}"\nsub = "{sub}"\n[[component]]\nclass = "zmqbus.components.ingest:ChunkAnalyzer"\n'
    )
    proc = subprocess.Popen([*CONSOLE_SCRIPT, "up", "topology.toml"], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:

        async def served() -> int:
            async with MessageBroker(pub, sub) as b:
                await b.ready(30)
                return await b.wait_for_service("ingest.analyze", timeout=30)

        assert asyncio.run(served()) == 1
    finally:
        end_process(proc)
        _, err = proc.communicate(timeout=10)
    assert "No module named 'zmqbus.components'" not in err, err


# -- req and ping: answers as soon as discovery can know, and exact counts --------------------------


@pytest.mark.slow
async def test_req_says_no_responder_within_the_discovery_window(bus: TestBus) -> None:
    started = time.monotonic()
    done = await asyncio.to_thread(cli, bus, "req", "no.such.service")  # the default --timeout: 10 s
    took = time.monotonic() - started
    assert done.returncode == 4 and "NoResponder" in done.stderr, done.stderr
    assert took < 6.0, f"took {took:.1f} s: the whole timeout, not the 1.5 s discovery window"


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_ping_counts_every_live_instance_30_times_in_30(bus: TestBus) -> None:
    await bus.spawn("zmqbus.components.ingest:ChunkAnalyzer", replicas=3)

    def ping() -> subprocess.CompletedProcess[str]:
        return cli(bus, "ping", "--service", "ingest.analyze", timeout=60)

    with ThreadPoolExecutor(6) as pool:
        runs = await asyncio.gather(*(asyncio.to_thread(ping) for _ in range(30)))
    counts = [r.stdout.count("ok, 3 instance(s)") for r in runs]
    assert counts == [1] * 30, [r.stdout + r.stderr for r in runs if "ok, 3 instance(s)" not in r.stdout][:2]
    assert not [r.stderr for r in runs if "ERROR" in r.stderr or "Traceback" in r.stderr]
    del pool


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_no_command_logs_an_error_on_a_clean_run_30_times_each(bus: TestBus) -> None:
    from zmqbus.components.error_handler import ErrorHandler

    await bus.start_all(Doubler, ErrorHandler)
    commands = [
        ["ls"],
        ["req", "math.double", "--content", '{"x": 2}'],
        ["ping", "--service", "math.double"],
        ["send", "ops.hello", "--content", "{}"],
        ["watch", "ops.#", "--timeout", "0.3"],
        ["stats"],
        ["dlq", "ls"],
    ]
    runs = [c for c in commands for _ in range(30)]
    results = []
    for i in range(0, len(runs), 10):  # ten at a time
        results += await asyncio.gather(*(asyncio.to_thread(cli, bus, *args, timeout=60) for args in runs[i : i + 10]))
    failed = [(args, r.returncode, r.stderr) for args, r in zip(runs, results, strict=True) if r.returncode != 0]
    assert not failed, failed[:3]
    noisy = [
        (args, r.stderr)
        for args, r in zip(runs, results, strict=True)
        if "ERROR" in r.stderr or "Traceback" in r.stderr
    ]
    assert not noisy, noisy[:3]


# -- metrics by the Prometheus conventions ---------------------------------------------------------------


def scrape(port: int) -> dict[str, Any]:
    """Family name -> family, parsed by prometheus_client's own parser."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def values(family: Any, suffix: str = "", **labels: str) -> list[float]:
    return [
        s.value
        for s in family.samples
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def label_values(family: Any, label: str) -> set[str]:
    return {s.labels[label] for s in family.samples if label in s.labels}


async def test_a_components_metrics_exist_at_zero_are_disjoint_and_per_service(bus: TestBus) -> None:
    half = await bus.start(Flaky)  # calc.half: odd numbers raise
    caller, responder = serve_metrics(0, bus.client), serve_metrics(0, half.message_broker)
    try:
        before = await asyncio.to_thread(scrape, caller.port)
        requests = before["zmqbus_requests"]
        assert requests.type == "counter"
        assert {s.labels["outcome"] for s in requests.samples if s.labels.get("service") == "calc.half"} == set(
            REQUEST_OUTCOMES
        )
        assert values(requests, "_total", service="calc.half") == [0.0] * len(REQUEST_OUTCOMES)
        latency = before["messaging_client_operation_duration_seconds"]
        assert latency.type == "histogram"
        assert values(latency, "_count", messaging_destination_name="calc.half") == [0.0]
        decode = before["zmqbus_decode_errors"]
        assert label_values(decode, "reason") == set(DECODE_REASONS) and set(values(decode, "_total")) == {0.0}
        for name, kind in (
            ("process_resident_memory_bytes", "gauge"),
            ("process_start_time_seconds", "gauge"),
            ("process_open_fds", "gauge"),
            ("process_cpu_seconds", "counter"),
        ):
            assert before[name].type == kind and values(before[name], "_total" if kind == "counter" else "")

        served = (await asyncio.to_thread(scrape, responder.port))["zmqbus_served"]
        assert label_values(served, "outcome") == set(SERVED_OUTCOMES) and set(values(served, "_total")) == {0.0}

        for x in (2, 4, 6, 3):
            try:
                await bus.request("calc.half", {"x": x})
            except RemoteError:
                pass
        after = await asyncio.to_thread(scrape, caller.port)
        assert values(after["zmqbus_requests"], "_total", service="calc.half", outcome="ok") == [3.0]
        assert values(after["zmqbus_requests"], "_total", service="calc.half", outcome="remote_error") == [1.0]
        buckets = [
            (float(s.labels["le"]), s.value)
            for s in after["messaging_client_operation_duration_seconds"].samples
            if s.name.endswith("_bucket") and s.labels.get("messaging_destination_name") == "calc.half"
        ]
        p99 = next(le for le, n in sorted(buckets) if n >= 0.99 * 4)  # histogram_quantile's bucket
        assert 0 < p99 <= 10.0
        served = (await asyncio.to_thread(scrape, responder.port))["zmqbus_served"]
        assert sum(values(served, "_total")) == 4  # disjoint outcomes: the sum is every request, once
        assert values(served, "_total", outcome="ok") == [3.0] and values(served, "_total", outcome="failed") == [1.0]
    finally:
        caller.close()
        responder.close()


@pytest.mark.slow
def test_a_forwarders_metrics_exist_at_zero_with_the_process_collector() -> None:
    pub, sub = tcp_endpoints()
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "forwarder", "--pub", pub, "--sub", sub, "--metrics-port", str(port), "--stats-interval", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # the endpoint is up before the bus binds: its own series come a moment later
            try:
                families = scrape(port)
                if "zmqbus_forwarder_refused" in families:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no forwarder metrics"
            time.sleep(0.05)
        refused = families["zmqbus_forwarder_refused"]
        assert refused.type == "counter" and label_values(refused, "reason") == set(REFUSAL_REASONS)
        assert set(values(refused, "_total")) == {0.0}
        assert values(families["process_resident_memory_bytes"]) and values(families["process_open_fds"])
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)


# -- a word when the forwarder goes, and when it is back ---------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_component_says_once_that_it_lost_its_forwarder_and_once_that_it_is_back(
    spawn_forwarder: Any, tmp_path: Path
) -> None:
    pub, sub = tcp_endpoints()
    forwarder = spawn_forwarder(pub, sub, stats_interval=None)
    log = tmp_path / "component.log"
    with open(log, "w") as out:
        comp = subprocess.Popen(
            [*CLI, "--log-level", "INFO", "run", "zmqbus.components.ingest:ChunkAnalyzer", "--pub", pub, "--sub", sub],
            stderr=out,
            text=True,
        )
    try:

        def wait_for(text: str, timeout: float = 30.0) -> None:
            deadline = time.monotonic() + timeout
            while text not in log.read_text():
                assert time.monotonic() < deadline, f"no {text!r} in:\n{log.read_text()}"
                time.sleep(0.1)

        wait_for("component chunk_analyzer started")
        os.kill(forwarder.pid, signal.SIGKILL)
        forwarder.join(10)
        wait_for("lost the forwarder at")
        time.sleep(1.5)  # away a while longer: still one warning
        spawn_forwarder(pub, sub, stats_interval=None)
        wait_for("is back after")
        time.sleep(2.5)  # heartbeats flow again: no more words, and no gap reported for control topics
    finally:
        os.kill(comp.pid, signal.SIGTERM)
        comp.wait(30)
    text = log.read_text()
    assert text.count("lost the forwarder at") == 1 and text.count("is back after") == 1, text
    assert "WARNING" in text.split("lost the forwarder at")[0].splitlines()[-1]
    assert "lost 0" not in text and "on topic '_zmqbus" not in text, text


def test_a_topologys_metrics_port_leaves_a_port_for_each_replica() -> None:
    from zmqbus.core.topology import topology_errors

    ok = {"component": [{"class": "m:C", "replicas": 3, "metrics_port": 9470}]}
    assert topology_errors(ok) == []
    too_high = {"component": [{"class": "m:C", "replicas": 3, "metrics_port": 65534}]}
    assert [
        "metrics_port must leave a port from 1 to 65535 for each replica" in e for e in topology_errors(too_high)
    ] == [True]
