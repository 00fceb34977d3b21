"""The commands that talk to a bus: ``forwarder`` (run one), ``watch``, ``send`` and ``stats``.

The operator's questions to a running bus (``ls``, ``req``, ``ping``, ``dlq``) are :mod:`.ops`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

import click

from ..core.errors import ZmqbusError
from .common import (
    DEFAULT_TIMEOUT,
    connect,
    fail,
    pub_option as _pub_option,
    run as _run,
    show,
    sub_option as _sub_option,
    timeout_option,
)
from .main import main

__all__: list[str] = []


@main.command()
@_pub_option
@_sub_option
@click.option("--hwm", default=100_000, show_default=True, help="High-water mark per peer, in messages.")
@click.option(
    "--max-message-size",
    default=1024 * 1024,
    show_default=True,
    help="Largest frame accepted, in bytes; a peer sending more is disconnected.",
)
@click.option(
    "--stats-interval",
    default=5.0,
    show_default=True,
    help="Seconds between statistics messages on _zmqbus.forwarder.stats (0: off).",
)
@click.option("--log-interval", default=0.0, help="Log the counters every so many seconds (0: off).")
@click.option(
    "--max-connections",
    default=10_000,
    show_default=True,
    help="Live connections (both endpoints) past which new clients are refused.",
)
@click.option(
    "--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port (needs zmqbus[metrics])."
)
@click.option("--metrics-addr", default="127.0.0.1", show_default=True, help="Address of the metrics endpoint.")
@click.option(
    "--max-queued-bytes",
    default=128 * 1024 * 1024,
    show_default=True,
    help="Bytes that may queue for a subscriber that reads nothing before it is cut (0: no bound but --hwm).",
)
def forwarder(
    pub: str,
    sub: str,
    hwm: int,
    max_message_size: int,
    stats_interval: float,
    log_interval: float,
    max_connections: int,
    max_queued_bytes: int,
    metrics_port: int | None,
    metrics_addr: str,
) -> None:
    """Run a forwarder until Ctrl-C or SIGTERM."""
    from ..bus.forwarding import run_forwarder
    from ..io.transport import SocketConfig

    logging.getLogger("zmqbus").setLevel(min(logging.getLogger().level, logging.INFO))
    signals: list[int] = []
    up = threading.Event()

    def banner() -> None:  # once it is up: a forwarder that cannot start prints its error alone
        if up.wait() and not signals:
            click.echo(f"zmqbus forwarder: publishers -> {pub}, subscribers -> {sub} (Ctrl-C to stop)", err=True)

    threading.Thread(target=banner, daemon=True, name="zmqbus-banner").start()
    try:
        last = run_forwarder(
            pub,
            sub,
            ready=up,
            signals=signals,
            socket_config=SocketConfig(hwm=hwm, max_message_size=max_message_size),
            stats_interval=stats_interval or None,
            log_interval=log_interval or None,
            max_connections=max_connections,
            max_queued_bytes=max_queued_bytes or None,
            metrics_port=metrics_port,
            metrics_addr=metrics_addr,
        )
    except ZmqbusError as exc:
        raise fail(exc) from None
    if last is not None:
        click.echo(f"forwarded {last.frames_in} frames ({last.bytes_in} bytes) in {last.uptime:.1f} s", err=True)
    if signals:
        raise SystemExit(128 + signals[0])  # stopped by a signal: 130 (Ctrl-C) or 143 (SIGTERM)


@main.command()
@click.argument("patterns", nargs=-1)
@_pub_option
@_sub_option
@click.option("--count", "-n", default=0, help="Exit after this many messages (0: run until Ctrl-C).")
@click.option(
    "--timeout",
    default=0.0,
    help="Exit after this many seconds, waiting for the forwarder included "
    f"(0: no limit; the forwarder is waited for {DEFAULT_TIMEOUT:g} s).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def watch(patterns: tuple[str, ...], pub: str, sub: str, count: int, timeout: float, as_json: bool) -> None:
    """Print messages whose topics match PATTERNS (default: everything, '#')."""
    _run(_watch(patterns or ("#",), pub, sub, count, timeout, as_json))


async def _watch(patterns: tuple[str, ...], pub: str, sub: str, count: int, timeout: float, as_json: bool) -> None:
    from ..bus.broker import MessageBroker
    from ..core.message import ProcessingMessage
    from ..io.aio import wait_event

    seen = 0
    done = asyncio.Event()

    def show(msg: ProcessingMessage) -> None:
        nonlocal seen
        seen += 1
        md = msg.metadata
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "topic": msg.topic,
                        "type": msg.type_name,
                        "content": msg.content,
                        "message_id": md.message_id,
                        "correlation_id": md.correlation_id,
                        "source": md.source_component,
                        "target": md.target_component,
                        "timestamp": md.timestamp,
                        "sequence": md.sequence,
                    },
                    default=repr,
                )
            )
        else:
            when = time.strftime("%H:%M:%S", time.localtime(md.timestamp)) + f".{int(md.timestamp % 1 * 1000):03d}"
            click.echo(
                f"{when}  {msg.topic}  {md.source_component or '-'} -> {md.target_component or '-'}  "
                f"cid={md.correlation_id}  {msg.content!r}"
            )
        if count and seen >= count:
            done.set()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout else None
    async with MessageBroker(pub, sub, name="zmqbus-watch") as broker:
        for pattern in patterns:
            broker.subscribe("zmqbus-watch", pattern, show)
        await connect(broker, timeout or DEFAULT_TIMEOUT)
        click.echo(f"watching {', '.join(patterns)} on {sub}", err=True)
        await wait_event(done, None if deadline is None else max(0.0, deadline - loop.time()))
        stats = broker.statistics()
    if stats.gaps or stats.decode_errors:
        click.echo(f"lost {stats.gaps} message(s); malformed: {stats.decode_errors}", err=True)


@main.command()
@click.argument("message_type")
@_pub_option
@_sub_option
@click.option("--content", default="{}", help="Message content as JSON.")
@click.option("--source", default="zmqbus-cli", show_default=True, help="source_component.")
@click.option("--target", default=None, help="target_component.")
@click.option("--correlation-id", default="", help="Correlation id (default: the message id).")
@click.option("--topic", default=None, help="Topic, if not the message type.")
@click.option("--repeat", default=1, show_default=True, help="Send the message this many times.")
@timeout_option("Seconds to wait for the forwarder.")
def send(
    message_type: str,
    pub: str,
    sub: str,
    content: str,
    source: str,
    target: str | None,
    correlation_id: str,
    topic: str | None,
    repeat: int,
    timeout: float,
) -> None:
    """Publish a MESSAGE_TYPE message with JSON content."""
    try:
        body = json.loads(content)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--content") from None
    _run(_send(message_type, pub, sub, body, source, target, correlation_id, topic, repeat, timeout))


async def _send(
    message_type: str,
    pub: str,
    sub: str,
    body: Any,
    source: str,
    target: str | None,
    correlation_id: str,
    topic: str | None,
    repeat: int,
    timeout: float,
) -> None:
    from ..bus.broker import MessageBroker
    from ..core.message import MessageMetadata, ProcessingMessage
    from ..core.topics import validate_topic

    validate_topic(topic or message_type)  # a bad topic is the user's mistake: say so before waiting for a bus
    async with MessageBroker(pub, sub, name=source, publish_timeout=timeout) as broker:
        await connect(broker, timeout)
        started = time.perf_counter()
        for _ in range(repeat):
            msg = ProcessingMessage(
                message_type,
                body,
                MessageMetadata(correlation_id=correlation_id, source_component=source, target_component=target),
            )
            await broker.publish(msg, topic=topic)
        await broker.ready(timeout)  # every message has reached the forwarder: the rate counts delivery to it
        took = time.perf_counter() - started
        rate = f", {repeat / took:,.0f} msg/s" if repeat > 1 and took > 0 else ""
        click.echo(
            f"sent {repeat} x {topic or message_type} in {took:.3f} s{rate} (last id {msg.metadata.message_id})",
            err=True,
        )


@main.command()
@_pub_option
@_sub_option
@timeout_option("Seconds to wait for the forwarder and its answer (with --watch: 0 runs until Ctrl-C).")
@click.option("--watch", is_flag=True, help="Keep printing a report every --interval seconds.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between reports with --watch.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per report.")
def stats(pub: str, sub: str, timeout: float, watch: bool, interval: float, as_json: bool) -> None:
    """Print the forwarder's statistics: it is asked, and answers at once."""
    _run(_stats(pub, sub, timeout, watch, interval, as_json))


