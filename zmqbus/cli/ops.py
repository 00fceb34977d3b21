"""What an operator asks a running bus: ``ls``, ``req``, ``ping`` and ``dlq`` (``stats`` is in :mod:`.buscmds`).

Exit statuses of ``req`` and ``ping`` tell the outcomes apart (a container
probe or a script can act on them): 0 answered, 1 a bus error (no forwarder,
bad input), 3 the service raised (a remote error), 4 no live instance, 5 no
answer in time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from ..core.errors import NoResponder, RemoteError, RequestTimeout
from .common import DISCOVERY_WAIT, connect, fail, pub_option, run as run_async, show, sub_option, timeout_option
from .main import main

__all__ = ["EXIT_REMOTE_ERROR", "EXIT_NO_RESPONDER", "EXIT_TIMEOUT"]

EXIT_REMOTE_ERROR = 3
EXIT_NO_RESPONDER = 4
EXIT_TIMEOUT = 5

F = TypeVar("F", bound=Callable[..., Any])


def _json_option(help_text: str) -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def _listen_option(what: str) -> Callable[[F], F]:
    return click.option(
        "--listen",
        default=DISCOVERY_WAIT,
        show_default=True,
        help=f"{what} (every live instance answers the discovery query at once, and announces every second).",
    )


def _content(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--content") from None


# -- ls ---------------------------------------------------------------------------------------------


@main.command("ls")
@pub_option
@sub_option
@timeout_option("Seconds to wait for the forwarder.")
@_listen_option("Seconds to collect announcements")
@click.option("--watch", is_flag=True, help="Keep listening; print the table every second until Ctrl-C.")
@click.option(
    "--stats",
    "with_stats",
    is_flag=True,
    help="Per service: instances, requests served, errors, p50 and p99, from each instance's own counters "
    "(asked over <component>.status).",
)
@_json_option("One JSON object: service -> its instances (with --stats: service -> its figures).")
def ls(pub: str, sub: str, timeout: float, listen: float, watch: bool, with_stats: bool, as_json: bool) -> None:
    """List the services on the bus and their live instances (from their announcements): instance id, pid,
    host, zmqbus version, uptime, endpoint, load, seconds since last heard."""
    run_async(_ls(pub, sub, timeout, listen, watch, as_json, with_stats))


async def _ls(
    pub: str, sub: str, timeout: float, listen: float, watch: bool, as_json: bool, with_stats: bool = False
) -> None:
    from ..bus.broker import MessageBroker
    from ..core.control import DISCOVER_TOPIC, PRESENCE_TOPIC, Presence
    from ..core.errors import DecodeError
    from ..core.message import ProcessingMessage

    seen: dict[str, tuple[Presence, float]] = {}  # instance -> (its last announcement, when)

    def on_presence(msg: ProcessingMessage) -> None:
        try:
            p = Presence.from_content(msg.content)
        except DecodeError:
            return
        if p.leaving:
            seen.pop(p.instance, None)
        else:
            seen[p.instance] = (p, time.monotonic())

    async with MessageBroker(pub, sub, name="zmqbus-ls") as broker:
        broker.subscribe("zmqbus-ls", PRESENCE_TOPIC, on_presence)
        await connect(broker, timeout)
        if with_stats:
            await broker.discover(timeout)  # its caller knows the instances it will ask
        await broker.publish(ProcessingMessage(DISCOVER_TOPIC, {}))  # every responder: announce now
        while True:
            await asyncio.sleep(listen if not watch else 1.0)
            now = time.monotonic()
            for instance, (p, at) in list(seen.items()):
                if now - at > p.interval * p.liveness:
                    del seen[instance]  # stopped announcing: gone
            if with_stats:
                show(await _service_stats(broker, [p for p, _ in seen.values()], timeout), as_json, watch, _print_stats)
            else:
                show(_services(seen, now), as_json, watch, _print_services)
            if not watch:
                return


def _services(seen: dict[str, Any], now: float) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    wall = time.time()
    for instance, (p, at) in sorted(seen.items()):
        info = p.info or {}
        started = info.get("started")
        for service in p.services:
            out.setdefault(service, []).append(
                {
                    "instance": instance,
                    "pid": info.get("pid"),
                    "host": info.get("host"),
                    "version": info.get("version"),
                    "uptime": None if not isinstance(started, int | float) else round(max(0.0, wall - started), 1),
                    "endpoint": p.endpoint,
                    "load": p.load,
                    "last_seen": round(now - at, 2),
                }
            )
    return dict(sorted(out.items()))


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return (
        f"{s // 86400}d{s % 86400 // 3600}h"
        if s >= 86400
        else f"{s // 3600}h{s % 3600 // 60:02d}m"
        if s >= 3600
        else f"{s // 60}m{s % 60:02d}s"
    )


def _print_services(table: dict[str, list[dict[str, Any]]]) -> None:
    if not table:
        click.echo("no services announced")
        return
    rows = [
        (
            service,
            i["instance"],
            str(i["pid"] or "-"),
            str(i["host"] or "-"),
            str(i["version"] or "-"),
            _uptime(i["uptime"]),
            i["endpoint"],
            str(i["load"]),
            f"{i['last_seen']:.1f}s",
        )
        for service, instances in table.items()
        for i in instances
    ]
    _print_table(("SERVICE", "INSTANCE", "PID", "HOST", "VERSION", "UP", "ENDPOINT", "LOAD", "SEEN"), rows)


async def _service_stats(broker: Any, presences: list[Any], timeout: float) -> dict[str, dict[str, Any]]:
    """Each instance's own counters (its ``<component>.status``), summed per service: instances,
    requests served, errors (failed or abandoned), p50 and p99 in ms (from the merged latency buckets)."""
    from ..core.message import ProcessingMessage
    from ..core.stats import Histogram

    async def ask(p: Any) -> dict[str, Any]:
        status = next((s for s in p.services if s.endswith(".status")), None)
        if status is None:
            return {}
        try:
            reply = await broker.request(
                status, ProcessingMessage(status, {}), timeout=min(timeout, 3.0), instance=p.instance
            )
        except Exception:  # an instance that does not answer: left out of the figures
            return {}
        services = reply.content.get("services") if isinstance(reply.content, dict) else None
        return services if isinstance(services, dict) else {}

    figures: dict[str, dict[str, Any]] = {}
    merged: dict[str, Histogram] = {}
    for p, served in zip(presences, await asyncio.gather(*(ask(p) for p in presences)), strict=True):
        for service in p.services:
            if service.startswith("_zmqbus.") or service.endswith(".status"):
                continue
            row = figures.setdefault(service, {"instances": 0, "requests": 0, "errors": 0})
            row["instances"] += 1
            counters = served.get(service)
            if not isinstance(counters, dict):
                continue
            outcomes = counters.get("outcomes", {})
            row["requests"] += sum(outcomes.values())
            row["errors"] += outcomes.get("failed", 0) + outcomes.get("abandoned", 0)
            merged.setdefault(service, Histogram()).merge(counters.get("buckets", []), counters.get("sum", 0.0))
    for service, row in figures.items():
        h = merged.get(service)
        for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
            value = None if h is None else h.quantile(q)
            row[name] = None if value is None else round(value * 1000, 3)
    return dict(sorted(figures.items()))


def _print_stats(figures: dict[str, dict[str, Any]]) -> None:
    if not figures:
        click.echo("no services announced")
        return
    rows = [
        (
            service,
            str(f["instances"]),
            str(f["requests"]),
            str(f["errors"]),
            "-" if f["p50_ms"] is None else f"{f['p50_ms']:.2f}ms",
            "-" if f["p99_ms"] is None else f"{f['p99_ms']:.2f}ms",
        )
        for service, f in figures.items()
    ]
    _print_table(("SERVICE", "INSTANCES", "REQUESTS", "ERRORS", "P50", "P99"), rows)


# -- req --------------------------------------------------------------------------------------------


@main.command("req")
@click.argument("service")
@pub_option
@sub_option
@click.option("--content", default="{}", show_default=True, help="The request's content, as JSON.")
@click.option("--correlation-id", default="", help="Correlation id (default: the message id).")
@timeout_option("Seconds for everything: the forwarder, finding an instance, the reply.")
@click.option("--attempts", default=1, show_default=True, help="Tries (a retry goes to another instance).")
@_json_option("Print the whole reply (content and ids) as JSON.")
def req(
    service: str, pub: str, sub: str, content: str, correlation_id: str, timeout: float, attempts: int, as_json: bool
) -> None:
    """Send one request to SERVICE and print the reply's content as JSON.

    Exit status: 0 answered, 3 the service raised, 4 no live instance (known once discovery has heard
    none for 1.5 s), 5 no reply in time, 1 any other error.
    """
    run_async(_req(service, pub, sub, _content(content), correlation_id, timeout, attempts, as_json))


async def _request(
    pub: str,
    sub: str,
    service: str,
    content: Any,
    timeout: float,
    *,
    name: str,
    correlation_id: str = "",
    attempts: int = 1,
) -> Any:
    """One request from the shell, within ``timeout`` in all; the reply message. Bus conditions become
    one line and the exit statuses of the module docstring."""
    from ..bus.broker import MessageBroker
    from ..core.message import MessageMetadata, ProcessingMessage
    from ..core.retry import RetryPolicy

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with MessageBroker(pub, sub, name=name) as broker:
        await connect(broker, timeout)
        try:  # every live instance answers discovery at once: none within the window means none
            await broker.wait_for_service(service, timeout=max(0.05, min(DISCOVERY_WAIT, deadline - loop.time())))
            return await broker.request(
                service,
                ProcessingMessage(
                    service,
                    content,
                    MessageMetadata(correlation_id=correlation_id, source_component=name, target_component=service),
                ),
                timeout=max(0.05, deadline - loop.time()),
                retry=RetryPolicy(attempts=attempts),
            )
        except RemoteError as exc:
            raise fail(exc, EXIT_REMOTE_ERROR) from None
        except NoResponder as exc:
            raise fail(exc, EXIT_NO_RESPONDER) from None
        except RequestTimeout as exc:
            raise fail(exc, EXIT_TIMEOUT) from None


async def _req(
    service: str, pub: str, sub: str, content: Any, correlation_id: str, timeout: float, attempts: int, as_json: bool
) -> None:
    reply = await _request(
        pub, sub, service, content, timeout, name="zmqbus-req", correlation_id=correlation_id, attempts=attempts
    )
    if as_json:
        md = reply.metadata
        click.echo(
            json.dumps(
                {
                    "content": reply.content,
                    "type": reply.type_name,
                    "message_id": md.message_id,
                    "correlation_id": md.correlation_id,
                    "causation_id": md.causation_id,
                    "source": md.source_component,
                },
                default=repr,
            )
        )
    else:
        click.echo(json.dumps(reply.content, indent=2, default=repr))


# -- ping -------------------------------------------------------------------------------------------


@main.command("ping")
@pub_option
@sub_option
@click.option(
    "--service",
    "services",
    multiple=True,
    metavar="NAME",
    help="Also check that NAME has a live instance that answers (repeatable).",
)
@timeout_option("Seconds for the whole check.")
@_listen_option("Seconds to count a service's instances")
def ping(pub: str, sub: str, services: tuple[str, ...], timeout: float, listen: float) -> None:
    """Check the bus: the forwarder's round trip and, with --service, each service's.

    Prints one line per check; exits 0 when all pass, else 1 (no forwarder) or 4 (a service has no live
    instance): fit for a container's health probe. A service's round trip is a discovery query answered
    by its first instance's announcement (its process is up and its event loop serving); its instances
    are those heard within --listen seconds of the query.
    """
    run_async(_ping(pub, sub, services, timeout, listen))


async def _ping(pub: str, sub: str, services: tuple[str, ...], timeout: float, listen: float) -> None:
    from ..bus.broker import MessageBroker

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with MessageBroker(pub, sub, name="zmqbus-ping") as broker:
        await connect(broker, timeout)
        started = loop.time()
        await broker.ready(max(0.05, deadline - loop.time()))  # a second probe: the round trip alone
        click.echo(f"forwarder {broker.sub_endpoint}: ok, {1000 * (loop.time() - started):.2f} ms")
        checks = [_ping_service(broker, service, min(listen, deadline - loop.time())) for service in services]
        for service, outcome in zip(services, await asyncio.gather(*checks), strict=True):
            if isinstance(outcome, NoResponder):
                raise fail(outcome, EXIT_NO_RESPONDER)
            n, rtt, infos = outcome
            who = "; ".join(
                f"pid {i.get('pid', '?')}@{i.get('host', '?')} v{i.get('version', '?')} up "
                + _uptime(time.time() - i["started"] if isinstance(i.get("started"), int | float) else None)
                for i in infos
            )
            click.echo(f"service {service}: ok, {n} instance(s), {1000 * rtt:.2f} ms ({who})")


async def _ping_service(broker: Any, service: str, listen: float) -> tuple[int, float, list[Any]] | NoResponder:
    """The first answer's round trip, then every instance heard within ``listen`` s of the query."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await broker.wait_for_service(service, timeout=max(0.05, listen))
    except NoResponder as exc:
        return exc
    rtt = loop.time() - started
    await asyncio.sleep(max(0.0, started + listen - loop.time()))
    return len(broker.live_instances(service)), rtt, broker.instance_info(service)


