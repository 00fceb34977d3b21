"""What every command shares: endpoint options, running a coroutine with signals honoured, and
connecting with a word to the user when the forwarder does not answer at once."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..core import config
from ..core.errors import ZmqbusError

if TYPE_CHECKING:
    from ..bus.broker import MessageBroker

__all__ = [
    "pub_option",
    "sub_option",
    "timeout_option",
    "run",
    "connect",
    "fail",
    "CommandFailed",
    "EXIT_SIGNAL",
    "DEFAULT_TIMEOUT",
    "DISCOVERY_WAIT",
    "show",
]

pub_option = click.option(
    "--pub",
    "pub",
    envvar="ZMQBUS_PUB",
    default=config.DEFAULT_PUB,
    show_default=True,
    help="Publishers' endpoint (the forwarder's XSUB side). [env: ZMQBUS_PUB]",
)
sub_option = click.option(
    "--sub",
    "sub",
    envvar="ZMQBUS_SUB",
    default=config.DEFAULT_SUB,
    show_default=True,
    help="Subscribers' endpoint (the forwarder's XPUB side). [env: ZMQBUS_SUB]",
)

F = TypeVar("F", bound=Callable[..., Any])

#: Every command's default ``--timeout``: seconds for the whole command, the forwarder included.
DEFAULT_TIMEOUT = 10.0
#: Seconds in which discovery hears every live instance of a service: each answers a discovery query at
#: once and announces itself every second. ``req`` says "no live instance" after it, ``ping`` counts in it.
DISCOVERY_WAIT = 1.5


def timeout_option(what: str = "Seconds for the whole command, the forwarder included.") -> Callable[[F], F]:
    """The ``--timeout`` of every command (default :data:`DEFAULT_TIMEOUT`)."""
    return click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, help=what)


#: Exit status after SIGTERM or SIGINT ended a command (128 + SIGTERM, as shells report it).
EXIT_SIGNAL = 143
#: Seconds before a command that waits for the forwarder says so.
WAITING_NOTICE = 1.0


class CommandFailed(click.ClickException):
    """A one-line error that ends a command with exit status ``exit_code`` (1 unless a subclass says).

    The status is a class attribute, as click (8.5 on) types it: one subclass per status, made by
    :func:`fail`, never an instance attribute.
    """


_FAILED: dict[int, type[CommandFailed]] = {1: CommandFailed}


def fail(exc: BaseException | str, code: int = 1) -> click.ClickException:
    """A one-line error with exit status ``code``: ``exc`` as ``Type: message``, or a plain string."""
    cls = _FAILED.get(code)
    if cls is None:
        cls = _FAILED[code] = type(f"CommandFailed{code}", (CommandFailed,), {"exit_code": code})
    return cls(exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}")


def show(report: Any, as_json: bool, watch: bool, printer: Callable[[Any], None]) -> None:
    """One report of a command: one JSON line, or ``printer``'s text (under a ``-- HH:MM:SS`` line when
    the command watches)."""
    if as_json:
        click.echo(json.dumps(report))
        return
    if watch:
        click.echo(time.strftime("-- %H:%M:%S"))
    printer(report)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro``; SIGTERM and SIGINT end it at any moment (exit 143 / 130, no traceback);
    zmqbus errors become one line and exit 1."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        got: list[int] = []

        def on_signal(sig: int) -> None:
            got.append(sig)
            if task is not None:
                task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await coro
        except asyncio.CancelledError:
            if got:
                raise SystemExit(130 if got[0] == signal.SIGINT else EXIT_SIGNAL) from None
            raise

    try:
        return asyncio.run(main())
    except ZmqbusError as exc:
        raise fail(exc) from None


async def connect(broker: MessageBroker, timeout: float) -> float:
    """Start ``broker`` and wait until the forwarder answers (``ready``), for at most ``timeout``
    seconds; after a second, say what it is waiting for. Returns the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    def notice() -> None:
        click.echo(
            f"waiting for the forwarder at {broker.pub_endpoint} / {broker.sub_endpoint} "
            f"(up to {timeout:g} s; Ctrl-C to give up)",
            err=True,
        )

    handle = loop.call_later(WAITING_NOTICE, notice) if timeout > WAITING_NOTICE else None
    try:
        await broker.ready(timeout)
    finally:
        if handle is not None:
            handle.cancel()
    return loop.time() - started
