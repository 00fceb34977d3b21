"""The ``zmqbus`` command line.

Every command takes its endpoints from ``--pub``/``--sub``, else from
``$ZMQBUS_PUB``/``$ZMQBUS_SUB``, else the defaults in :mod:`zmqbus.core.config`.
zmqbus errors are turned into a one-line message and exit status 1 here, at
the edge, and nowhere else.
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType

import click

from .. import __version__
from ..core import config
from ..core.errors import ZmqbusError
from .common import fail

__all__ = ["main"]


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
    # One rule for every command: a signal that ends it exits 128 + its number (Ctrl-C 130, SIGTERM
    # 143). Commands with their own signal handling (the async ones, run, up, forwarder) keep it and
    # end with the same statuses; the others unwind (their cleanup runs) with these.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_on_signal)
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


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


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
    from ..io.security import FORWARDER_KEY_NAME, keygen as make_keys

    try:
        public, secret = make_keys(
            directory, name, allow=name != FORWARDER_KEY_NAME if allow is None else allow, force=force
        )
    except ZmqbusError as exc:
        raise fail(exc) from None
    click.echo(f"wrote {public} and {secret}")