# -- dlq --------------------------------------------------------------------------------------------


@main.group("dlq")
def dlq() -> None:
    """Dead letters: what components could not process, kept by the error handler (they survive its
    restart), listed, shown and replayed from here."""


async def _ask(pub: str, sub: str, service: str, content: Any, timeout: float) -> Any:
    return (await _request(pub, sub, service, content, timeout, name="zmqbus-dlq")).content


_dlq_timeout = timeout_option()


_dlq_filters = [
    click.option("--component", default=None, help="Only the dead letters of this component."),
    click.option("--type", "message_type", default=None, help="Only dead letters of this message type."),
]


def _filtered(fn: F) -> F:
    for option in reversed(_dlq_filters):
        fn = option(fn)
    return fn


def _filters(component: str | None, message_type: str | None) -> dict[str, Any]:
    return {k: v for k, v in (("component", component), ("message_type", message_type)) if v}


def _when(at: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(at))) if at else "-"


@dlq.command("ls")
@pub_option
@sub_option
@_dlq_timeout
@click.option("--limit", default=0, help="Only the newest N (0: all the error handler keeps).")
@_filtered
@_json_option("One JSON list.")
def dlq_ls(
    pub: str, sub: str, timeout: float, limit: int, component: str | None, message_type: str | None, as_json: bool
) -> None:
    """List the dead letters, oldest first, with when each was dead-lettered."""
    query = {"limit": limit, **_filters(component, message_type)}
    letters = run_async(_ask(pub, sub, "errors.dead_letters", query, timeout))
    if as_json:
        click.echo(json.dumps(letters))
        return
    if not letters:
        click.echo("no dead letters")
    for letter in letters:
        click.echo(
            f"{letter['message_id']}  {_when(letter.get('at'))}  {letter.get('component') or '-'}  "
            f"{letter.get('message_type') or '-'}  cid={letter.get('correlation_id') or '-'}  "
            f"{letter.get('reason') or ''}"
        )


