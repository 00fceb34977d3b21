"""The commands that measure: ``bench`` (throughput and latency against raw pyzmq and peers) and ``soak``
(a long run under faults, with exact accounting)."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from ..bench.suite import SECTIONS
from .main import main

__all__: list[str] = []


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
@click.option(
    "--kill-subscriber-every",
    default=0.0,
    help="SIGKILL a subscriber and start it again (its streams resumed) every S s (0: never).",
)
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
    kill_subscriber_every: float,
    rate: float,
    request_rate: float,
    as_json: bool,
) -> None:
    """Check a bus for loss, duplicates and double execution, under faults, on this machine.

    Real processes over tcp loopback: a forwarder, publishers, subscribers,
    responders and a caller. Every (publisher, topic, sequence) is classified
    per subscriber as delivered once, lost and counted, lost silently or
    duplicated, and each stream's order is checked; every request as ok,
    failed with a documented error, or executed twice by one instance. Exits 1
    on any loss (recovery is on: even a counted one), duplicate or
    out-of-order delivery, double execution on one instance or undocumented
    error.
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
        kill_subscriber_every=kill_subscriber_every,
        rate=rate,
        request_rate=request_rate,
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
    type=click.Choice([*SECTIONS, "peers"]),
    help="Run only these sections (repeatable).",
)
@click.option("--rate", default=10_000.0, show_default=True, help="Offered rate of the latency section, msg/s.")
@click.option("--secure", is_flag=True, help="Also measure what CURVE and a publish policy cost (pub/sub, req/rep).")
@click.option(
    "--compare",
    "baseline",
    type=click.Path(dir_okay=False),
    default=None,
    help="A saved report (--json output, or report.json of --out): run the same sections, then print each "
    "figure next to it and mark what dropped beyond the run-to-run noise.",
)
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
    baseline: str | None,
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
    saved: dict[str, Any] | None = None
    if baseline is not None:  # read before minutes of measuring, not after
        try:
            with open(baseline, encoding="utf-8") as f:
                saved = json.load(f)
            if not isinstance(saved, dict) or not isinstance(saved.get("sections"), dict):
                raise ValueError("not a zmqbus bench report (no 'sections')")
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"--compare {baseline}: {exc}") from None
        if not only:  # the same sections as the saved run, so that like is compared with like
            only = tuple(name for name in saved["sections"] if name in (*SECTIONS, "peers"))
        if bool(saved.get("quick")) != quick:
            click.echo(f"note: {baseline} was {'' if saved.get('quick') else 'not '}a --quick run", err=True)
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
    if saved is not None and baseline is not None:
        from ..bench.compare import compare, format_compare

        click.echo(("\n" if not as_json else "") + format_compare(compare(saved, report), baseline), err=as_json)
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
@click.option(
    "--batching",
    is_flag=True,
    help="Also zmqbus with publisher batching on (PROTOCOL.md section 2.4), in the same rounds.",
)
def bench_pubsub(
    quick: bool, as_json: bool, count: int, size: int, rounds: int, secure: bool, trace: bool, batching: bool
) -> None:
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
    if batching and run is run_pubsub:
        result = run_pubsub(quick=quick, count=count or None, size=size, rounds=rounds or None, progress=progress,
                            batching=True)  # fmt: skip
    else:
        result = run(quick=quick, count=count or None, size=size, rounds=rounds or None, progress=progress)
    click.echo(json.dumps(result) if as_json else text(result, size))


@bench.command("reqrep")
@click.option("--quick", is_flag=True, help="Small run (checks that the benchmark works; figures are rough).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--rounds", default=0, help="Rounds per side, best kept (default 3; 1 with --quick).")
@click.option("--secure", is_flag=True, help="What CURVE costs: raw and zmqbus with CURVE, and zmqbus in clear.")
def bench_reqrep(quick: bool, as_json: bool, rounds: int, secure: bool) -> None:
    """Request/reply latency (1 in flight) and throughput (100 in flight), zmqbus vs raw DEALER/ROUTER."""
    from ..bench import report
    from ..bench.reqrep import run_reqrep, run_reqrep_secure

    progress = (lambda s: None) if as_json else (lambda s: click.echo(s, err=True))
    if secure:
        out = run_reqrep_secure(quick=quick, rounds=rounds or None, progress=progress)
        if as_json:
            click.echo(json.dumps(out))
            return
        click.echo(report.format_reqrep_secure(out))
        return
    r = run_reqrep(quick=quick, rounds=rounds or None, progress=progress)
    if as_json:
        click.echo(json.dumps(r))
        return
    click.echo(report.format_reqrep(r))
