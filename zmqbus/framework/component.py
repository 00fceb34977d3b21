"""Components: the guide's Managers, Handlers and Processors, on a MessageBroker.

A component talks only through messages. Two styles work, and mix:

* the guide's: override ``_setup_message_handlers`` and call
  ``self.message_broker.subscribe(self.component_name, f"{t.value}.#", handler)``;
* decorators: ``@on("order.start.request.#")`` subscribes a method,
  ``@service("pricing.quote")`` serves requests with one.

Every handler registered either way by the component runs *guarded*: it is
timed and counted, the message it handles becomes the cause of everything it
publishes or requests (correlation and causation ids follow by themselves),
and an exception is classified (:func:`zmqbus.core.errors.is_retryable`):
retryable work is tried again with the component's ``retry_policy``; fatal or
exhausted work is reported to the error handler (topic ``error.<component>``)
and dead-lettered (``deadletter.<component>``). State changes go to the state
tracker as ``status.<component>``.

Lifecycle contract: ``setup`` (open resources) -> ``start`` (connected, ready,
receiving) -> ``stop(grace)`` (no new work; running work may finish within
``grace`` seconds, then is cancelled; ``teardown`` runs) or ``kill`` (cancel
everything now, no teardown).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from enum import Enum
from typing import Any, ClassVar, TypeVar

from ..bus.broker import MessageBroker
from ..core.errors import RemoteError, ZmqbusError, is_retryable
from ..core.message import MessageMetadata, MessageTypeLike, ProcessingMessage, current_message, register_message_types
from ..core.retry import RetryPolicy
from ..core.workflow import ComponentContext, ComponentMetrics, ComponentState, ContextStore, coerce_state
from ..io.aio import TaskOwner, to_thread
from .guard import HandlerGuard

__all__ = [
    "Component",
    "Manager",
    "Handler",
    "Processor",
    "on",
    "service",
    "ERROR_PREFIX",
    "STATUS_PREFIX",
    "DEADLETTER_PREFIX",
]

log = logging.getLogger(__name__)

ERROR_PREFIX = "error"
STATUS_PREFIX = "status"
DEADLETTER_PREFIX = "deadletter"

F = TypeVar("F", bound=Callable[..., Any])


def on(pattern: str) -> Callable[[F], F]:
    """Subscribe the decorated method to ``pattern`` when the component is created."""

    def mark(fn: F) -> F:
        fn._zmqbus_on = getattr(fn, "_zmqbus_on", ()) + (pattern,)  # type: ignore[attr-defined]
        return fn

    return mark


def service(name: str, *, cancel_at_deadline: bool = True) -> Callable[[F], F]:
    """Serve requests for ``name`` with the decorated method (it returns the reply content).

    The request's deadline is ``message.metadata.deadline`` (:func:`zmqbus.time_left` says how much
    is left). An ``async`` method still running when it passes is cancelled (its caller has given up;
    the work is abandoned, the caller answered ``expired``) unless ``cancel_at_deadline=False``. A
    sync method runs in a thread, which cannot be cancelled: it can check :func:`zmqbus.time_left`.
    """

    def mark(fn: F) -> F:
        fn._zmqbus_service = name  # type: ignore[attr-defined]
        fn._zmqbus_cancel = cancel_at_deadline  # type: ignore[attr-defined]
        return fn

    return mark


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Component:
    """Base of every component; see the module docstring for the contracts."""

    #: The component's name (default: the class name in snake case). ``name=`` overrides it.
    component_name: str = ""
    #: Enums of message types this component uses; registered so received messages carry members.
    message_types: ClassVar[tuple[type[Enum], ...]] = ()
    #: Retries of subscribed work that raised a retryable error.
    retry_policy: ClassVar[RetryPolicy] = RetryPolicy(attempts=3, attempt_timeout=None, backoff=0.05)
    #: Seconds a process context may go without an update before it is cleaned up as stale.
    context_ttl: ClassVar[float] = 300.0
    #: Start the requesting side with the component (:meth:`MessageBroker.discover`): it knows and connects
    #: to the bus's responders before its first request. True for Managers and Handlers, which call
    #: services; a Processor, which only answers, opens no connections it does not need.
    discover_at_start: ClassVar[bool] = False

    def __init__(self, message_broker: MessageBroker, name: str | None = None) -> None:
        self.message_broker = message_broker
        self.component_name = name or type(self).default_name()
        if not message_broker.name:
            message_broker.name = self.component_name
        # Every handler subscribed through this broker runs guarded, the guide's
        # self.message_broker.subscribe(...) included.
        self._guard = HandlerGuard(self)
        message_broker.guard = self._guarded
        self.active_processes = ContextStore(self.context_ttl)
        self.metrics = ComponentMetrics()
        self._zmqbus_tasks = TaskOwner()  # what spawn() started: stop waits for it, kill cancels it
        self._stopping = False
        self._janitor: asyncio.Task[None] | None = None
        register_message_types(*self.message_types)
        self._bind_decorated()
        self._setup_message_handlers()
        # Every component answers "<name>.status" with its metrics: operators can
        # ask it, and an answer proves the component is up and subscribed.
        self.message_broker.serve(f"{self.component_name}.status", self._status)

    @classmethod
    def default_name(cls) -> str:
        """The name instances get without ``name=``: ``component_name``, else the class name in snake case."""
        return cls.component_name or _snake(cls.__name__)

    async def _status(self, message: ProcessingMessage) -> dict[str, Any]:
        return self.statistics()

    # -- wiring ------------------------------------------------------------

    def _setup_message_handlers(self) -> None:
        """The guide's hook: subscribe handlers by message type. Default: nothing more."""

    def subscribe(self, pattern: str, handler: Callable[[ProcessingMessage], Awaitable[Any]]) -> None:
        """Subscribe ``handler`` to ``pattern``, guarded (timed, counted, retried, reported)."""
        self.message_broker.subscribe(self.component_name, pattern, handler)

    def _bind_decorated(self) -> None:
        for name, member in inspect.getmembers(type(self)):
            patterns = getattr(member, "_zmqbus_on", ())
            service_name = getattr(member, "_zmqbus_service", None)
            if not patterns and service_name is None:
                continue
            bound = getattr(self, name)
            for pattern in patterns:
                self.subscribe(pattern, bound)
            if service_name is not None:
                cancel = getattr(member, "_zmqbus_cancel", True) and inspect.iscoroutinefunction(bound)
                self.message_broker.serve(service_name, self._served(bound), cancel_at_deadline=cancel)

    def _guarded(self, handler: Callable[[ProcessingMessage], Any]) -> Callable[[ProcessingMessage], Awaitable[None]]:
        return self._guard.subscribed(handler)

    def _served(self, handler: Callable[[ProcessingMessage], Any]) -> Callable[[ProcessingMessage], Awaitable[Any]]:
        return self._guard.served(handler)

    # -- lifecycle ---------------------------------------------------------

    async def setup(self) -> None:
        """Open resources; called once by :meth:`start` before messages flow."""

    async def teardown(self) -> None:
        """Release resources; called once by :meth:`stop`, after running work ended."""

    async def start(self, timeout: float = 10.0) -> None:
        """Set up, connect, and return once subscriptions are live at the forwarder.

        Raises :class:`~zmqbus.core.errors.BusTimeout` if the forwarder does not
        answer within ``timeout`` seconds.
        """
        await self.setup()
        await self.message_broker.start()
        if self.discover_at_start:
            await self.message_broker.discover(timeout)  # ready() included: no first request waits
        else:
            await self.message_broker.ready(timeout)
        self._janitor = asyncio.get_running_loop().create_task(self._clean_loop(), name=f"{self.component_name}-ttl")
        log.info("component %s started", self.component_name)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking work, let running work finish for ``grace`` seconds, cancel the rest, tear down.

        ``grace`` bounds the whole wait for running work, requests served
        included (sync handlers still running in their threads are abandoned:
        they never keep the process alive); then the broker flushes for at
        most its ``linger``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self._stopping = True
        await self._zmqbus_tasks.drain(grace)
        self.kill()
        await self._zmqbus_tasks.cancel()
        await self.teardown()
        await self.message_broker.close(grace=max(0.0, deadline - loop.time()))
        log.info("component %s stopped", self.component_name)

    def kill(self) -> None:
        """Cancel all running work at once (no grace, no teardown)."""
        self._stopping = True
        if self._janitor is not None:
            self._janitor.cancel()
        self._zmqbus_tasks.cancel_now()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the component tracks (stop waits for it, kill cancels it; a failure is logged)."""
        return self._zmqbus_tasks.spawn(coro, name=f"{self.component_name}-task", fatal=False)

    async def _clean_loop(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.context_ttl / 4))
            await self.expire_stale()

    async def expire_stale(self) -> int:
        """End processes not updated for ``context_ttl`` seconds: CANCELLED, reported, removed.

        (Nothing, when the component replaced ``active_processes`` by its own dict, as the guide's does.)
        """
        if not isinstance(self.active_processes, ContextStore):
            return 0
        stale = self.active_processes.expired()
        for ctx in stale:
            self.metrics.expired += 1
            log.warning(
                "%s: process %s stale in state %s; cancelled and cleaned up",
                self.component_name,
                ctx.correlation_id,
                ctx.state.value,
            )
            old = ctx.transition(ComponentState.CANCELLED)
            await self._publish_status(ctx, old, reason="expired")
        return len(stale)

    # -- the guide's helpers -----------------------------------------------

    async def publish_message(
        self,
        message_type: MessageTypeLike,
        content: Any,
        target: str | None = None,
        *,
        correlation_id: str = "",
        topic: str | None = None,
    ) -> ProcessingMessage:
        """Publish a message from this component (the guide's ``_publish_message``)."""
        msg = ProcessingMessage(
            message_type,
            content,
            MessageMetadata(
                correlation_id=correlation_id, source_component=self.component_name, target_component=target
            ),
        )
        await self.message_broker.publish(msg, topic=topic)
        return msg

    async def request(
        self,
        service_name: str,
        content: Any,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        message_type: MessageTypeLike | None = None,
    ) -> Any:
        """Request ``service_name`` and return the reply's content."""
        msg = ProcessingMessage(
            message_type or service_name,
            content,
            MessageMetadata(source_component=self.component_name, target_component=service_name),
        )
        reply = await self.message_broker.request(service_name, msg, timeout=timeout, retry=retry)
        return reply.content

    async def update_state(self, ctx: ComponentContext, new_state: ComponentState | Enum | str, **info: Any) -> None:
        """Validate and apply a state change, tell the state tracker, clean up when terminal.

        ``new_state`` may be a member of your own state Enum (as the guide
        defines one) or a string: its value must be one of
        :class:`ComponentState`'s (``processing``, ``completed``...).
        """
        new_state = coerce_state(new_state)
        old = ctx.transition(new_state)
        await self._publish_status(ctx, old, **info)
        if new_state.terminal:
            self.active_processes.pop(ctx.correlation_id, None)  # a ContextStore, or the guide's own dict
            ctx.metrics.record_duration((ctx.updated_at - ctx.created_at).total_seconds())
            if new_state is ComponentState.COMPLETED:
                self.metrics.completed += 1
            elif new_state is ComponentState.FAILED:
                self.metrics.failed += 1

    async def _publish_status(self, ctx: ComponentContext, old: ComponentState, **info: Any) -> None:
        content = dict(ctx.status(), component=self.component_name, old_state=old.value, **info)
        await self.publish_message(
            f"{STATUS_PREFIX}.{self.component_name}", content, "state_tracker", correlation_id=ctx.correlation_id
        )

    async def report_error(
        self, message: ProcessingMessage, error: BaseException, *, retryable: bool | None = None
    ) -> None:
        """Send an error to the error handler (the guide's ``_handle_error``), once per root cause.

        A :class:`RemoteError` that the responding component already reported
        (``error.reported``) is not reported again: one failure deep in a chain
        of requests reaches the error handler once, from where it happened.
        The error is marked reported, and a service that re-raises it tells its
        caller so.
        """
        if (isinstance(error, RemoteError) and error.reported) or getattr(error, "zmqbus_reported", False) is True:
            _mark_reported(error)
            return  # reported already: by the service that raised it, or here
        _mark_reported(error)
        md = message.metadata
        content = {
            "correlation_id": md.correlation_id,
            "error_type": _error_type(error),
            "error_message": _error_message(error),
            "retryable": is_retryable(error) if retryable is None else retryable,
            "component": self.component_name,
            "message_type": message.type_name,
            "message_id": md.message_id,
            "attempt": md.attempt,
        }
        await self.publish_message(
            f"{ERROR_PREFIX}.{self.component_name}", content, "error_handler", correlation_id=md.correlation_id
        )

    async def dead_letter(self, message: ProcessingMessage, reason: str) -> None:
        """Park a message that cannot be processed where an operator can see and replay it."""
        md = message.metadata
        content = {
            "reason": reason,
            "component": self.component_name,
            "topic": message.topic,
            "message_type": message.type_name,
            "content": message.content,
            "metadata": {
                "message_id": md.message_id,
                "correlation_id": md.correlation_id,
                "source": md.source_component,
                "target": md.target_component,
                "attempt": md.attempt,
            },
        }
        await self.publish_message(
            f"{DEADLETTER_PREFIX}.{self.component_name}", content, "error_handler", correlation_id=md.correlation_id
        )

    # -- the guide's own names (its snippets call these) -----------------------

    async def _publish_message(
        self, message_type: MessageTypeLike, content: Any, target: str | None = None
    ) -> ProcessingMessage:
        """The guide's ``_publish_message``: :meth:`publish_message` (inside a handler the
        correlation id is the handled message's, so the guide's ``self.context`` is not needed)."""
        return await self.publish_message(message_type, content, target)

    async def _handle_error(self, message: ProcessingMessage, error: BaseException) -> None:
        """The guide's ``_handle_error``: :meth:`report_error` (topic ``error.<component>``)."""
        await self.report_error(message, error)

    async def _update_state(
        self, new_state: ComponentState | Enum | str, ctx: ComponentContext | None = None, **info: Any
    ) -> None:
        """The guide's ``_update_state(new_state)``: :meth:`update_state` on the process of the
        message being handled (found by its correlation id in ``active_processes``), or on
        ``ctx``, or on ``self.context`` when the component keeps one, as the guide's does."""
        if ctx is None:
            handled = current_message.get()
            found = self.active_processes.get(handled.metadata.correlation_id) if handled is not None else None
            ctx = found if isinstance(found, ComponentContext) else None
        if ctx is None and isinstance(getattr(self, "context", None), ComponentContext):
            ctx = self.context  # type: ignore[attr-defined]
        if ctx is None:
            raise ZmqbusError(
                "_update_state(state) found no process to update: the guide keeps one in "
                "self.context; zmqbus keeps one per workflow in active_processes. Call "
                "self.update_state(ctx, state) with the context begin_process() returned "
                "(or active_processes.create(...))."
            )
        await self.update_state(ctx, new_state, **info)

    def statistics(self) -> dict[str, Any]:
        """Metrics, active processes and the broker's request counters (also served as ``<name>.status``)."""
        return {
            "component": self.component_name,
            "active_processes": len(self.active_processes),
            **self.metrics.as_dict(),
            "rpc": self.message_broker.statistics().rpc,
            "services": self.message_broker.served_by_service(),
        }


def _mark_reported(error: BaseException) -> None:
    with contextlib.suppress(AttributeError, TypeError):
        error.zmqbus_reported = True  # type: ignore[attr-defined]  # read by the responder (ErrorReply.reported)


def _error_type(error: BaseException) -> str:
    return error.error_type if isinstance(error, RemoteError) else type(error).__name__


def _error_message(error: BaseException) -> str:
    return error.remote_message if isinstance(error, RemoteError) else str(error)


class Manager(Component):
    """Orchestrates workflows: one context per workflow, kept in ``active_processes``."""

    discover_at_start: ClassVar[bool] = True

    async def begin_process(self, message: ProcessingMessage, **metadata: Any) -> ComponentContext:
        """Create the workflow's context from ``message`` and move it to PROCESSING."""
        md = message.metadata
        ctx = self.active_processes.create(md.correlation_id, md.message_id, **metadata)
        if ctx.start is None:
            ctx.start = message
        if ctx.state is ComponentState.CREATED:
            await self.update_state(ctx, ComponentState.PROCESSING)
        return ctx

    async def complete_process(
        self, ctx: ComponentContext, message_type: MessageTypeLike, result: Any, target: str | None = None
    ) -> None:
        """Publish the workflow's result and mark it COMPLETED (its context is cleaned up)."""
        await self.publish_message(message_type, result, target, correlation_id=ctx.correlation_id)
        await self.update_state(ctx, ComponentState.COMPLETED)

    async def fail_process(
        self,
        ctx: ComponentContext,
        message_type: MessageTypeLike,
        error: BaseException,
        target: str | None = None,
        *,
        report: bool = True,
        dead_letter: bool = True,
    ) -> None:
        """Publish the failure, report it to the error handler, dead-letter the message that began the
        workflow and mark it FAILED (its context is cleaned up).

        The report goes out once per root cause (:meth:`report_error`): an error already reported (by
        the service that raised it, or by this component) is not reported again, while a local cause
        (a ``RequestTimeout``, a ``ValueError`` of the manager's own) is. The dead letter is the
        workflow's start message (``ctx.start``, kept by :meth:`begin_process`; else the message being
        handled), so ``zmqbus dlq replay`` runs the whole workflow again. ``report=False`` and
        ``dead_letter=False`` skip either.
        """
        start = ctx.start or current_message.get()
        if report:
            cause = start or ProcessingMessage(
                message_type,
                None,
                MessageMetadata(correlation_id=ctx.correlation_id, source_component=self.component_name),
            )
            await self.report_error(cause, error, retryable=False)
        if dead_letter and start is not None:
            await self.dead_letter(start, f"workflow failed: {_error_type(error)}: {_error_message(error)}")
        await self.publish_message(
            message_type,
            {"error_type": _error_type(error), "error": _error_message(error)},
            target,
            correlation_id=ctx.correlation_id,
        )
        await self.update_state(ctx, ComponentState.FAILED, error_type=_error_type(error))


class Handler(Component):
    """Runs the tasks of one domain and coordinates Processors through requests."""

    discover_at_start: ClassVar[bool] = True

    async def process_all(
        self, service_name: str, items: list[Any], *, timeout: float = 30.0, retry: RetryPolicy | None = None
    ) -> list[Any]:
        """Request ``service_name`` once per item, all at once (competing Processors share them)."""
        return list(
            await asyncio.gather(*(self.request(service_name, item, timeout=timeout, retry=retry) for item in items))
        )


class Processor(Component):
    """Computes. Sync ``@service`` methods run in a worker thread, so heartbeats and
    other messages keep flowing while they work; scale out with replicas."""

    async def run_cpu(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in a worker thread (the handled message's ids carried along)."""
        return await to_thread(fn, *args)
