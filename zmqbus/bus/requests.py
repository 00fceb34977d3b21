"""The request/reply side of one client: its responder (once it serves) and its caller (once it asks).

:class:`Requests` owns both, starts each when it is first needed, times and
counts every request by outcome (what metrics read), and wraps requests in
``request`` spans when tracing is on. The responder and the caller see the
client only through its :class:`~zmqbus.bus.port.BusPort`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import perf_counter
from typing import Any

from ..core.errors import ClosedError, NoResponder, RemoteError, RequestTimeout
from ..core.message import ProcessingMessage
from ..core.retry import RetryPolicy
from ..core.stats import ServiceCalls
from ..core.topics import RESERVED_PREFIX, validate_topic
from . import tracing
from .caller import Caller
from .port import BusPort, RpcOptions, ServiceHandler
from .responder import Responder

__all__ = ["Requests"]

_DEFAULT_RETRY = RetryPolicy()
_OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (RemoteError, "remote_error"),
    (NoResponder, "no_responder"),
    (RequestTimeout, "timeout"),
)


class Requests:
    """Serve and call services for one client (see :meth:`MessageBroker.serve` and ``request``)."""

    def __init__(self, port: BusPort, options: RpcOptions) -> None:
        self.port, self.options = port, options
        self.handlers: dict[str, ServiceHandler] = {}
        self.cancel_at_deadline: dict[str, bool] = {}  # by service: an async handler is cancelled at its deadline
        self.responder: Responder | None = None
        self.caller: Caller | None = None
        self._caller_lock: asyncio.Lock | None = None
        self._closed = self._responder_closed = False
        #: Seconds per request (every outcome) and requests by outcome: ok, remote_error, no_responder,
        #: timeout, error (metrics read them; a few additions per request).
        #: Requests made, per service: durations and outcomes (the metrics read them).
        self.calls = ServiceCalls()
        #: The streams the responder's presence announces (a publisher keeping history), if any.
        self.streams: Callable[[], dict[str, int]] | None = None

    # -- serving -------------------------------------------------------------

    def serve(self, service: str, handler: ServiceHandler, connected: bool, cancel_at_deadline: bool = True) -> None:
        """Register ``handler``; once ``connected``, start the responder or announce the new service."""
        validate_topic(service)
        self.handlers[service] = handler
        self.cancel_at_deadline[service] = cancel_at_deadline
        owner = self.port.owner
        if self.responder is not None:
            self.responder.add(service, handler, cancel_at_deadline)
            owner.spawn(self.responder.announce(), name="zmqbus-announce", fatal=False)
        elif connected:
            # A responder that cannot bind closes the broker; the next call raises why.
            owner.spawn(self.start_responder(), name="zmqbus-start-responder")

    async def start_responder(self) -> None:
        """Bind and announce the responder, if this client serves anything (idempotent; nothing once closing)."""
        if self.responder is not None or not self.handlers or self._responder_closed:
            return
        responder = Responder(self.port, self.options)
        responder.streams = self.streams
        for service, handler in self.handlers.items():
            responder.add(service, handler, self.cancel_at_deadline.get(service, True))
        self.responder = responder
        await responder.start()

    def allow(self, allowed: dict[bytes, str]) -> None:
        """A reloaded allow-list for the responder's callers."""
        if self.responder is not None:
            self.responder.allow(allowed)

    # -- calling ---------------------------------------------------------------

    async def get_caller(self) -> Caller:
        """The caller, started on first use (its presence subscription goes with it); :class:`ClosedError`
        once :meth:`close_caller` ran (a late task must not open a socket nobody will close)."""
        if self.caller is not None:
            return self.caller
        if self._closed:
            raise ClosedError("MessageBroker is closed")
        if self._caller_lock is None:
            self._caller_lock = asyncio.Lock()
        async with self._caller_lock:
            if self._closed:
                raise ClosedError("MessageBroker is closed")
            if self.caller is None:
                caller = Caller(self.port)
                await caller.start()
                self.caller = caller
        return self.caller

    async def request(
        self,
        service: str,
        message: ProcessingMessage,
        timeout: float,
        retry: RetryPolicy | None,
        instance: str | None = None,
    ) -> ProcessingMessage:
        caller = self.caller or await self.get_caller()
        started = perf_counter()
        outcome = "error"
        span = token = None
        if tracing.tracer is not None and tracing.traced(service):
            span, token = tracing.start_span("request", service, message, self.port.client_id, remote=False)
            tracing.inject(message)
        error: BaseException | None = None
        try:
            reply = await caller.request(service, message, timeout, retry or _DEFAULT_RETRY, instance)
            outcome = "ok"
            return reply
        except BaseException as exc:
            error = exc
            outcome = next((name for kind, name in _OUTCOMES if isinstance(exc, kind)), "error")
            raise
        finally:
            self.calls.observe(service, outcome, perf_counter() - started)
            if span is not None:
                tracing.end_span(span, error)
                tracing.detach(token)

    def served_by_service(self) -> dict[str, dict[str, Any]]:
        """Requests this client's handlers ran, per service: outcomes, latency buckets, sum and count."""
        if self.responder is None:
            return {}
        calls = self.responder.by_service
        return {
            service: {
                "outcomes": dict(calls.outcomes[service]),
                "buckets": list(h.counts),
                "sum": h.sum,
                "count": h.count,
            }
            for service, h in calls.time.items()
        }

    def service_calls(self) -> ServiceCalls:
        """:attr:`calls`, with series (at zero) for every user service discovered so far: its metrics exist
        before the first request (reserved and ``.status`` services get theirs when first called)."""
        if self.caller is not None:
            for service in self.caller.directory.services():
                if not service.startswith(RESERVED_PREFIX) and not service.endswith(".status"):
                    self.calls.known(service)
        return self.calls

    def instance_info(self, service: str) -> list[dict[str, Any]]:
        if self.caller is None:
            return []
        return [dict(i.info or {}, instance=i.instance_id) for i in self.caller.directory.live(service)]

    def live_instances(self, service: str) -> list[str]:
        if self.caller is None:
            return []
        return [i.instance_id for i in self.caller.directory.live(service)]

    # -- observability and life cycle ------------------------------------------

    def counters(self) -> dict[str, int]:
        """The caller's and the responder's counters (``statistics().rpc``)."""
        out: dict[str, int] = {}
        if self.caller is not None:
            core = self.caller.core
            out.update(
                in_flight=len(core.tracker),
                retries=core.retries,
                requeues=core.requeues,
                failovers=core.failovers,
                late_replies=core.tracker.late_replies,
                presence_refused=self.caller.presence_refused,
                instances_known=len(self.caller.directory),
            )
        if self.responder is not None:
            out.update({f"served_{k}": v for k, v in self.responder.statistics().items()})
        return out

    async def close_responder(self, grace: float, linger: float) -> None:
        """Finish running requests (up to ``grace`` s) and say goodbye on the bus."""
        self._responder_closed = True
        if self.responder is not None:
            await self.responder.close(grace, linger)
            self.responder = None

    async def close_caller(self) -> None:
        """End every waiting request with :class:`ClosedError` and close the caller's socket."""
        self._closed = True
        if self.caller is not None:
            await self.caller.close()
            self.caller = None