@dlq.command("purge")
@click.argument("message_ids", nargs=-1)
@pub_option
@sub_option
@_dlq_timeout
@click.option("--all", "purge_all", is_flag=True, help="Purge every dead letter (that the filters select).")
@_filtered
def dlq_purge(
    message_ids: tuple[str, ...],
    pub: str,
    sub: str,
    timeout: float,
    purge_all: bool,
    component: str | None,
    message_type: str | None,
) -> None:
    """Forget dead letters for good: MESSAGE_ID ..., or --all (narrowed by --component, --type)."""
    if not message_ids and not purge_all:
        raise click.UsageError("name the dead letters to purge (MESSAGE_ID ...) or pass --all")
    query: dict[str, Any] = (
        {"message_ids": list(message_ids)} if message_ids else {"all": True, **_filters(component, message_type)}
    )
    answer = run_async(_ask(pub, sub, "errors.purge", query, timeout))
    click.echo(f"purged {answer.get('purged', 0)} dead letter(s)")


@dlq.command("show")
@click.argument("message_id")
@pub_option
@sub_option
@_dlq_timeout
def dlq_show(message_id: str, pub: str, sub: str, timeout: float) -> None:
    """Print one dead letter, whole, as JSON (exit 1 if there is none with MESSAGE_ID)."""
    letter = run_async(_ask(pub, sub, "errors.dead_letter", {"message_id": message_id}, timeout))
    if not letter:
        raise click.ClickException(f"no dead letter {message_id!r}")
    click.echo(json.dumps(letter, indent=2))


@dlq.command("replay")
@click.argument("message_ids", nargs=-1)
@pub_option
@sub_option
@_dlq_timeout
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def dlq_replay(message_ids: tuple[str, ...], pub: str, sub: str, timeout: float, replay_all: bool) -> None:
    """Publish dead letters again, as they were first sent (the error handler then forgets them)."""
    run_async(_replay(message_ids, pub, sub, timeout, replay_all))


async def _replay(message_ids: tuple[str, ...], pub: str, sub: str, timeout: float, replay_all: bool) -> None:
    if replay_all:
        message_ids = tuple(x["message_id"] for x in await _ask(pub, sub, "errors.dead_letters", {}, timeout))
    if not message_ids:
        raise click.UsageError("name the dead letters to replay (MESSAGE_ID ...) or pass --all")
    missing = 0
    for message_id in message_ids:
        answer = await _ask(pub, sub, "errors.replay", {"message_id": message_id}, timeout)
        if answer.get("replayed"):
            click.echo(f"replayed {message_id}")
        else:
            missing += 1
            click.echo(f"not replayed {message_id}: {answer.get('reason')}", err=True)
    if missing:
        raise click.ClickException(f"{missing} of {len(message_ids)} not replayed")
