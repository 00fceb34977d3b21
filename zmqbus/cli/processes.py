"""The commands that run components: ``demo`` (the example workflow, all started for you), ``run`` (a
component's processes) and ``up`` (a whole topology, supervised)."""

from __future__ import annotations

import logging
import os
from typing import Any

import click

from ..core import config
from ..core.errors import ZmqbusError
from ..core.topology import describe as describe_topology
from .common import fail, pub_option as _pub_option, sub_option as _sub_option
from .main import main

__all__: list[str] = []


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


_trace_option = click.option(
    "--trace",
    type=click.Choice(["console", "otlp"]),
    default=None,
    help="Trace every component with OpenTelemetry (sets $ZMQBUS_TRACING): console prints spans, otlp sends "
    "them where the OTEL_EXPORTER_OTLP_* variables say. service.name is each component's name.",
)


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
    help="Serve the component's Prometheus metrics on this port (needs zmqbus[metrics]); with --replicas, "
    "replica r on PORT + r - 1.",
)
@click.option("--metrics-addr", default="127.0.0.1", show_default=True, help="Address of the metrics endpoint.")
@_trace_option
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
    trace: str | None,
) -> None:
    """Run the component SPEC (module:Class) until Ctrl-C/SIGTERM; a second signal kills it.

    Exits 1 with a one-line error if it cannot start (no forwarder within
    --startup-timeout) or, with --replicas, when a replica crash-loops.
    """
    from ..framework.runner import ComponentSpec, Topology, component_main, load_component
    from ..framework.supervisor import Supervisor

    for var, value in (
        ("ZMQBUS_RPC_BIND", rpc_bind),
        ("ZMQBUS_RPC_ADVERTISE", rpc_advertise),
        ("ZMQBUS_TRACING", trace),
    ):
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
    _supervise(
        Supervisor(
            Topology(pub, sub, False, [ComponentSpec(spec, name, replicas, metrics_port)]),
            on_event=click.echo,
            keep_going=keep_going,
        )
    )


@main.command(epilog="\b\nTHE FILE (TOML; example: topology.toml in the repository):\n" + describe_topology())
@click.argument("topology", required=False)
@click.option(
    "--check",
    is_flag=True,
    help="Only validate TOPOLOGY as `up` does before it starts anything (keys, types, endpoints, classes, "
    "key files, policy) and exit: 0 valid, 1 not.",
)
@click.option("--keep-going", is_flag=True, help="Carry on when a component crash-loops (never for the forwarder).")
@click.option(
    "--crash-limit",
    default=5,
    show_default=True,
    help="Restarts within 60 s after which a process counts as crash-looping.",
)
@click.option(
    "--hung-after",
    default=10.0,
    show_default=True,
    help="Seconds without a heartbeat (each component beats every second) after which it is killed and "
    "restarted (0: never).",
)
@_trace_option
def up(
    topology: str | None, check: bool, keep_going: bool, crash_limit: int, hung_after: float, trace: str | None
) -> None:
    """Start a forwarder and the components of TOPOLOGY (a TOML file; default: the demo's), supervised.

    A process that dies is restarted with backoff unless it crash-loops:
    then everything is stopped and `up` exits 1 with the reason (for a
    component, unless --keep-going); so is a component that stops answering
    its liveness check (--hung-after). Ctrl-C or SIGTERM stops everything
    cleanly (exit 130 or 143).
    The file is validated first: an unknown key or a wrong type is an error
    that lists the valid keys.
    """
    from ..framework.demo import demo_topology
    from ..framework.runner import load_topology, preflight
    from ..framework.supervisor import Supervisor

    if trace:
        os.environ["ZMQBUS_TRACING"] = trace  # every component process inherits it

    if check and not topology:
        raise click.UsageError("--check needs a TOPOLOGY file")
    try:
        topo = load_topology(topology) if topology else demo_topology(config.pub_endpoint(), config.sub_endpoint())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    try:  # endpoints, keys, policy, plaintext beyond loopback: one line now, not a crash loop later
        preflight(topo)
    except ZmqbusError as exc:
        raise fail(f"{topology or 'the demo topology'}: not valid: {exc}" if check else exc) from None
    if check:
        replicas = sum(c.replicas for c in topo.components)
        n = len(config.split_endpoints(topo.pub))
        fwd = "" if not topo.forwarder else "a forwarder and " if n == 1 else f"{n} forwarders (redundant) and "
        click.echo(
            f"{topology}: valid; {fwd}{len(topo.components)} "
            f"component(s), {replicas} process(es), on {topo.pub} / {topo.sub}"
        )
        return
    click.echo(f"zmqbus up: publishers -> {topo.pub}, subscribers -> {topo.sub} (Ctrl-C to stop)", err=True)
    _supervise(
        Supervisor(
            topo,
            on_event=lambda text: click.echo(text, err=True),
            keep_going=keep_going,
            crash_limit=crash_limit,
            hung_after=hung_after or None,
        )
    )


def _supervise(sup: Any) -> None:
    import signal
    import threading

    stop = threading.Event()
    got: list[int] = []

    def on_signal(signum: int, *_: object) -> None:
        got.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    sup.start()
    try:
        sup.run_until(stop.is_set)
    finally:
        sup.stop()
    if sup.failure is not None:
        raise click.ClickException(sup.failure)
    if got:
        raise SystemExit(128 + got[0])  # stopped by a signal: 130 (Ctrl-C) or 143 (SIGTERM)


@main.command()
@click.argument("specs", nargs=-1)
@click.option("--out", "out", default=None, metavar="FILE", help="Write the document here (default: stdout).")
@click.option("--title", default="zmqbus bus", show_default=True, help="The document's info.title.")
@click.option("--api-version", default="1.0.0", show_default=True, help="The document's info.version.")
@_pub_option
@_sub_option
def asyncapi(specs: tuple[str, ...], out: str | None, title: str, api_version: str, pub: str, sub: str) -> None:
    """Write the AsyncAPI 3.0 document of a bus made of SPECS (module:Class ...; default: the example's).

    From each component class: its subscriptions (receive operations on pattern channels), its services
    (request/reply operations), its message types (send operations for those it does not receive),
    and the envelope (PROTOCOL.md section 3) as every message's headers. JSON, which YAML tools read too.
    """
    import json

    from ..framework.asyncapi import asyncapi_document
    from ..framework.demo import DEMO_COMPONENTS

    try:
        doc = asyncapi_document(specs or DEMO_COMPONENTS, title=title, version=api_version, pub=pub, sub=sub)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    text = json.dumps(doc, indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        with open(out, "w") as f:
            f.write(text)
        click.echo(f"wrote {out}: {len(doc['channels'])} channel(s), {len(doc['operations'])} operation(s)", err=True)
