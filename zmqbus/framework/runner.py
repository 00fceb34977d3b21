"""Running components as processes, and the topology they make (:mod:`.supervisor` supervises it).

* :func:`component_main` is a component process: it builds a MessageBroker
  from the endpoints, instantiates ``module:Class`` and runs it until SIGTERM
  or SIGINT (graceful ``stop``); a second signal kills it at once. Given a
  heartbeat, its event loop beats it every :data:`BEAT_INTERVAL` seconds.
* :func:`load_topology` reads a TOML file::

      [bus]
      pub = "tcp://127.0.0.1:5570"     # optional, else $ZMQBUS_PUB or the default
      sub = "tcp://127.0.0.1:5571"
      forwarder = true                  # start one (default true)
      keys = "keys"                     # optional: CURVE key folder, relative to this file
      key_name = "client"               #   (docs/SECURITY.md); else $ZMQBUS_KEYS / $ZMQBUS_KEY_NAME
      insecure = false                  # optional: plaintext beyond loopback
      policy = "policy.toml"            # optional: per-key permissions, relative to this file

      [[component]]
      class = "zmqbus.components.ingest:ChunkAnalyzer"
      name = "chunk_analyzer"           # optional
      replicas = 3                      # optional, default 1
      metrics_port = 9470               # optional: replica r serves metrics on 9470 + r - 1
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
import time
import tomllib
from dataclasses import dataclass, field
from typing import Any

from ..core import config
from ..core.errors import ZmqbusError
from ..core.security import check_endpoint
from ..core.topology import topology_errors
from ..io.security import config_keys, config_policy

__all__ = ["ComponentSpec", "Topology", "load_topology", "preflight", "load_component", "component_main"]

log = logging.getLogger(__name__)


def load_component(spec: str) -> type[Any]:
    """Import ``module:Class``; raise ValueError with a clear message otherwise.

    A module found nowhere on the import path is looked for in the current folder too, which is then
    searched *after* installed packages: a folder here named like an installed package (a checkout's
    ``zmqbus/``) never shadows it, in this process or in the component processes it starts.
    """
    from .component import Component

    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"expected module:Class, got {spec!r}")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            here = os.getcwd()
            if exc.name != module_name.split(".")[0] or here in sys.path:
                raise
            sys.path.append(here)  # the user's own module, beside where the command runs
            module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load {spec!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Component)):
        raise ValueError(f"{spec!r} is not a zmqbus Component")
    return cls


#: Seconds between a component process's heartbeats (what :mod:`.supervisor` checks).
BEAT_INTERVAL = 1.0
#: Seconds a component process waits for its forwarder at start (``zmqbus run --startup-timeout``).
STARTUP_TIMEOUT = 10.0


def component_main(
    spec: str,
    name: str | None,
    pub: str,
    sub: str,
    log_level: int = logging.WARNING,
    grace: float = 10.0,
    startup_timeout: float = STARTUP_TIMEOUT,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
    replica: int = 1,
    heartbeat: Any = None,
) -> None:
    """Run one component in this process until SIGTERM/SIGINT (a second signal kills). Replica ``replica``
    of its name records its stream positions in :func:`zmqbus.core.config.resume_file` and resumes from
    them (a restarted replica fetches what it missed while it was down).

    Exits 128 + the signal's number after a signal (143 SIGTERM, 130 SIGINT), 1 with a one-line
    error on stderr if the component cannot start (no forwarder within ``startup_timeout``, a
    failing ``setup``). Signals are honoured at any moment, start-up included.
    """
    from ..core.errors import ZmqbusError

    label = name or spec
    logging.basicConfig(level=log_level, format=f"%(asctime)s {label} %(levelname)s %(message)s")
    try:
        code = asyncio.run(
            _run_component(spec, name, pub, sub, grace, startup_timeout, metrics_port, metrics_addr, replica, heartbeat)
        )
    except (ZmqbusError, ValueError) as exc:
        print(f"zmqbus run {label}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 1
    raise SystemExit(code)


async def _run_component(
    spec: str,
    name: str | None,
    pub: str,
    sub: str,
    grace: float,
    startup_timeout: float,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
    replica: int = 1,
    heartbeat: Any = None,
) -> int:
    from ..bus.broker import MessageBroker

    loop = asyncio.get_running_loop()
    if heartbeat is not None:  # a shared double: the supervisor reads when this loop last turned
        beating = loop.create_task(_beat(heartbeat), name="zmqbus-heartbeat")
        _BEATING.add(beating)  # asyncio keeps only a weak reference to a task
        beating.add_done_callback(_BEATING.discard)
    stop = asyncio.Event()
    component: Any = None
    got: list[int] = []

    def on_signal(sig: int) -> None:
        if stop.is_set():  # the second signal: no more grace
            if component is not None:
                component.kill()
            os._exit(128 + sig)
        got.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    cls = load_component(spec)
    from ..bus import tracing

    tracing.enable_from_environment(name or cls.default_name())  # $ZMQBUS_TRACING: no code needed
    resume = config.resume_file(name or cls.default_name(), replica)
    broker = MessageBroker(
        pub, sub, metrics_port=metrics_port, metrics_addr=metrics_addr, resume_file=resume, replica=replica
    )

    def on_hup() -> None:  # reload the allow-list (and policy) of a secure member
        try:
            broker.reload_keys()
        except ZmqbusError as exc:
            log.error("SIGHUP: keys not reloaded: %s", exc)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    log.info("starting %s (publishers -> %s, subscribers -> %s); SIGTERM stops it at any moment", spec, pub, sub)
    component = cls(broker, name=name) if name else cls(broker)  # a guide-style __init__ takes the broker only
    starting = asyncio.ensure_future(component.start(startup_timeout))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # a signal during start-up
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await component.stop(0)
        return 128 + got[0]
    stopping.cancel()
    if starting.exception() is not None:
        await component.stop(0)
        starting.result()  # raises: reported in one line by component_main
    services = ", ".join(broker.services) or "none"
    metrics = (
        ""
        if broker.options.metrics_port is None
        else f"; metrics on http://{metrics_addr}:{broker.options.metrics_port}/metrics"
    )
    print(
        f"zmqbus run: {component.component_name} ready (pid {os.getpid()}) on {pub} / {sub}; serving {services}"
        f"{metrics}",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    await component.stop(grace)
    return 128 + got[0]  # stopped by a signal: 130 (Ctrl-C) or 143 (SIGTERM)


_BEATING: set[asyncio.Task[None]] = set()


async def _beat(heartbeat: Any) -> None:
    while True:
        heartbeat.value = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the host
        await asyncio.sleep(BEAT_INTERVAL)


@dataclass
class ComponentSpec:
    cls: str
    name: str | None = None
    replicas: int = 1
    #: Serve each replica's Prometheus metrics: replica r on ``metrics_port + r - 1`` (None: none).
    metrics_port: int | None = None


@dataclass
class Topology:
    pub: str
    sub: str
    forwarder: bool = True
    components: list[ComponentSpec] = field(default_factory=list)
    keys: str | None = None
    key_name: str | None = None
    insecure: bool = False
    policy: str | None = None

    def environment(self) -> dict[str, str]:
        """The security settings as the environment variables every process reads (docs/SECURITY.md)."""
        env = {
            "ZMQBUS_KEYS": self.keys,
            "ZMQBUS_KEY_NAME": self.key_name,
            "ZMQBUS_INSECURE": "1" if self.insecure else None,
            "ZMQBUS_POLICY": self.policy,
        }
        return {k: v for k, v in env.items() if v}


def preflight(topo: Topology) -> None:
    """Set the topology's security environment (every process started then inherits it) and check it as
    each process will: keys and policy readable, no plaintext tcp beyond loopback without ``--insecure``.
    Raises the :class:`ZmqbusError` a process would die of, once, before any starts."""
    problems = [
        f"{side} endpoint {e}"
        for side, value in (("publishers'", topo.pub), ("subscribers'", topo.sub))
        for part in config.split_endpoints(value)
        if (e := config.endpoint_error(part) or _ipc_folder_error(part))
    ]
    if problems:
        raise ZmqbusError("; ".join(problems))
    os.environ.update(topo.environment())
    member_keys = config_keys()
    if topo.forwarder:
        config_keys(server=False)
    config_policy()
    for endpoint in (*config.split_endpoints(topo.pub), *config.split_endpoints(topo.sub)):
        check_endpoint(endpoint, member_keys, config.insecure(), "connect to")


def _ipc_folder_error(endpoint: str) -> str | None:
    """An ipc endpoint's folder must exist: the forwarder binds a socket file there."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):  # @: Linux's abstract namespace
        return None
    folder = os.path.dirname(os.path.abspath(endpoint[len("ipc://") :]))
    return None if os.path.isdir(folder) else f"{endpoint!r}: its folder {folder} does not exist"


def load_topology(path: str) -> Topology:
    """Read a topology file (see the module docstring); raise ValueError on a bad one."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read topology {path}: {exc}") from None
    errors = topology_errors(data)
    for entry in data.get("component", []) if not errors else []:
        try:
            load_component(entry["class"])  # fail now, not in a child process
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        raise ValueError(f"{path}: {len(errors)} error(s):\n  " + "\n  ".join(errors))
    bus = data.get("bus", {})
    comps = [
        ComponentSpec(e["class"], e.get("name"), e.get("replicas", 1), e.get("metrics_port"))
        for e in data.get("component", [])
    ]
    here = os.path.dirname(os.path.abspath(path))
    keys, policy = bus.get("keys"), bus.get("policy")
    return Topology(
        config.pub_endpoint(bus.get("pub")),
        config.sub_endpoint(bus.get("sub")),
        bool(bus.get("forwarder", True)),
        comps,
        None if keys is None else os.path.join(here, str(keys)),
        bus.get("key_name"),
        bool(bus.get("insecure")),
        None if policy is None else os.path.join(here, str(policy)),
    )
