"""TestBus: a real forwarder and real brokers for a test; Recorder: what was published, awaited and asserted."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import multiprocessing.process
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Any, TypeVar

from ..bus.broker import MessageBroker
from ..bus.forwarder import Forwarder
from ..core.config import ipc_endpoints
from ..core.errors import ZmqbusError
from ..core.message import MessageMetadata, MessageTypeLike, ProcessingMessage
from ..core.retry import RetryPolicy
from ..framework.component import Component
from ..framework.procs import environment, spawn, stop_process
from ..framework.runner import component_main, load_component

__all__ = ["TestBus", "Recorder", "Spawned", "wait_until"]

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Component)
Predicate = Callable[[ProcessingMessage], bool]

#: What a Recorder matches a keyword against.
_FIELDS: dict[str, Callable[[ProcessingMessage], Any]] = {
    "message_type": lambda m: m.type_name,
    "topic": lambda m: m.topic,
    "content": lambda m: m.content,
    "correlation_id": lambda m: m.metadata.correlation_id,
    "source": lambda m: m.metadata.source_component,
    "target": lambda m: m.metadata.target_component,
}


def _matcher(predicate: Predicate | None, fields: dict[str, Any]) -> Predicate:
    unknown = fields.keys() - _FIELDS.keys()
    if unknown:
        raise TypeError(f"cannot match on {sorted(unknown)}: use {sorted(_FIELDS)} or a predicate")
    wanted = {k: (v.value if isinstance(v, Enum) and k == "message_type" else v) for k, v in fields.items()}

    def match(m: ProcessingMessage) -> bool:
        return all(_FIELDS[k](m) == v for k, v in wanted.items()) and (predicate is None or predicate(m))

    return match


def _describe(predicate: Predicate | None, fields: dict[str, Any]) -> str:
    parts = [f"{k}={v!r}" for k, v in fields.items()] + (["a predicate"] if predicate is not None else [])
    return " with " + ", ".join(parts) if parts else ""


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Check ``predicate`` on the event loop (every 5 ms) until it is true; AssertionError after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.005)


class Recorder:
    """The messages that matched one pattern, in arrival order (:meth:`TestBus.record` makes one)."""

    def __init__(self, pattern: str = "#") -> None:
        self.pattern = pattern  # what it was subscribed to (for messages); subscribe it yourself, or use record()
        self.messages: list[ProcessingMessage] = []
        self._arrived = asyncio.Event()

    async def __call__(self, message: ProcessingMessage) -> None:
        self.messages.append(message)
        self._arrived.set()

    def matching(self, predicate: Predicate | None = None, **fields: Any) -> list[ProcessingMessage]:
        """The recorded messages that match (fields: message_type, topic, content, correlation_id, source, target)."""
        match = _matcher(predicate, fields)
        return [m for m in self.messages if match(m)]

    async def wait_for(
        self, predicate: Predicate | None = None, *, count: int = 1, timeout: float = 5.0, **fields: Any
    ) -> ProcessingMessage:
        """Wait until ``count`` matching messages were recorded; return the ``count``-th.

        Raises AssertionError after ``timeout`` seconds, listing what was recorded.
        """
        match = _matcher(predicate, fields)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = [m for m in self.messages if match(m)]
            if len(found) >= count:
                return found[count - 1]
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"waited {timeout:g} s for {count} message(s) on {self.pattern!r}"
                    f"{_describe(predicate, fields)}: {len(found)} matched; {self._summary()}"
                )
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    def assert_published(self, predicate: Predicate | None = None, **fields: Any) -> ProcessingMessage:
        """The first recorded message that matches; AssertionError (listing what was recorded) if none."""
        found = self.matching(predicate, **fields)
        if not found:
            raise AssertionError(f"no message on {self.pattern!r}{_describe(predicate, fields)}; {self._summary()}")
        return found[0]

    async def assert_none(self, predicate: Predicate | None = None, *, within: float = 0.2, **fields: Any) -> None:
        """Wait ``within`` seconds and assert that no matching message was recorded (by then)."""
        await asyncio.sleep(within)
        found = self.matching(predicate, **fields)
        if found:
            raise AssertionError(
                f"{len(found)} unexpected message(s) on {self.pattern!r}"
                f"{_describe(predicate, fields)}: {self._summary(found)}"
            )

    def clear(self) -> None:
        self.messages.clear()

    def _summary(self, messages: list[ProcessingMessage] | None = None) -> str:
        msgs = self.messages if messages is None else messages
        shown = ", ".join(
            f"{m.type_name}(correlation_id={m.metadata.correlation_id!r}, content={m.content!r:.60})" for m in msgs[:10]
        )
        return f"recorded {len(msgs)}: [{shown}{', ...' if len(msgs) > 10 else ''}]"


class Spawned:
    """Component processes started by :meth:`TestBus.spawn`."""

    def __init__(self, spec: str, name: str, processes: list[multiprocessing.process.BaseProcess]) -> None:
        self.spec, self.name, self.processes = spec, name, processes

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def alive(self) -> int:
        return sum(p.is_alive() for p in self.processes)


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
        self.stop_forwarder()
        if downtime > 0:
            await asyncio.sleep(downtime)
        self.start_forwarder()
        await asyncio.gather(*(b.ready(self.timeout) for b in self._brokers if b.started and not b.closed))

    def broker(self, name: str | None = None, **kwargs: Any) -> MessageBroker:
        """A new :class:`MessageBroker` bound to this bus (closed with it); not started yet."""
        b = MessageBroker(self.pub_endpoint, self.sub_endpoint, name=name or "", **kwargs)
        self._brokers.append(b)
        return b

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
        self._check_open()
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
        replica's services are announced. :meth:`kill` ends them with SIGKILL, :meth:`stop` with SIGTERM."""
        self._check_open()
        cls = load_component(spec)
        label = name or cls.default_name()
        status = f"{label}.status"
        before = len(self.client.live_instances(status))
        with self._state():
            procs = [
                spawn(
                    component_main,
                    spec,
                    name,
                    self.pub_endpoint,
                    self.sub_endpoint,
                    logging.WARNING,
                    grace,
                    self.timeout,
                    None,
                    "127.0.0.1",
                    replica,
                    name=f"zmqbus-test-{label}",
                )
                for replica in range(1, replicas + 1)
            ]
        handle = Spawned(spec, label, procs)
        self.spawned.append(handle)
        try:
            await self.client.wait_for_service(status, instances=before + replicas, timeout=self.timeout)
        except ZmqbusError:
            dead = [p.exitcode for p in procs if not p.is_alive()]
            raise ZmqbusError(
                f"{spec} did not come up within {self.timeout:g} s"
                + (f" (exit codes {dead}: see its stderr)" if dead else "")
            ) from None
        return handle

    async def stop(self, target: Component | Spawned, grace: float = 5.0) -> None:
        """Stop a component gracefully (``Component.stop``), or its processes with SIGTERM."""
        if isinstance(target, Spawned):
            await asyncio.gather(*(asyncio.to_thread(stop_process, p, grace) for p in target.processes))
        else:
            await target.stop(grace)

    async def kill(self, target: Component | Spawned) -> None:
        """End at once: processes get SIGKILL (a crash: no goodbye, callers fail over when its
        heartbeats stop); an in-process component has its work cancelled and its broker closed
        without grace."""
        if isinstance(target, Spawned):
            for p in target.processes:
                if p.pid is not None and p.is_alive():
                    os.kill(p.pid, signal.SIGKILL)
            await asyncio.gather(*(asyncio.to_thread(p.join, self.timeout) for p in target.processes))
        else:
            target.kill()
            await target.message_broker.close(linger=0, grace=0)

    # -- faults in services -------------------------------------------------------------

    @contextlib.contextmanager
    def fail(self, service: str, error: BaseException | None = None, *, times: int | None = None) -> Iterator[None]:
        """Within the block, ``service`` raises ``error`` (default RuntimeError) in every in-process
        component that serves it: every call, or the first ``times`` calls (the rest run normally)."""
        left = [times]

        def wrap(original: Callable[..., Any]) -> Callable[[ProcessingMessage], Any]:
            async def failing(message: ProcessingMessage) -> Any:
                if left[0] is None or left[0] > 0:
                    if left[0] is not None:
                        left[0] -= 1
                    raise error if error is not None else RuntimeError(f"{service}: injected failure")
                return await _call(original, message)

            return failing

        with self._patched(service, wrap):
            yield

    @contextlib.contextmanager
    def stall(self, service: str, seconds: float) -> Iterator[None]:
        """Within the block, ``service`` waits ``seconds`` before it runs (a slow responder)."""

        def wrap(original: Callable[..., Any]) -> Callable[[ProcessingMessage], Any]:
            async def stalled(message: ProcessingMessage) -> Any:
                await asyncio.sleep(seconds)
                return await _call(original, message)

            return stalled

        with self._patched(service, wrap):
            yield

    @contextlib.contextmanager
    def _patched(
        self, service: str, wrap: Callable[[Callable[..., Any]], Callable[[ProcessingMessage], Any]]
    ) -> Iterator[None]:
        originals = [(b, b.handler_for(service)) for b in self._brokers if not b.closed]
        originals = [(b, h) for b, h in originals if h is not None]
        if not originals:
            raise ZmqbusError(
                f"no component started in this process serves {service!r} "
                "(bus.start() it; a spawned process cannot be patched)"
            )
        for b, h in originals:
            b.serve(service, wrap(h))  # type: ignore[arg-type]
        try:
            yield
        finally:
            for b, h in originals:
                if not b.closed:
                    b.serve(service, h)  # type: ignore[arg-type]

    # -- messages ---------------------------------------------------------------------

    async def record(self, pattern: str = "#") -> Recorder:
        """Record what matches ``pattern`` from now on; return once the subscription is live.

        Live means it reached the forwarder and, from there, the publishing socket of every broker
        started in this process (each proves it with a probe): a component that publishes right
        after cannot lose the message to ZeroMQ's slow-joiner effect. (A spawned process's
        publisher gets the subscription a moment later.)
        """
        self._check_open()
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
        self._check_open()
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

    async def aclose(self) -> None:
        """Stop components (1 s of grace), close brokers, end processes, stop the forwarder."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.gather(
                *(c.stop(1.0) for c in self.components if not c.message_broker.closed), return_exceptions=True
            )
            await asyncio.gather(*(b.close(linger=0.5, grace=0.5) for b in self._brokers), return_exceptions=True)
        finally:
            self.close()

    def close(self) -> None:
        """End processes and stop the forwarder (what needs no event loop); brokers not closed by
        :meth:`aclose` are left to the garbage collector, with a warning."""
        self._closed = True
        for handle in self.spawned:
            for p in handle.processes:
                stop_process(p, timeout=3.0)
        self.spawned.clear()
        open_ = [b for b in self._brokers if b.started and not b.closed]
        if open_:
            log.warning(
                "TestBus closed with %d broker(s) still open (close it with aclose() in its event loop)", len(open_)
            )
        self.stop_forwarder()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def __aenter__(self) -> TestBus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _call(handler: Callable[..., Any], message: ProcessingMessage) -> Any:
    result = handler(message)
    return await result if inspect.isawaitable(result) else result