async def _stats(pub: str, sub: str, timeout: float, watch: bool, interval: float, as_json: bool) -> None:

    from ..bus.broker import MessageBroker
    from ..bus.forwarder import QUERY_TOPIC, STATS_TOPIC
    from ..core.errors import BusTimeout
    from ..core.message import ProcessingMessage

    loop = asyncio.get_running_loop()
    deadline = None if watch and not timeout else loop.time() + timeout
    reports: asyncio.Queue[Any] = asyncio.Queue()
    async with MessageBroker(pub, sub, name="zmqbus-stats") as broker:
        broker.subscribe("zmqbus-stats", STATS_TOPIC, lambda msg: reports.put_nowait(msg.content))
        await connect(broker, timeout or DEFAULT_TIMEOUT)
        shown = 0
        previous: dict[str, Any] | None = None
        while deadline is None or loop.time() < deadline:
            await broker.publish(ProcessingMessage(QUERY_TOPIC, {}))
            left = interval if deadline is None else min(interval, deadline - loop.time())
            try:
                report = await asyncio.wait_for(reports.get(), max(0.0, left))
            except TimeoutError:
                continue  # asked again: a forwarder older than the query waits for its next report
            shown += 1
            report = _with_derived(report, previous)
            previous = report
            show(report, as_json, watch, _print_report)
            if not watch:
                return
            await asyncio.sleep(max(0.0, interval - 0.05))
            while not reports.empty():
                reports.get_nowait()
        if not shown:
            raise BusTimeout(f"no statistics from the forwarder at {sub} within {timeout:g} s")


def _with_derived(report: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """The report, plus live connections and, from the second report on, rates since the previous one."""
    out = dict(report)
    try:
        out["connections_live"] = (
            report["publisher_connects"]
            - report["publisher_disconnects"]
            + report["subscriber_connects"]
            - report["subscriber_disconnects"]
        )
        if previous is not None and report["uptime"] > previous["uptime"]:
            span = report["uptime"] - previous["uptime"]
            for key in ("frames_in", "bytes_in", "frames_out", "bytes_out"):
                out[f"{key}_per_s"] = round((report[key] - previous[key]) / span, 1)
    except (KeyError, TypeError):  # a forwarder that reports other fields: shown as it is
        pass
    return out


def _print_report(report: dict[str, Any]) -> None:
    for key, value in report.items():
        if isinstance(value, dict):  # counts by reason
            text = ", ".join(f"{k} {v:,}" for k, v in value.items()) or "none"
        else:
            text = f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"
        click.echo(f"{key:>24}: {text}")
