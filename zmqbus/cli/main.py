"""The ``zmqbus`` command line.

Every command takes its endpoints from ``--pub``/``--sub``, else from
``$ZMQBUS_PUB``/``$ZMQBUS_SUB``, else the defaults in :mod:`zmqbus.core.config`.
zmqbus errors are turned into a one-line message and exit status 1 here, at
the edge, and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Any

import click

from .. import __version__
from ..core import config
from ..core.errors import ZmqbusError
from ..core.topology import describe as describe_topology
from .common import connect, fail, pub_option, sub_option
from .common import run as run_async

__all__ = ["main"]

_pub_option, _sub_option, _run = pub_option, sub_option, run_async

#: The group's own options, with how many values each takes: accepted after the command too.
_GLOBAL_OPTIONS = {"--log-level": 1, "--keys": 1, "--key-name": 1, "--insecure": 0, "--policy": 1}


class _Group(click.Group):
    """Takes the group's options wherever they are put: ``zmqbus run X --log-level info`` works
    as ``zmqbus --log-level info run X`` does."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        front: list[str] = []
        rest: list[str] = []
        i = 0
        seen_command = False
        while i < len(args):
            arg = args[i]
            if arg == "--":
                rest.extend(args[i:])
                break
            name = arg.split("=", 1)[0]
            if seen_command and name in _GLOBAL_OPTIONS:
                takes = 0 if "=" in arg else _GLOBAL_OPTIONS[name]
                front.extend(args[i : i + 1 + takes])
                i += 1 + takes
                continue
            if not arg.startswith("-"):
                seen_command = True
            elif not seen_command and name in _GLOBAL_OPTIONS and "=" not in arg:
                front.extend(args[i : i + 1 + _GLOBAL_OPTIONS[name]])  # a global option before the command
                i += 1 + _GLOBAL_OPTIONS[name]
                continue
            rest.append(arg)
            i += 1
        return super().parse_args(ctx, front + rest)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="zmqbus")
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--keys",
    envvar="ZMQBUS_KEYS",
    default=None,
    metavar="DIR",
    help="CURVE key folder: encrypt and authenticate every socket (docs/SECURITY.md). [env: ZMQBUS_KEYS]",
)
@click.option(
    "--key-name",
    envvar="ZMQBUS_KEY_NAME",
    default=None,
    metavar="NAME",
    help=f"This member's key pair in --keys (default: {config.DEFAULT_KEY_NAME}; the forwarder always "
    "uses 'forwarder'). [env: ZMQBUS_KEY_NAME]",
)
@click.option(
    "--insecure",
    is_flag=True,
    envvar="ZMQBUS_INSECURE",
    help="Allow tcp beyond loopback without keys (traffic in clear). [env: ZMQBUS_INSECURE]",
)
@click.option(
    "--policy",
    envvar="ZMQBUS_POLICY",
    default=None,
    metavar="FILE",
    help="Per-key permissions (TOML, docs/SECURITY.md); needs --keys. [env: ZMQBUS_POLICY]",
)
def main(log_level: str, keys: str | None, key_name: str | None, insecure: bool, policy: str | None) -> None:
    """zmqbus: a brokerless ZeroMQ message bus for components that talk only through messages."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # The environment is the one place security settings live: the library and
    # every process a command starts read them from there.
    settings = {
        "ZMQBUS_KEYS": keys,
        "ZMQBUS_KEY_NAME": key_name,
        "ZMQBUS_INSECURE": "1" if insecure else None,
        "ZMQBUS_POLICY": os.path.abspath(policy) if policy else None,
    }
    for var, value in settings.items():
        if value:
            os.environ[var] = value


@main.command()
@click.argument("name")
@click.option("--dir", "directory", default="keys", show_default=True, help="The key folder.")
@click.option(
    "--allow/--no-allow",
    default=None,
    help="Also put the public key in DIR/allowed/ (default: yes, except for 'forwarder').",
)
@click.option("--force", is_flag=True, help="Replace an existing pair.")
def keygen(name: str, directory: str, allow: bool | None, force: bool) -> None:
    """Write a CURVE key pair NAME.key / NAME.key_secret (owner-only) into DIR.

    Name the forwarder's pair 'forwarder'; give each member (or each kind of
    member) its own name and select it with --key-name / $ZMQBUS_KEY_NAME.
    """
    from ..io.security import FORWARDER_KEY_NAME
    from ..io.security import keygen as make_keys

    try:
        public, secret = make_keys(
            directory, name, allow=name != FORWARDER_KEY_NAME if allow is None else allow, force=force
        )
    except ZmqbusError as exc:
        raise fail(exc) from None
    click.echo(f"wrote {public} and {secret}")


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
    from ..bus.forwarder import run_forwarder
    from ..io.transport import SocketConfig

    logging.getLogger("zmqbus").setLevel(min(logging.getLogger().level, logging.INFO))
    click.echo(f"zmqbus forwarder: publishers -> {pub}, subscribers -> {sub} (Ctrl-C to stop)", err=True)
    try:
        last = run_forwarder(
            pub,
            sub,
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


@main.command()
@click.argument("patterns", nargs=-1)
@_pub_option
@_sub_option
@click.option("--count", "-n", default=0, help="Exit after this many messages (0: run until Ctrl-C).")
@click.option(
    "--timeout",
    default=0.0,
    help="Exit after this many seconds, waiting for the forwarder included "
    "(0: no limit; the forwarder is waited for 10 s).",
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
            click.echo(
                f"{msg.topic}  {md.source_component or '-'} -> {md.target_component or '-'}  "
                f"cid={md.correlation_id}  {msg.content!r}"
            )
        if count and seen >= count:
            done.set()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout else None
    async with MessageBroker(pub, sub, name="zmqbus-watch") as broker:
        for pattern in patterns:
            broker.subscribe("zmqbus-watch", pattern, show)
        await connect(broker, timeout or 10.0)
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
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the forwarder.")
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
        for _ in range(repeat):
            msg = ProcessingMessage(
                message_type,
                body,
                MessageMetadata(correlation_id=correlation_id, source_component=source, target_component=target),
            )
            await broker.publish(msg, topic=topic)
        click.echo(f"sent {repeat} x {topic or message_type} (last id {msg.metadata.message_id})", err=True)


@main.command()
@_pub_option
@_sub_option
@click.option(
    "--timeout",
    default=5.0,
    show_default=True,
    help="Seconds to wait for the forwarder and its answer (with --watch: 0 runs until Ctrl-C).",
)
@click.option("--watch", is_flag=True, help="Keep printing a report every --interval seconds.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between reports with --watch.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per report.")
def stats(pub: str, sub: str, timeout: float, watch: bool, interval: float, as_json: bool) -> None:
    """Print the forwarder's statistics: it is asked, and answers at once."""
    _run(_stats(pub, sub, timeout, watch, interval, as_json))


