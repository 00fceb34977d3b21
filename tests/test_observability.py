"""Prometheus metrics (scraped over HTTP) and OpenTelemetry traces (from the SDK), on a real bus."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from zmqbus import Forwarder, MessageBroker, ProcessingMessage, Processor, RemoteError, service
from zmqbus.bus import tracing
from zmqbus.bus.metrics import serve_metrics
from zmqbus.framework.procs import free_port, tcp_endpoints
from zmqbus.testing import TestBus, wait_until


def scrape(port: int) -> dict[str, float]:
    """``name{labels}`` -> value, for every sample of the endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def sample(samples: dict[str, float], metric: str, **labels: str) -> float:
    """The value of the one sample of ``metric`` whose labels include ``labels``."""
    found = [
        v
        for k, v in samples.items()
        if k.split("{")[0] == metric and all(f'{lk}="{lv}"' in k for lk, lv in labels.items())
    ]
    assert len(found) == 1, (metric, labels, [k for k in samples if k.startswith(metric)])
    return found[0]


class Flaky(Processor):
    @service("calc.half")
    async def half(self, message: ProcessingMessage) -> Any:
        if message.content["x"] % 2:
            raise ValueError("odd")
        return message.content["x"] // 2


async def test_a_brokers_metrics_count_what_it_did(bus: TestBus) -> None:
    await bus.start(Flaky)
    client = bus.client
    server = serve_metrics(0, client)
    try:
        rec = await bus.record("m.#")
        for i in range(7):
            await bus.publish("m.x", {"i": i})
        await rec.wait_for(count=7)
        assert await bus.request("calc.half", {"x": 4}) == 2
        with pytest.raises(RemoteError):
            await bus.request("calc.half", {"x": 3})
        s = await asyncio.to_thread(scrape, server.port)
        who = {"name": "test", "replica": "1", "messaging_system": "zmqbus"}  # stable across restarts
        assert sample(s, "zmqbus_client_info", client_id=client.client_id, **who) == 1
        assert sample(s, "messaging_client_sent_messages_total", **who) >= 7
        assert sample(s, "messaging_client_consumed_messages_total", **who) >= 7
        assert sample(s, "zmqbus_gaps_total", **who) == 0
        assert sample(s, "zmqbus_requests_total", outcome="ok", **who) == 1
        assert sample(s, "zmqbus_requests_total", outcome="remote_error", **who) == 1
        assert sample(s, "messaging_client_operation_duration_seconds_count", operation="request", **who) == 2
        assert sample(s, "messaging_client_operation_duration_seconds_bucket", le="+Inf", **who) == 2
        # handler durations: timed from the moment metrics were served
        assert sample(s, "messaging_process_duration_seconds_count", **who) >= 7
    finally:
        server.close()


def test_a_forwarders_metrics_over_its_command_line() -> None:
    """`zmqbus forwarder --metrics-port` serves its counters; a garbage connection shows up in them."""
    pub, sub = tcp_endpoints()
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zmqbus.cli",
            "forwarder",
            "--pub",
            pub,
            "--sub",
            sub,
            "--metrics-port",
            str(port),
            "--stats-interval",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        async def traffic() -> None:
            async with MessageBroker(pub, sub) as b:
                got: list[Any] = []
                b.subscribe("t", "x.#", got.append)
                await b.ready(20)
                for _ in range(5):
                    await b.publish(ProcessingMessage("x.y", {}))
                await wait_until(lambda: len(got) == 5)

        asyncio.run(traffic())
        s = scrape(port)
        assert sample(s, "zmqbus_forwarder_frames_total", direction="in") >= 5
        assert sample(s, "zmqbus_forwarder_connects_total", side="subscriber") >= 1
        assert "zmqbus_forwarder_uptime_seconds" in " ".join(s)
        assert sample(s, "zmqbus_forwarder_slow_subscribers_cut_total") == 0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert proc.returncode == 130


def test_a_busy_metrics_port_is_one_line() -> None:
    port = free_port()
    pub, sub = tcp_endpoints()
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        done = subprocess.run(
            [sys.executable, "-m", "zmqbus.cli", "forwarder", "--pub", pub, "--sub", sub, "--metrics-port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1 and f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def spans() -> Iterator[Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()


async def test_traces_follow_a_message_through_handlers_and_requests(bus: TestBus, spans: Any) -> None:
    await bus.start(Flaky)
    relay = bus.broker("relay")

    async def forward(message: ProcessingMessage) -> None:
        await relay.publish(ProcessingMessage("step.two", {}))

    relay.subscribe("relay", "step.one", forward)
    done = await bus.record("step.two")  # first: relay's ready() then proves its publisher has this subscription
    await relay.ready()
    first = await bus.publish("step.one", {}, correlation_id="wf-7")
    second = await done.wait_for()
    assert "traceparent" in first.metadata.headers and "traceparent" in second.metadata.headers
    assert await bus.request("calc.half", {"x": 8}) == 4
    with pytest.raises(RemoteError):
        await bus.request("calc.half", {"x": 1})

    by_name: dict[str, list[Any]] = {}
    for span in spans.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    seen = {name: len(v) for name, v in by_name.items()}
    assert {"send step.one", "process step.one", "send step.two", "request calc.half", "process calc.half"} <= set(
        seen
    ), seen
    send_one, process_one = by_name["send step.one"][0], by_name["process step.one"][0]
    assert process_one.parent.span_id == send_one.context.span_id
    assert by_name["send step.two"][0].parent.span_id == process_one.context.span_id, "the handler's publish"
    assert len({s.context.trace_id for s in (send_one, process_one, by_name["send step.two"][0])}) == 1
    attrs = send_one.attributes
    assert (
        attrs["messaging.system"],
        attrs["messaging.destination.name"],
        attrs["messaging.operation.type"],
        attrs["messaging.message.conversation_id"],
    ) == ("zmqbus", "step.one", "send", "wf-7")
    assert seen["request calc.half"] == 2 and seen["send step.one"] == 1, seen
    ok, failed = by_name["request calc.half"]
    served = by_name["process calc.half"]
    assert {s.parent.span_id for s in served} == {ok.context.span_id, failed.context.span_id}
    assert failed.status.status_code.name == "ERROR" and ok.status.status_code.name == "UNSET"
    assert not [name for name in by_name if "_zmqbus" in name], "control traffic is never traced"


async def test_with_tracing_off_messages_carry_no_trace_context(bus: TestBus) -> None:
    assert tracing.tracer is None
    rec = await bus.record("plain.#")
    await bus.publish("plain.x", {})
    assert (await rec.wait_for()).metadata.headers == {}


def test_tracing_without_opentelemetry_is_one_clear_error() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from zmqbus.bus import tracing\n"
        "try:\n    tracing.enable()\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=dict(os.environ)
    )
    assert done.stdout.strip() == "ZmqbusError tracing needs OpenTelemetry: pip install 'zmqbus[traces]'"


def test_a_forwarder_serves_its_metrics_while_it_runs() -> None:
    fwd = Forwarder(*tcp_endpoints(), stats_interval=None, metrics_port=0).start()
    try:
        assert fwd._metrics is not None
        s = scrape(fwd._metrics.port)
        assert sample(s, "zmqbus_forwarder_frames_total", direction="out") == 0
    finally:
        fwd.stop()
    assert fwd._metrics is None
