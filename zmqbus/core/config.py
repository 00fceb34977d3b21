"""Defaults and environment variables shared by the CLI, the client and the forwarder.

``ZMQBUS_PUB`` is where publishers connect (the forwarder's XSUB side) and
``ZMQBUS_SUB`` where subscribers connect (its XPUB side). Component processes
started by the CLI inherit them, so one setting wires a whole deployment.
"""

from __future__ import annotations

import os
import re

__all__ = [
    "endpoint_error",
    "DEFAULT_PUB",
    "DEFAULT_SUB",
    "DEFAULT_KEY_NAME",
    "pub_endpoint",
    "sub_endpoint",
    "ipc_endpoints",
    "keys_dir",
    "key_name",
    "insecure",
    "policy_file",
]

DEFAULT_PUB = "tcp://127.0.0.1:5570"
DEFAULT_SUB = "tcp://127.0.0.1:5571"
#: The key name a member uses when ``$ZMQBUS_KEY_NAME`` is not set (docs/SECURITY.md).
DEFAULT_KEY_NAME = "client"


def pub_endpoint(value: str | None = None) -> str:
    """``value``, else ``$ZMQBUS_PUB``, else :data:`DEFAULT_PUB`."""
    return value or os.environ.get("ZMQBUS_PUB") or DEFAULT_PUB


def sub_endpoint(value: str | None = None) -> str:
    """``value``, else ``$ZMQBUS_SUB``, else :data:`DEFAULT_SUB`."""
    return value or os.environ.get("ZMQBUS_SUB") or DEFAULT_SUB


def split_endpoints(value: str) -> list[str]:
    """The endpoints in ``value``: one, or several separated by commas (a redundant bus: one per forwarder)."""
    return [part.strip() for part in value.split(",") if part.strip()]


_HOST = re.compile(
    r"^(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*)$"
)
#: The longest ipc path a Unix socket takes (sun_path on Linux: 108 bytes with its NUL).
IPC_PATH_MAX = 107


def endpoint_error(endpoint: str, *, any_port: bool = False) -> str | None:
    """What is wrong with ``endpoint`` as a bus endpoint that processes share (None: nothing), by its
    syntax alone: ``tcp://HOST:PORT`` (a name, an IPv4 address, ``[IPv6]`` or ``*``; a port from 1 to
    65535, or ``*`` where ``any_port``) or ``ipc://PATH``. ``inproc://`` never leaves its process."""
    scheme, sep, rest = endpoint.partition("://")
    expected = "expected tcp://host:port or ipc://path"
    if not sep:
        return f"{endpoint!r} is not an endpoint: no '://' ({expected})"
    if scheme == "ipc":
        if not rest:
            return f"{endpoint!r} names no path"
        if len(rest.encode()) > IPC_PATH_MAX:
            return f"{endpoint!r}: an ipc path is at most {IPC_PATH_MAX} bytes, this one {len(rest.encode())}"
        return None
    if scheme == "inproc":
        return f"{endpoint!r}: inproc endpoints never leave their process ({expected})"
    if scheme != "tcp":
        return f"{endpoint!r}: unknown transport {scheme!r} ({expected})"
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        return f"{endpoint!r} names no port (tcp://host:port)"
    if not _HOST.match(host):
        return f"{endpoint!r}: {host!r} is not a host name or address"
    if port == "*" and any_port:
        return None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"{endpoint!r}: the port must be a number from 1 to 65535, not {port!r}"
    return None


def ipc_endpoints(directory: str, name: str = "bus") -> tuple[str, str]:
    """A pair of ipc endpoints in ``directory`` (for one-host deployments and tests)."""
    base = os.path.join(os.path.abspath(directory), name)
    return f"ipc://{base}.pub", f"ipc://{base}.sub"


def keys_dir(value: str | None = None) -> str | None:
    """``value``, else ``$ZMQBUS_KEYS`` (a key folder, docs/SECURITY.md), else None (no CURVE)."""
    return value or os.environ.get("ZMQBUS_KEYS") or None