async def _stats(pub: str, sub: str, timeout: float, watch: bool, interval: float, as_json: bool) -> None:
    import time

    from ..bus.broker import MessageBroker
    from ..bus.forwarder import QUERY_TOPIC, STATS_TOPIC
    from ..core.errors import BusTimeout
    from ..core.message import ProcessingMessage

    loop = asyncio.get_running_loop()
    deadline = None if watch and not timeout else loop.time() + timeout
    reports: asyncio.Queue[Any] = asyncio.Queue()
    async with MessageBroker(pub, sub, name="zmqbus-stats") as broker:
        broker.subscribe("zmqbus-stats", STATS_TOPIC, lambda msg: reports.put_nowait(msg.content))
        await connect(broker, timeout or 10.0)
        shown = 0
        while deadline is None or loop.time() < deadline:
            await broker.publish(ProcessingMessage(QUERY_TOPIC, {}))
            left = interval if deadline is None else min(interval, deadline - loop.time())
            try:
                report = await asyncio.wait_for(reports.get(), max(0.0, left))
            except TimeoutError:
                continue  # asked again: a forwarder older than the query waits for its next report
            shown += 1
            if as_json:
                click.echo(json.dumps(report))
            else:
                if watch:
                    click.echo(time.strftime("-- %H:%M:%S"))
                _print_report(report)
            if not watch:
                return
            await asyncio.sleep(max(0.0, interval - 0.05))
            while not reports.empty():
                reports.get_nowait()
        if not shown:
            raise BusTimeout(f"no statistics from the forwarder at {sub} within {timeout:g} s")


