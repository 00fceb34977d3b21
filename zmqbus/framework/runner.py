"""Running components as processes, and supervising a whole topology.

* :func:`component_main` is a component process: it builds a MessageBroker
  from the endpoints, instantiates ``module:Class`` and runs it until SIGTERM
  or SIGINT (graceful ``stop``); a second signal kills it at once.
* :class:`Supervisor` starts a forwarder and component replicas (spawned
  processes, a fresh ZeroMQ context in each), restarts a process that dies
  (backoff doubling from 0.5 s up to 10 s) unless it crash-loops (more than
  ``crash_limit`` restarts in 60 s), and stops everything in order: the
  components first, the forwarder last.
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
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing.process
import os
import signal
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core import config
from ..core.errors import ZmqbusError
from ..core.security import check_endpoint
from ..core.topology import topology_errors
from ..io.security import config_keys, config_policy
from .procs import forwarder_process, spawn, stop_process

__all__ = ["ComponentSpec", "Topology", "Supervisor", "load_topology", "preflight", "load_component", "component_main"]

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


def component_main(
    spec: str,
    name: str | None,
    pub: str,
    sub: str,
    log_level: int = logging.WARNING,
    grace: float = 10.0,
    startup_timeout: float = 10.0,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
    replica: int = 1,
) -> None:
    """Run one component in this process until SIGTERM/SIGINT (a second signal kills). Replica ``replica``
    of its name records its stream positions in :func:`zmqbus.core.config.resume_file` and resumes from
    them (a restarted replica fetches what it missed while it was down).

    Exits 0 after a signal, 1 with a one-line error on stderr if the
    component cannot start (no forwarder within ``startup_timeout``, a
    failing ``setup``). Signals are honoured at any moment, start-up included.
    """
    from ..core.errors import ZmqbusError

    label = name or spec
    logging.basicConfig(level=log_level, format=f"%(asctime)s {label} %(levelname)s %(message)s")
    try:
        code = asyncio.run(
            _run_component(spec, name, pub, sub, grace, startup_timeout, metrics_port, metrics_addr, replica)
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
) -> int:
    from ..bus.broker import MessageBroker
    from ..core.errors import ZmqbusError

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    component: Any = None

    def on_signal() -> None:
        if stop.is_set():  # the second signal: no more grace
            if component is not None:
                component.kill()
            os._exit(1)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    cls = load_component(spec)
    resume = config.resume_file(name or cls.default_name(), replica)
    broker = MessageBroker(pub, sub, metrics_port=metrics_port, metrics_addr=metrics_addr, resume_file=resume)

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
        return 0
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
    return 0


@dataclass
class ComponentSpec:
    cls: str
    name: str | None = None
    replicas: int = 1


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
    comps = [ComponentSpec(e["class"], e.get("name"), e.get("replicas", 1)) for e in data.get("component", [])]
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


@dataclass(eq=False)
class _Managed:
    label: str
    start: Callable[[], multiprocessing.process.BaseProcess]
    proc: multiprocessing.process.BaseProcess | None = None
    restarts: list[float] = field(default_factory=list)
    next_start: float = 0.0
    given_up: bool = False


class Supervisor:
    """Starts, watches and stops the processes of a topology (see the module docstring)."""

    def __init__(
        self,
        topology: Topology,
        *,
        crash_limit: int = 5,
        log_level: int = logging.WARNING,
        on_event: Callable[[str], None] | None = None,
        keep_going: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topology = topology
        self.crash_limit = crash_limit
        self.keep_going = keep_going
        #: Why supervision must end (a process it gave up on), else None. A
        #: forwarder given up on always ends it; a component only without ``keep_going``.
        self.failure: str | None = None
        self._clock = clock
        self.on_event = on_event or (lambda text: log.info("%s", text))
        self._forwarders: list[_Managed] = []
        self._components: list[_Managed] = []
        t = topology
        if t.forwarder:
            pairs = list(zip(config.split_endpoints(t.pub), config.split_endpoints(t.sub), strict=True))
            for i, (pub, sub) in enumerate(pairs):  # several: a redundant bus, one forwarder per pair
                label = "forwarder" if len(pairs) == 1 else f"forwarder#{i + 1}"
                self._forwarders.append(_Managed(label, _forwarder_starter(pub, sub)))
        for spec in t.components:
            for r in range(spec.replicas):
                label = f"{spec.name or spec.cls.rsplit(':', 1)[1]}#{r + 1}"
                self._components.append(_Managed(label, _starter(spec, t, log_level, r + 1)))

    @property
    def managed(self) -> list[_Managed]:
        return self._forwarders + self._components

    def pids(self) -> dict[str, int | None]:
        return {m.label: (m.proc.pid if m.proc is not None else None) for m in self.managed}

    def start(self) -> None:
        for m in self.managed:
            m.proc = m.start()
            self.on_event(f"started {m.label} (pid {m.proc.pid})")

    def check(self) -> None:
        """Restart processes that died (call it periodically); set :attr:`failure` on giving up."""
        now = self._clock()
        for m in self.managed:
            if m.given_up or m.proc is None:
                continue
            if m.proc.is_alive():
                continue
            if m.next_start == 0.0:
                m.restarts = [t for t in m.restarts if now - t < 60.0]
                if len(m.restarts) >= self.crash_limit:
                    m.given_up = True
                    reason = (
                        f"{m.label} crash-loops ({len(m.restarts)} restarts in 60 s, last exit code "
                        f"{m.proc.exitcode}): giving up on it"
                    )
                    self.on_event(reason)
                    if m in self._forwarders or not self.keep_going:
                        self.failure = self.failure or reason
                    continue
                delay = min(10.0, 0.5 * 2 ** len(m.restarts))
                m.next_start = now + delay
                self.on_event(f"{m.label} (pid {m.proc.pid}) exited with {m.proc.exitcode}; restarting in {delay:g} s")
            elif now >= m.next_start:
                m.restarts.append(now)
                m.next_start = 0.0
                m.proc = m.start()
                self.on_event(f"restarted {m.label} (pid {m.proc.pid})")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the components (then the forwarder), SIGKILL what does not exit in time."""
        for m in self._components:
            if m.proc is not None and m.proc.pid is not None and m.proc.is_alive():
                os.kill(m.proc.pid, signal.SIGTERM)
        deadline = self._clock() + timeout
        for m in self._components:
            if m.proc is not None:
                stop_process(m.proc, timeout=max(0.1, deadline - self._clock()))
        for m in self._forwarders:
            if m.proc is not None:
                stop_process(m.proc, timeout=5.0)
        self.on_event("all processes stopped")

    def run_until(self, stop: Callable[[], bool], interval: float = 0.2) -> None:
        """Supervise until ``stop()`` is true or supervision fails (see :attr:`failure`)."""
        while not stop() and self.failure is None:
            self.check()
            time.sleep(interval)


def _forwarder_starter(pub: str, sub: str) -> Callable[[], multiprocessing.process.BaseProcess]:
    return lambda: forwarder_process(pub, sub, stats_interval=5.0)


def _starter(
    spec: ComponentSpec, topology: Topology, log_level: int, replica: int = 1
) -> Callable[[], multiprocessing.process.BaseProcess]:
    def start() -> multiprocessing.process.BaseProcess:
        return spawn(
            component_main,
            spec.cls,
            spec.name,
            topology.pub,
            topology.sub,
            log_level,
            10.0,
            10.0,
            None,
            "127.0.0.1",
            replica,
            name=f"zmqbus-{spec.name or spec.cls}",
        )

    return start
