"""The topology file's schema (``zmqbus up``): what each key may be, and every mistake in a file, named.

Pure: it checks the parsed TOML (a dict), so ``zmqbus up --check`` and ``up``
report the same errors before anything starts. A typo is an error that lists
the valid keys (and the closest one), never a silent default.
"""

from __future__ import annotations

import difflib
from typing import Any

from .config import endpoint_error, split_endpoints

__all__ = ["BUS_KEYS", "COMPONENT_KEYS", "TOP_LEVEL", "topology_errors", "describe"]

#: [bus]: key -> (type, what it is)
BUS_KEYS: dict[str, tuple[type, str]] = {
    "pub": (
        str,
        "publishers' endpoint (default $ZMQBUS_PUB, else tcp://127.0.0.1:5570); several, "
        "comma-separated: a redundant bus, one forwarder each",
    ),
    "sub": (str, "subscribers' endpoint (default $ZMQBUS_SUB, else tcp://127.0.0.1:5571); as many as pub"),
    "forwarder": (bool, "start a forwarder (default true)"),
    "keys": (str, "CURVE key folder, relative to the file (docs/SECURITY.md)"),
    "key_name": (str, "the components' key pair in that folder (default 'client')"),
    "insecure": (bool, "allow plaintext beyond loopback (default false)"),
    "policy": (str, "per-key permissions file, relative to the file"),
}
#: [[component]]: key -> (type, what it is)
COMPONENT_KEYS: dict[str, tuple[type, str]] = {
    "class": (str, "module:Class to run (required)"),
    "name": (str, "component name (default: the class's)"),
    "replicas": (int, "processes to run (default 1, at least 1)"),
    "metrics_port": (int, "serve each replica's Prometheus metrics: replica r on this port + r - 1"),
}
TOP_LEVEL = {"bus": "the bus (a table)", "component": "one component (an array of tables: [[component]])"}
_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer"}


def _unknown(key: str, valid: dict[str, Any], where: str) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r} in {where}{hint}; valid keys: {', '.join(valid)}"


def _typed(value: Any, kind: type, key: str, where: str) -> str | None:
    ok = isinstance(value, bool) if kind is bool else isinstance(value, kind) and not isinstance(value, bool)
    return None if ok else f"{where}: {key} must be {_TYPE_NAMES[kind]}, not {value!r}"


def topology_errors(data: dict[str, Any]) -> list[str]:
    """Every mistake in a parsed topology file, in reading order (empty: it is valid)."""
    errors: list[str] = []
    for key in data:
        if key not in TOP_LEVEL:
            errors.append(_unknown(key, TOP_LEVEL, "the file"))
    bus = data.get("bus", {})
    if not isinstance(bus, dict):
        errors.append("[bus] must be a table")
        bus = {}
    for key, value in bus.items():
        if key not in BUS_KEYS:
            errors.append(_unknown(key, BUS_KEYS, "[bus]"))
        elif (problem := _typed(value, BUS_KEYS[key][0], key, "[bus]")) is not None:
            errors.append(problem)
    pub, sub = bus.get("pub"), bus.get("sub")
    for key, value in (("pub", pub), ("sub", sub)):
        if isinstance(value, str):
            errors.extend(f"[bus] {key}: {e}" for part in split_endpoints(value) if (e := endpoint_error(part)))
    if isinstance(pub, str) and isinstance(sub, str) and bus.get("forwarder", True) is not False:
        n_pub, n_sub = (len([p for p in v.split(",") if p.strip()]) for v in (pub, sub))
        if n_pub != n_sub:
            errors.append(f"[bus]: pub names {n_pub} forwarder(s) and sub {n_sub}: one pair per forwarder")
    components = data.get("component", [])
    if not isinstance(components, list):
        errors.append("component must be an array of tables: write [[component]], not [component]")
        components = []
    for i, entry in enumerate(components):
        where = f"component #{i + 1}" + (
            f" ({entry['class']})" if isinstance(entry, dict) and isinstance(entry.get("class"), str) else ""
        )
        if not isinstance(entry, dict):
            errors.append(f"{where} must be a table")
            continue
        if "class" not in entry:
            errors.append(f"{where} has no 'class' (module:Class)")
        for key, value in entry.items():
            if key not in COMPONENT_KEYS:
                errors.append(_unknown(key, COMPONENT_KEYS, where))
            elif (problem := _typed(value, COMPONENT_KEYS[key][0], key, where)) is not None:
                errors.append(problem)
            elif key == "metrics_port" and not 1 <= value <= 65535 - entry.get("replicas", 1) + 1:
                errors.append(f"{where}: metrics_port must leave a port from 1 to 65535 for each replica, not {value}")
            elif key == "replicas" and value < 1:
                errors.append(f"{where}: replicas must be at least 1, not {value}")
            elif key == "class" and ":" not in value:
                errors.append(f"{where}: class must be module:Class, not {value!r}")
    return errors


def describe() -> str:
    """The file's keys, for ``zmqbus up --help``."""
    lines = ["[bus]"] + [f"  {k} = {_TYPE_NAMES[t]}: {what}" for k, (t, what) in BUS_KEYS.items()]
    lines += ["[[component]] (one per component)"]
    lines += [f"  {k} = {_TYPE_NAMES[t]}: {what}" for k, (t, what) in COMPONENT_KEYS.items()]
    return "\n".join(lines)