def _print_report(report: dict[str, Any]) -> None:
    for key, value in report.items():
        if isinstance(value, dict):  # counts by reason
            text = ", ".join(f"{k} {v:,}" for k, v in value.items()) or "none"
        else:
            text = f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"
        click.echo(f"{key:>24}: {text}")


@main.command()
@click.option("--workflows", "-n", default=10, show_default=True, help="Documents to ingest.")
@click.option("--analyzers", default=3, show_default=True, help="ChunkAnalyzer processes.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for every workflow.")
@click.option("--secure", is_flag=True, help="CURVE on every socket, with keys made for the run.")
def demo(workflows: int, analyzers: int, timeout: float, secure: bool) -> None:
    """Run the example workflow end to end: a forwarder and every component as processes, no setup.

    An ingest manager, a document handler and ANALYZERS chunk analyzers process
    WORKFLOWS documents, with the error handler and the state tracker watching.
    """
    from ..framework.demo import run_demo

    try:
        summary = run_demo(workflows, analyzers, echo=click.echo, timeout=timeout, secure=secure)
    except ZmqbusError as exc:
        raise fail(exc) from None
    if summary["completed"] != workflows:
        raise click.ClickException(f"only {summary['completed']} of {workflows} workflows completed")


@main.command()
@click.argument("spec")
@_pub_option
@_sub_option
@click.option("--name", default=None, help="Component name (default: the class's).")
@click.option("--replicas", default=1, show_default=True, help="Processes to run (supervised when > 1).")
@click.option("--grace", default=10.0, show_default=True, help="Seconds running work may take to finish on stop.")
@click.option(
    "--startup-timeout",
    default=10.0,
    show_default=True,
    help="Seconds to wait for the forwarder at start; then exit 1.",
)
@click.option("--keep-going", is_flag=True, help="With --replicas: carry on when a replica crash-loops.")
@click.option(
    "--rpc-bind",
    envvar="ZMQBUS_RPC_BIND",
    default=None,
    metavar="ENDPOINT",
    help="Where its responder binds (default tcp://127.0.0.1:*; tcp://0.0.0.0:* across hosts). [env: ZMQBUS_RPC_BIND]",
)
@click.option(
    "--rpc-advertise",
    envvar="ZMQBUS_RPC_ADVERTISE",
    default=None,
    metavar="HOST",
    help="The address other hosts reach it at (docs/DEPLOY.md). [env: ZMQBUS_RPC_ADVERTISE]",
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve the component's Prometheus metrics on this port (needs zmqbus[metrics]; one replica).",
)
@click.option("--metrics-addr", default="127.0.0.1", show_default=True, help="Address of the metrics endpoint.")
def run(
    spec: str,
    pub: str,
    sub: str,
    name: str | None,
    replicas: int,
    grace: float,
    startup_timeout: float,
    keep_going: bool,
    rpc_bind: str | None,
    rpc_advertise: str | None,
    metrics_port: int | None,
    metrics_addr: str,
) -> None:
    """Run the component SPEC (module:Class) until Ctrl-C/SIGTERM; a second signal kills it.

    Exits 1 with a one-line error if it cannot start (no forwarder within
    --startup-timeout) or, with --replicas, when a replica crash-loops.
    """
    from ..framework.runner import ComponentSpec, Supervisor, Topology, component_main, load_component

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: a module in the current folder is found
    for var, value in (("ZMQBUS_RPC_BIND", rpc_bind), ("ZMQBUS_RPC_ADVERTISE", rpc_advertise)):
        if value:
            os.environ[var] = value  # the component's broker, and every replica, read them
    try:
        load_component(spec)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if replicas == 1:
        component_main(
            spec, name, pub, sub, logging.getLogger().level, grace, startup_timeout, metrics_port, metrics_addr
        )
        return
    if metrics_port is not None:
        raise click.UsageError("--metrics-port serves one process: run each replica with its own port")
    _supervise(
        Supervisor(
            Topology(pub, sub, False, [ComponentSpec(spec, name, replicas)]), on_event=click.echo, keep_going=keep_going
        )
    )


