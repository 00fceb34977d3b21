"""TestBus: a real forwarder and real brokers for a test, with faults, stand-ins and recorders."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..bus.broker import MessageBroker
from ..bus.forwarder import Forwarder
from ..core.config import ipc_endpoints
from ..core.errors import ZmqbusError
from ..core.message import MessageMetadata, MessageTypeLike, ProcessingMessage
from ..core.retry import RetryPolicy
from ..core.topics import compile_pattern
from ..framework.component import Component
from ..framework.procs import environment
from ..framework.runner import load_component
from .recorder import Recorder, wait_until
from .services import MockService, Wrap, failing, stalled
from .spawning import Spawned, end_replica, start_replica

__all__ = ["TestBus", "Recorder", "Spawned", "MockService", "wait_until"]

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Component)


class TestBus:
    """A real bus for one test: a forwarder (a thread of this process) and brokers bound to it.

    :param pub_endpoint: publishers' endpoint (default: ipc in a new temporary folder).
    :param sub_endpoint: subscribers' endpoint.
    :param timeout: the default bound of every wait here (start-up, requests, readiness).

    Use it with ``async with TestBus() as bus:`` or the pytest fixture ``bus``;
    everything it started is ended when it closes: components stopped,
    brokers closed, processes ended by pid, the forwarder stopped, the folder removed.
    """

    __test__ = False  # a class named Test* that pytest must not collect

    def __init__(
        self, pub_endpoint: str | None = None, sub_endpoint: str | None = None, *, timeout: float = 10.0
    ) -> None:
        self._dir: str | None = None
        if pub_endpoint is None or sub_endpoint is None:
            self._dir = tempfile.mkdtemp(prefix="zmqbus-test-")
            pub_endpoint, sub_endpoint = ipc_endpoints(self._dir)
        self.pub_endpoint, self.sub_endpoint = pub_endpoint, sub_endpoint
        self.timeout = timeout
        self.forwarder: Forwarder | None = None
        self.components: list[Component] = []
        self.spawned: list[Spawned] = []
        self._brokers: list[MessageBroker] = []
        self._client: MessageBroker | None = None
        self._request_recorders: list[tuple[Callable[[str], bool], Recorder]] = []
        self._logs: str | None = None  # where spawned replicas write (a folder of this bus)
        self._loop_guard: AsyncIterator[None] | None = None
        self._closed = False
        self.start_forwarder()

    # -- the bus ----------------------------------------------------------------

    def start_forwarder(self) -> Forwarder:
        """Start the forwarder (again, after :meth:`stop_forwarder`), on the same endpoints."""
        if self.forwarder is None:
            self.forwarder = Forwarder(self.pub_endpoint, self.sub_endpoint, stats_interval=None).start()
        return self.forwarder

    def stop_forwarder(self) -> None:
        """Stop the forwarder: pub/sub and discovery stop until :meth:`start_forwarder`."""
        if self.forwarder is not None:
            self.forwarder.stop()
            self.forwarder = None

    async def restart_forwarder(self, downtime: float = 0.0) -> None:
        """Stop the forwarder, wait ``downtime`` seconds, start a new one; return once this process's
        brokers are connected again and their subscriptions are live (what was in flight is lost
        and counted as gaps, as in production)."""
        await self._check_open_in_loop()
        self.stop_forwarder()
        if downtime > 0:
            await asyncio.sleep(downtime)
        self.start_forwarder()
        await asyncio.gather(*(b.ready(self.timeout) for b in self._brokers if b.started and not b.closed))

    def broker(self, name: str | None = None, **kwargs: Any) -> MessageBroker:
        """A new :class:`MessageBroker` bound to this bus (closed with it); not started yet.

        The requests it makes are seen by :meth:`requests`."""
        b = MessageBroker(self.pub_endpoint, self.sub_endpoint, name=name or "", **kwargs)
        self._watch_requests(b)
        self._brokers.append(b)
        return b

    def _watch_requests(self, b: MessageBroker) -> None:
        request = b.request

        async def recorded(service: str, message: ProcessingMessage, **kwargs: Any) -> ProcessingMessage:
            for match, recorder in self._request_recorders:
                if match(service):
                    recorder.add(dataclasses.replace(message, topic=service))
            return await request(service, message, **kwargs)

        b.request = recorded  # type: ignore[method-assign]

    @property
    def client(self) -> MessageBroker:
        """The test's own broker (named ``test``): :meth:`publish`, :meth:`record` and :meth:`request` use it."""
        if self._client is None:
            self._client = self.broker("test")
        return self._client

    # -- components ----------------------------------------------------------------

    async def start(self, component: type[C] | C, *, name: str | None = None, **kwargs: Any) -> C:
        """Start one component in this process; return it once it is ready.

        ``component`` is a class (it gets its own broker on this bus, ``name``
        and ``kwargs`` go to its constructor) or an instance built on a broker
        from :meth:`broker`. Ready means its subscriptions are live at the
        forwarder and at the publisher of every broker started here (no slow-joiner loss), and
        its services are announced and known to :attr:`client`.
        """
        await self._check_open_in_loop()
        if isinstance(component, type):
            if name is not None:
                kwargs["name"] = name  # only when given: a guide-style __init__ takes the broker alone
            with self._state():
                comp = component(self.broker(), **kwargs)
        else:
            comp = component
            b = comp.message_broker
            if (b.pub_endpoint, b.sub_endpoint) != (self.pub_endpoint, self.sub_endpoint):
                raise ZmqbusError(
                    f"{comp.component_name}'s broker is bound to {b.pub_endpoint} / "
                    f"{b.sub_endpoint}, not to this bus: build it on bus.broker()"
                )
            if b not in self._brokers:
                self._brokers.append(b)
        self.components.append(comp)
        with self._state():
            await comp.start(self.timeout)
        await self.client.wait_for_service(
            f"{comp.component_name}.status", instance_id=comp.message_broker.client_id, timeout=self.timeout
        )
        await self._everyone_ready(comp.message_broker)
        return comp

    async def _everyone_ready(self, new: MessageBroker) -> None:
        """Every other broker of this process proves, with a probe, that its publisher has the new
        subscriptions (ZeroMQ hands them to each publisher in its own time)."""
        await asyncio.gather(
            *(b.ready(self.timeout) for b in self._brokers if b is not new and b.started and not b.closed)
        )

    async def start_all(self, *components: type[Component] | Component) -> list[Component]:
        """Start several components at once (see :meth:`start`); return them in order."""
        return list(await asyncio.gather(*(self.start(c) for c in components)))

    async def spawn(self, spec: str, *, name: str | None = None, replicas: int = 1, grace: float = 5.0) -> Spawned:
        """Run ``module:Class`` as ``replicas`` real processes (as ``zmqbus run`` does); return once every
        replica's services are announced. :meth:`kill` ends them with SIGKILL, :meth:`stop` with SIGTERM.

        Each replica is a new interpreter with this process's import path that imports the module
        named in ``spec`` (never your test script: a script fed on standard input works too; the
        module's top level runs in the child, so keep what must not run there under
        ``if __name__ == "__main__":``). A replica that exits during start-up raises
        :class:`ZmqbusError` at once, with its exit code and its last lines of output
        (:meth:`Spawned.output` has all of it; the teardown prints it, so pytest shows it for a failed test).
        """
        await self._check_open_in_loop()
        cls = load_component(spec)  # fails here, in the test, when the spec is wrong
        label = name or cls.default_name()
        status = f"{label}.status"
        before = len(self.client.live_instances(status))
        if self._logs is None:
            self._logs = tempfile.mkdtemp(prefix="zmqbus-test-logs-")
        base = {
            "spec": spec,
            "name": name,
            "pub": self.pub_endpoint,
            "sub": self.sub_endpoint,
            "log_level": logging.WARNING,
            "grace": grace,
            "startup_timeout": self.timeout,
        }
        logs = [Path(self._logs) / f"{label}-{len(self.spawned)}-{r}.log" for r in range(1, replicas + 1)]
        with self._state():
            procs = [start_replica({**base, "replica": r}, logs[r - 1]) for r in range(1, replicas + 1)]
        handle = Spawned(spec, label, procs, logs)
        self.spawned.append(handle)
        waiting = asyncio.ensure_future(
            self.client.wait_for_service(status, instances=before + replicas, timeout=self.timeout)
        )
        try:
            while not waiting.done():
                dead = handle.dead_at_start()
                if dead is not None:
                    raise ZmqbusError(f"{spec} did not start: {dead}")
                await asyncio.wait([waiting], timeout=0.05)
            await waiting
        except ZmqbusError as exc:
            if isinstance(exc, ZmqbusError) and str(exc).startswith(f"{spec} did not start"):
                raise
            raise ZmqbusError(
                f"{spec} did not come up within {self.timeout:g} s (replicas running: {handle.alive()} "
                f"of {replicas}; replica 1's last lines:\n{handle.output(1, 20)})"
            ) from None
        finally:
            waiting.cancel()
        return handle

    async def stop(self, target: Component | Spawned, grace: float = 5.0) -> None:
        """Stop a component gracefully (``Component.stop``), or its processes with SIGTERM."""
        if isinstance(target, Spawned):
            await asyncio.gather(*(asyncio.to_thread(end_replica, p, signal.SIGTERM, grace) for p in target.processes))
        else:
            await target.stop(grace)

    async def kill(self, target: Component | Spawned) -> None:
        """End at once: processes get SIGKILL (a crash: no goodbye, callers fail over when its
        heartbeats stop); an in-process component has its work cancelled and its broker closed
        without grace."""
        if isinstance(target, Spawned):
            await asyncio.gather(
                *(asyncio.to_thread(end_replica, p, signal.SIGKILL, self.timeout) for p in target.processes)
            )
        else:
            target.kill()
            await target.message_broker.close(linger=0, grace=0)

    # -- faults in services -------------------------------------------------------------

    @contextlib.contextmanager
    def fail(self, service: str, error: BaseException | None = None, *, times: int | None = None) -> Iterator[None]:
        """Within the block, ``service`` raises ``error`` (default RuntimeError) in every in-process
        component that serves it: every call, or the first ``times`` calls (the rest run normally).

        The failure is raised where the handler's code would run, inside the component's guard: it
        is logged, counted, reported to the error handler (a fatal one) and answered exactly as the
        handler raising it would be."""
        with self._patched(service, failing(service, error, times)):
            yield

    @contextlib.contextmanager
    def stall(self, service: str, seconds: float) -> Iterator[None]:
        """Within the block, ``service`` waits ``seconds`` before its handler runs (a slow responder).

        A request whose deadline passes during the stall is abandoned as slow async work is: the
        handler never runs and the caller (who has given up) is answered ``expired``."""
        with self._patched(service, stalled(seconds)):
            yield

    @contextlib.contextmanager
    def _patched(self, service: str, wrap: Wrap) -> Iterator[None]:
        originals = [(b, h) for b in self._brokers if not b.closed and (h := b.handler_for(service)) is not None]
        if not originals:
            raise ZmqbusError(
                f"no component started in this process serves {service!r} "
                "(bus.start() it; a spawned process cannot be patched)"
            )
        for b, h in originals:
            served_by = getattr(h, "_zmqbus_served", None)  # (guard, the component's own method)
            if served_by is not None:
                guard, method = served_by
                b.serve(service, guard.served(wrap(method)))
            else:  # a plain broker's handler: the responder logs and answers it alike
                b.serve(service, wrap(h))
        try:
            yield
        finally:
            for b, h in originals:
                if not b.closed:
                    b.serve(service, h, cancel_at_deadline=b.cancels_at_deadline(service))

    # -- stand-ins and what components request -----------------------------------------

    async def mock_service(self, service: str, reply: Any = None) -> MockService:
        """Serve ``service`` with a stand-in the test controls, so one component can be tested alone
        (nameko's ``worker_factory``, over the real transport); return it once callers can reach it.

        ``reply`` is the reply's content, an exception to raise, or a callable of the request
        (sync or async; see :class:`MockService`); every request it gets is recorded (``calls``,
        ``wait_for``...). Start no real instance of ``service`` beside it (a ZmqbusError says so
        when one is there already)."""
        await self._check_open_in_loop()
        real = [i for i in self.client.live_instances(service)]
        if real:
            raise ZmqbusError(f"{service!r} is served already by {real}: a stand-in replaces no live instance")
        mock = MockService(service, reply)
        b = self.broker(f"mock-{service}")
        b.serve(service, mock.handle)
        await b.start()
        await b.ready(self.timeout)
        await self.client.wait_for_service(service, instance_id=b.client_id, timeout=self.timeout)
        return mock

    def requests(self, service: str = "#") -> Recorder:
        """Record the requests the components of this process make from now on, to ``service`` (a
        name, or a pattern such as ``pricing.#``): each is the request message as sent (its ``topic``
        the service). Spawned processes are not seen."""
        self._check_open()
        recorder = Recorder(service)
        self._request_recorders.append((compile_pattern(service).match, recorder))
        return recorder

    # -- messages ---------------------------------------------------------------------

    async def record(self, pattern: str = "#") -> Recorder:
        """Record what matches ``pattern`` from now on; return once the subscription is live.

        Live means it reached the forwarder and, from there, the publishing socket of every broker
        started in this process (each proves it with a probe): a component that publishes right
        after cannot lose the message to ZeroMQ's slow-joiner effect. (A spawned process's
        publisher gets the subscription a moment later.)
        """
        await self._check_open_in_loop()
        rec = Recorder(pattern)
        client = self.client
        client.subscribe("test", pattern, rec)
        await client.ready(self.timeout)
        await self._everyone_ready(client)
        return rec

    async def publish(
        self,
        message_type: MessageTypeLike,
        content: Any = None,
        *,
        correlation_id: str = "",
        source: str = "test",
        target: str | None = None,
        topic: str | None = None,
    ) -> ProcessingMessage:
        """Publish one message (content default ``{}``) from the test; return it (its ids are set)."""
        await self._check_open_in_loop()
        msg = ProcessingMessage(
            message_type,
            {} if content is None else content,
            MessageMetadata(correlation_id=correlation_id, source_component=source, target_component=target),
        )
        await self.client.publish(msg, topic=topic)
        return msg

    async def request(
        self,
        service: str,
        content: Any = None,
        *,
        correlation_id: str = "",
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Any:
        """Request ``service`` once its first instance is known; return the reply's content.

        Raises what :meth:`MessageBroker.request` raises (``RemoteError``...).
        """
        await self._check_open_in_loop()
        timeout = self.timeout if timeout is None else timeout
        await self.client.wait_for_service(service, timeout=timeout)
        reply = await self.client.request(
            service,
            ProcessingMessage(
                service,
                {} if content is None else content,
                MessageMetadata(correlation_id=correlation_id, source_component="test", target_component=service),
            ),
            timeout=timeout,
            retry=retry,
        )
        return reply.content

    # -- life cycle ---------------------------------------------------------------------

    def _state(self) -> contextlib.AbstractContextManager[None]:
        """Components started here keep their state (dead letters...) in this bus's folder."""
        return environment({"ZMQBUS_STATE_DIR": self._dir} if self._dir is not None else {})

    def _check_open(self) -> None:
        if self._closed:
            raise ZmqbusError("this TestBus is closed")

    async def _check_open_in_loop(self) -> None:
        """Open, and closed with the event loop it runs in: an async generator the loop finalizes
        when it shuts down (``asyncio.Runner.close``, which pytest-asyncio and anyio use), so the
        brokers are closed in their loop even when the test's loop ends before the bus fixture."""
        self._check_open()
        if self._loop_guard is None:
            self._loop_guard = self._closed_with_the_loop()
            await self._loop_guard.__anext__()

    async def _closed_with_the_loop(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await self._close_in_loop()

    async def aclose(self) -> None:
        """Stop components (1 s of grace), close brokers, end processes, stop the forwarder."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._close_in_loop()
        finally:
            self.close()

    async def _close_in_loop(self) -> None:
        await asyncio.gather(
            *(c.stop(1.0) for c in self.components if not c.message_broker.closed), return_exceptions=True
        )
        await asyncio.gather(*(b.close(linger=0.5, grace=0.5) for b in self._brokers), return_exceptions=True)

    def close(self) -> None:
        """End everything, from outside an event loop: brokers still open are closed in their own
        event loop when it is not running (a test another plugin ran, its loop not yet closed), then
        processes are ended by pid (their output printed to stderr), the forwarder stopped and the
        folders removed. Brokers whose loop is gone are left to the garbage collector, with a warning."""
        self._closed = True
        open_ = [b for b in self._brokers if b.started and not b.closed]
        loop: asyncio.AbstractEventLoop | None = getattr(open_[0], "_loop", None) if open_ else None
        if loop is not None and not loop.is_closed() and not loop.is_running():
            loop.run_until_complete(self._close_in_loop())
            open_ = [b for b in self._brokers if b.started and not b.closed]
        for handle in self.spawned:
            for replica, p in enumerate(handle.processes, 1):
                code = end_replica(p, signal.SIGTERM, 3.0)
                out = handle.output(replica).rstrip()
                if out:
                    sys.stderr.write(f"--- {handle.spec} replica {replica} (pid {p.pid}, exit {code}) ---\n{out}\n")
        self.spawned.clear()
        if open_:
            log.warning(
                "TestBus closed with %d broker(s) still open (close it with aclose() in its event loop)", len(open_)
            )
        self.stop_forwarder()
        for folder in (self._dir, self._logs):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        self._dir = self._logs = None

    async def __aenter__(self) -> TestBus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