def key_name(value: str | None = None) -> str:
    """``value``, else ``$ZMQBUS_KEY_NAME``, else :data:`DEFAULT_KEY_NAME`."""
    return value or os.environ.get("ZMQBUS_KEY_NAME") or DEFAULT_KEY_NAME


DEFAULT_RPC_BIND = "tcp://127.0.0.1:*"


def rpc_bind(value: str | None = None) -> str:
    """Where a responder binds: ``value``, else ``$ZMQBUS_RPC_BIND``, else loopback on a free port."""
    return value or os.environ.get("ZMQBUS_RPC_BIND") or DEFAULT_RPC_BIND


def rpc_advertise(value: str | None = None) -> str | None:
    """The address callers should use for this host's responders: ``value``, else ``$ZMQBUS_RPC_ADVERTISE``."""
    return value or os.environ.get("ZMQBUS_RPC_ADVERTISE") or None


def insecure(value: bool | None = None) -> bool:
    """``value``, else whether ``$ZMQBUS_INSECURE`` is set to 1/true/yes."""
    if value is not None:
        return value
    return os.environ.get("ZMQBUS_INSECURE", "").strip().lower() in ("1", "true", "yes")


def policy_file(value: str | None = None) -> str | None:
    """``value``, else ``$ZMQBUS_POLICY`` (a per-key permissions file, docs/SECURITY.md), else None."""
    return value or os.environ.get("ZMQBUS_POLICY") or None


def advertised_endpoint(bound: str, advertise: str | None) -> str:
    """The address callers should use: ``advertise`` (a host or a whole endpoint) or the bound one.

    Raises :class:`ValueError` for a wildcard bind (``0.0.0.0``, ``[::]``) with nothing to advertise.
    """
    if not advertise:
        if bound.startswith("tcp://0.0.0.0:") or bound.startswith("tcp://[::]:"):
            raise ValueError(f"bound to a wildcard address ({bound}): pass advertise= with a reachable host")
        return bound
    if "://" in advertise:
        return advertise
    port = bound.rsplit(":", 1)[1]
    return f"tcp://{advertise}:{port}"


def state_dir() -> str:
    """Where components keep state across restarts (dead letters, stream positions): ``$ZMQBUS_STATE_DIR``,
    else ``$XDG_STATE_HOME/zmqbus``, else ``~/.local/state/zmqbus``."""
    return os.environ.get("ZMQBUS_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state"), "zmqbus"
    )


def resume_file(component: str, replica: int) -> str:
    """The stream positions of one component replica (``zmqbus run``/``up``), under :func:`state_dir`."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in component)
    return os.path.join(state_dir(), f"streams-{safe}-{replica}.jsonl")


def history(value: bool | None = None) -> bool:
    """``value``, else whether ``$ZMQBUS_HISTORY`` leaves recovery on (default on; ``0``, ``false`` or ``no``
    turn it off for every broker of the process)."""
    if value is not None:
        return value
    return os.environ.get("ZMQBUS_HISTORY", "").strip().lower() not in ("0", "false", "no")


def guide_topics(value: bool | None = None) -> bool:
    """``value``, else whether ``$ZMQBUS_GUIDE_TOPICS`` leaves the bundled error handler's and state tracker's
    guide patterns (``#.error``, ``#.status.update``) on (default on; ``0``, ``false`` or ``no`` turn them off)."""
    if value is not None:
        return value
    return os.environ.get("ZMQBUS_GUIDE_TOPICS", "").strip().lower() not in ("0", "false", "no")


def batching(value: bool | None = None) -> bool:
    """``value``, else whether ``$ZMQBUS_BATCHING`` turns publisher batching on (``1``, ``true`` or ``yes``;
    default off: every receiver must understand batch frames, PROTOCOL.md section 2.4)."""
    if value is not None:
        return value
    return os.environ.get("ZMQBUS_BATCHING", "").strip().lower() in ("1", "true", "yes")