@main.command(epilog="\b\nTHE FILE (TOML; example: topology.toml in the repository):\n" + describe_topology())
@click.argument("topology", required=False)
@click.option("--check", is_flag=True, help="Only validate TOPOLOGY (keys, types, classes) and exit: 0 valid, 1 not.")
@click.option("--keep-going", is_flag=True, help="Carry on when a component crash-loops (never for the forwarder).")
@click.option(
    "--crash-limit",
    default=5,
    show_default=True,
    help="Restarts within 60 s after which a process counts as crash-looping.",
)
def up(topology: str | None, check: bool, keep_going: bool, crash_limit: int) -> None:
    """Start a forwarder and the components of TOPOLOGY (a TOML file; default: the demo's), supervised.

    A process that dies is restarted with backoff unless it crash-loops:
    then everything is stopped and `up` exits 1 with the reason (for a
    component, unless --keep-going). Ctrl-C or SIGTERM stops everything cleanly.
    The file is validated first: an unknown key or a wrong type is an error
    that lists the valid keys.
    """
    from ..framework.demo import demo_topology
    from ..framework.runner import Supervisor, load_topology

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # components in the current folder, as `zmqbus run` finds them
    if check and not topology:
        raise click.UsageError("--check needs a TOPOLOGY file")
    try:
        topo = load_topology(topology) if topology else demo_topology(config.pub_endpoint(), config.sub_endpoint())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if check:
        replicas = sum(c.replicas for c in topo.components)
        n = len(config.split_endpoints(topo.pub))
        fwd = "" if not topo.forwarder else "a forwarder and " if n == 1 else f"{n} forwarders (redundant) and "
        click.echo(
            f"{topology}: valid; {fwd}{len(topo.components)} "
            f"component(s), {replicas} process(es), on {topo.pub} / {topo.sub}"
        )
        return
    os.environ.update(topo.environment())  # every process it starts inherits the security settings
    from ..core.security import check_endpoint
    from ..io.security import config_keys, config_policy

    try:  # bad keys or policy, or plaintext beyond loopback: one line now, not a crash loop later
        member_keys = config_keys()
        if topo.forwarder:
            config_keys(server=False)
        config_policy()
        for endpoint in (*config.split_endpoints(topo.pub), *config.split_endpoints(topo.sub)):
            check_endpoint(endpoint, member_keys, config.insecure(), "connect to")
    except ZmqbusError as exc:
        raise fail(exc) from None
    click.echo(f"zmqbus up: publishers -> {topo.pub}, subscribers -> {topo.sub} (Ctrl-C to stop)", err=True)
    _supervise(
        Supervisor(
            topo, on_event=lambda text: click.echo(text, err=True), keep_going=keep_going, crash_limit=crash_limit
        )
    )


def _supervise(sup: Any) -> None:
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sup.start()
    try:
        sup.run_until(stop.is_set)
    finally:
        sup.stop()
    if sup.failure is not None:
        raise click.ClickException(sup.failure)


@main.command()
@click.option("--duration", default=30.0, show_default=True, help="Seconds of traffic and faults.")
@click.option("--publishers", default=2, show_default=True, help="Publisher processes (2 topics each).")
@click.option("--subscribers", default=2, show_default=True, help="Subscriber processes (each takes every topic).")
@click.option("--responders", default=2, show_default=True, help="Responder processes serving soak.work.")
@click.option(
    "--restart-forwarder-every",
    default=0.0,
    help="SIGKILL and restart the forwarder every S s (0: never); with --forwarders N, one of them at a time, in turn.",
)
@click.option(
    "--forwarders",
    default=1,
    show_default=True,
    help="Forwarders; more than one makes a redundant bus (every process connected to all).",
)
@click.option("--kill-responder-every", default=0.0, help="SIGKILL a responder and start another every S s (0: never).")
@click.option("--rate", default=500.0, show_default=True, help="Messages per second per publisher.")
@click.option("--request-rate", default=50.0, show_default=True, help="Requests per second from the caller.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def soak(
    duration: float,
    publishers: int,
    subscribers: int,
    responders: int,
    restart_forwarder_every: float,
    forwarders: int,
    kill_responder_every: float,
    rate: float,
    request_rate: float,
    as_json: bool,
) -> None:
    """Check a bus for silent loss, duplicates and double execution, under faults, on this machine.

    Real processes over tcp loopback: a forwarder, publishers, subscribers,
    responders and a caller. Every (publisher, topic, sequence) is classified
    per subscriber as delivered once, lost and counted, lost silently or
    duplicated; every request as ok, failed with a documented error, or
    executed twice by one instance. Exits 1 on any silent loss, duplicate
    delivery, double execution on one instance or undocumented error.
    """
    from ..soak.run import SoakError, SoakOptions, format_report, run_soak

    if min(publishers, subscribers, responders, forwarders) < 1 or duration <= 0 or rate <= 0 or request_rate <= 0:
        raise click.BadParameter("counts, --duration and rates must be positive")
    opts = SoakOptions(
        duration,
        publishers,
        subscribers,
        responders,
        restart_forwarder_every,
        kill_responder_every,
        rate,
        request_rate,
        forwarders=forwarders,
    )
    try:
        report = run_soak(opts, progress=lambda s: click.echo(s, err=True))
    except SoakError as exc:
        raise click.ClickException(f"the soak could not run: {exc}") from None
    click.echo(json.dumps(report) if as_json else format_report(report))
    if not report["passed"]:
        raise SystemExit(1)


@main.group(invoke_without_command=True)
@click.option("--quick", is_flag=True, help="The whole suite in well under a minute (checks it works; rough figures).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object (progress still on stderr).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write report.json, report.md and (with matplotlib) report.png into this folder.",
)
@click.option("--peers", is_flag=True, help="Also measure Redis (redis-py) and NATS (nats-py) when installed.")
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(["pubsub", "sizes", "fanout", "latency", "reqrep", "workflow", "ha", "peers"]),
    help="Run only these sections (repeatable).",
)
@click.option("--rate", default=10_000.0, show_default=True, help="Offered rate of the latency section, msg/s.")
@click.option("--secure", is_flag=True, help="Also measure what CURVE and a publish policy cost (pub/sub, req/rep).")
@click.pass_context
def bench(
    ctx: click.Context,
    quick: bool,
    as_json: bool,
    out_dir: str | None,
    peers: bool,
    only: tuple[str, ...],
    rate: float,
    secure: bool,
) -> None:
    """Benchmarks of the hot path, each next to raw pyzmq in the same run.

    Without a subcommand, runs the whole suite: pub/sub (headline, by size,
    fan-out), latency at a fixed rate, request/reply, the demo workflow and,
    with --peers, Redis and NATS. See benchmarks/README.md for how to read it.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..bench.report import to_markdown, write_report
    from ..bench.suite import run_suite

    if rate <= 0:
        raise click.BadParameter("must be positive", param_hint="--rate")
    if out_dir:  # fail before minutes of measuring, not after
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as exc:
            raise click.ClickException(f"cannot write the report into {out_dir}: {exc}") from None
    report = run_suite(
        quick=quick,
        peers=peers or "peers" in only,
        only=only,
        rate=rate,
        progress=lambda s: click.echo(s, err=True),
        secure=secure,
    )
    if out_dir:
        try:
            for path in write_report(report, out_dir):
                click.echo(f"wrote {path}", err=True)
        except OSError as exc:
            raise click.ClickException(f"cannot write the report into {out_dir}: {exc}") from None
    click.echo(json.dumps(report) if as_json else to_markdown(report))
    if report["failed"]:
        raise click.ClickException(f"benchmark section(s) failed: {', '.join(report['failed'])}")


@bench.command("pubsub")
@click.option("--quick", is_flag=True, help="Small run (checks that the benchmark works; figures are rough).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--count", default=0, help="Messages per round (default 200,000; 20,000 with --quick).")
@click.option("--size", default=180, show_default=True, help="Approximate content size in bytes.")
@click.option("--rounds", default=0, help="Rounds per side, the median reported (default 3; 1 with --quick).")
@click.option("--secure", is_flag=True, help="What CURVE costs: raw and zmqbus with CURVE, and zmqbus in clear.")
@click.option(
    "--trace",
    is_flag=True,
    help="What OpenTelemetry tracing costs: zmqbus with tracing off and on "
    "(needs zmqbus[traces] and opentelemetry-sdk).",
)
def bench_pubsub(quick: bool, as_json: bool, count: int, size: int, rounds: int, secure: bool, trace: bool) -> None:
    """Publisher -> forwarder -> subscriber throughput, zmqbus vs raw pyzmq + msgpack."""
    from ..bench import report
    from ..bench.pubsub import run_pubsub, run_pubsub_secure, run_pubsub_traced

    progress = (lambda s: None) if as_json else (lambda s: click.echo(s, err=True))
    if trace:
        try:
            import opentelemetry.sdk.trace  # noqa: F401
        except ImportError:
            raise click.ClickException(
                "--trace needs OpenTelemetry: pip install 'zmqbus[traces]' opentelemetry-sdk"
            ) from None
    run, text = (
        (run_pubsub_traced, report.format_pubsub_traced)
        if trace
        else (run_pubsub_secure, report.format_pubsub_secure)
        if secure
        else (run_pubsub, report.format_pubsub)
    )
    result = run(quick=quick, count=count or None, size=size, rounds=rounds or None, progress=progress)
    click.echo(json.dumps(result) if as_json else text(result, size))


@bench.command("reqrep")
@click.option("--quick", is_flag=True, help="Small run (checks that the benchmark works; figures are rough).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--rounds", default=0, help="Rounds per side, best kept (default 3; 1 with --quick).")
@click.option("--secure", is_flag=True, help="What CURVE costs: raw and zmqbus with CURVE, and zmqbus in clear.")
def bench_reqrep(quick: bool, as_json: bool, rounds: int, secure: bool) -> None:
    """Request/reply latency (1 in flight) and throughput (100 in flight), zmqbus vs raw DEALER/ROUTER."""
    from ..bench.reqrep import run_reqrep, run_reqrep_secure

    progress = (lambda s: None) if as_json else (lambda s: click.echo(s, err=True))
    if secure:
        out = run_reqrep_secure(quick=quick, rounds=rounds or None, progress=progress)
        if as_json:
            click.echo(json.dumps(out))
            return
        lines = [f"request/reply with CURVE, best of {out['rounds']} round(s):"]
        for name in ("raw_curve", "zmqbus_curve", "zmqbus_clear"):
            side = out[name]
            lines.append(
                f"  {name:<13} p50 {side['p50_us']:>7,.0f} us   100 in flight {side['throughput_req_s']:>8,.0f} req/s"
            )
        lines.append(
            f"  zmqbus/raw with CURVE: p50 {out['p50_ratio']:.2f}x, throughput {out['throughput_ratio']:.2f}; "
            f"CURVE costs zmqbus {out['curve_p50_cost']:.2f}x p50 and keeps "
            f"{out['curve_throughput_kept']:.0%} of its throughput"
        )
        click.echo("\n".join(lines))
        return
    r = run_reqrep(quick=quick, rounds=rounds or None, progress=progress)
    if as_json:
        click.echo(json.dumps(r))
        return
    from ..bench.report import format_reqrep

    click.echo(format_reqrep(r))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
