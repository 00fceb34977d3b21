"""The receiving half of a :class:`~zmqbus.bus.broker.MessageBroker`: read, decode, count gaps, dispatch.

Contracts (the broker's module docstring states them for users):

* Frames are read in batches of up to 256 and decoded one by one; a
  malformed one is counted by reason, logged rate-limited, and dropped.
* Every decoded message goes through the :class:`GapDetector` (per
  publisher and topic) before dispatch, matched or not; with recovery on
  (PROTOCOL.md section 14), a numbered message on a user topic goes through
  the :class:`~zmqbus.core.recovery.Recovery` core instead, which delivers
  each stream once and in order, holding later messages while missing ones
  are fetched.
* Handlers start one at a time, in arrival order. One that completes without
  awaiting costs no task; one that awaits goes on as a task (owned here) and
  does not hold up later messages, up to ``max_pending`` at once, after which
  reading waits for one to end. A handler that raises is counted and logged;
  dispatch goes on.
* While a handler runs, :data:`~zmqbus.core.message.current_message` is the
  message it was given, so what it publishes inherits the message's ids.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

from ..core.codec import Codec
from ..core.errors import DecodeError, ZmqbusError
from ..core.message import ProcessingMessage, current_message
from ..core.ratelog import RateLimitedLog
from ..core.recovery import Fetch, Recovery
from ..core.sequence import DUPLICATE, GapDetector, RedundantGapDetector, SequenceJump
from ..core.stats import Histogram
from ..core.subscriptions import Subscription, SubscriptionTable
from ..core.topics import RESERVED_PREFIX, TAIL_MARK, split_tail_copy
from ..io.aio import DrainLoop, TaskOwner, first_step, resume, start_eagerly
from ..io.journal import StreamJournal
from ..io.transport import BusLink
from . import tracing

__all__ = ["Receiver"]


log = logging.getLogger("zmqbus.bus.broker")  # users filter the client's log by one name

BATCH = 256
_set_current = current_message.set


class Receiver:
    """Reads one :class:`BusLink`'s subscriber socket and dispatches to a :class:`SubscriptionTable`."""

    def __init__(
        self,
        table: SubscriptionTable,
        codec: Codec,
        max_pending: int,
        faults: RateLimitedLog,
        *,
        redundant: float | None = None,
    ) -> None:
        """``redundant``: on a redundant bus, the seconds a missing number waits for another forwarder's copy."""
        self.table = table
        self.sequences: GapDetector | RedundantGapDetector = (
            GapDetector() if redundant is None else RedundantGapDetector(max_skew=redundant)
        )
        #: The same for control topics (``_zmqbus.``): copies dropped, gaps not counted as the user's loss.
        self.control_sequences: GapDetector | RedundantGapDetector = (
            GapDetector() if redundant is None else RedundantGapDetector(max_skew=redundant)
        )
        self.max_pending = max_pending
        self.handlers = TaskOwner()  # handlers that went on as tasks
        self.received = self.received_bytes = self.dispatched = self.unmatched = self.handler_errors = 0
        self.duplicates = 0  # copies of one message through a second forwarder (a redundant bus), dropped
        self.tail_copies_dropped = 0  # tail copies of messages an ordinary subscription brings too
        self.redundant = redundant
        #: Handler durations (seconds), measured only once metrics are on: two clock reads per handler.
        self.process_time: Histogram | None = None
        self.decode_errors: dict[str, int] = {}
        self._decode = codec.decode_frame
        self._codec = codec
        self._faults = faults
        #: With recovery on: the streams' recovery core, and who runs the fetches it asks for.
        self.recovery: Recovery[ProcessingMessage] | None = None
        self.on_fetch: Callable[[Fetch], None] | None = None
        self.journal: StreamJournal | None = None  # records each stream's position before its handlers run
        self._next_expiry = 0.0
        #: When the last frame arrived (loop time): what :class:`~.linkwatch.LinkWatch` reads.
        self.last_frame = 0.0
        # The reading (run): its link, the rest of a dispatch that suspended, what wakes run() for it, and
        # whether reading is paused (for that rest, or for a release).
        self._reading = _ReceiverReading(self)
        self._link: BusLink | None = None
        self._kick: asyncio.Future[None] | None = None
        self._rest: Any = None
        self._busy = False

    async def run(self, link: BusLink) -> None:
        """Read and dispatch until cancelled.

        The reading runs in the socket's FD callback (:meth:`Channel.set_reader`): a batch is decoded and
        dispatched there, with no task to wake first. A dispatch that has to wait (the pending-handler
        bound, recovery releasing held messages) is handed to this task, and reading pauses until it
        ends, so messages still start in arrival order. This task also does the periodic work (expiring
        what recovery or a redundant bus waits for) and re-reads every tick, which bounds a lost FD edge."""
        loop = asyncio.get_running_loop()
        self._link, self._rest, self._busy = link, None, False
        reading = self._reading
        failed = reading.start()
        tick = 0.25 if self.recovery is not None else 1.0
        link.sub.set_reader(reading.drain)
        try:
            reading.drain()  # what arrived before the reader was set
            while True:
                if self._rest is None:  # else a dispatch is already waiting for this task
                    self._kick = loop.create_future()
                    await asyncio.wait((self._kick, failed), timeout=tick)
                if failed.done():
                    failed.result()  # raises what ended the reading
                self._busy = True  # the FD callback leaves the socket alone while this task dispatches
                rest, self._rest = self._rest, None
                if rest is not None:
                    await rest  # the rest of a dispatch that had to wait; reading is paused meanwhile
                if self.redundant:
                    self.expire()  # a quiet stream's missing numbers are counted lost within a second of max_skew
                if self.recovery is not None:
                    await self.release(self.recovery.expire(loop.time()))
                self._busy = False
                reading.drain()
        finally:
            link.sub.set_reader(None)
            self._busy = True  # nothing reads any more

    def _may_read(self) -> bool:
        if not self._busy:
            return True
        if self._link is not None:
            try:
                self._link.sub.events()  # clears the FD signal: no busy loop while reading waits (run reads later)
            except ZmqbusError:
                pass  # closed: run() ends
        return False

    def _read_batch(self) -> bool:
        """One batch: decoded and dispatched here; a dispatch that suspends goes on in :meth:`run`, with
        reading paused. True when the socket is drained (or reading paused)."""
        link = self._link
        assert link is not None
        batch = link.recv_batch(BATCH)
        if batch:
            self.last_frame = asyncio.get_running_loop().time()
            finished, rest, _ = start_eagerly(self.dispatch(batch))
            if not finished:
                self._busy = True
                self._rest = rest
                if self._kick is not None and not self._kick.done():
                    self._kick.set_result(None)
                return True
            if len(batch) == BATCH:
                return False
        # Drained: a short batch ended in Again. EVENTS re-arms the FD signal and says whether more came
        # meanwhile (a handler's publish or subscribe may have eaten the signal).
        return not link.sub.readable()

    async def dispatch(self, batch: list[Any]) -> None:
        """Decode and dispatch one batch of frames (the hot path: kept flat on purpose). A batch frame's or a
        tail copy's messages are found where an ordinary decode fails (an ordinary frame pays nothing for
        them), then go through the same checks, in the same runs, as ordinary messages."""
        decode = self._decode
        self.received += len(batch)  # counted up front, once per batch: never behind what handlers see
        self.received_bytes += sum(map(len, batch))
        observe, control = self.sequences.observe, self.control_sequences.observe
        recovery = self.recovery
        now = asyncio.get_running_loop().time() if recovery is not None else 0.0
        # What passed the checks is started in runs of one topic (one call per run, not per message: 0.5 us
        # a message less); a run ends where the topic changes, and before a journal record (which must come
        # after the handlers of the messages before it).
        run: list[ProcessingMessage] = []
        run_topic = ""
        control_run = False  # run_topic is a control topic
        for frame in batch:
            try:
                msgs: Sequence[ProcessingMessage] = (decode(frame),)
            except DecodeError as exc:
                special = self._special(frame, exc)  # a batch frame's messages, or a tail copy's
                if not special:
                    continue
                msgs = special
            for msg in msgs:
                md = msg.metadata
                topic: str = msg.topic  # type: ignore[assignment]  # always set on a decoded message
                if topic != run_topic:
                    if run:
                        await self.start_all(run_topic, run)
                        run = []
                    run_topic = topic
                    control_run = topic.startswith(RESERVED_PREFIX)
                if control_run:  # control traffic: deduplicated, its gaps no user loss
                    if control(md.publisher_id, topic, md.sequence) is not DUPLICATE:
                        run.append(msg)
                    continue
                if recovery is None or not md.sequence:
                    jump = observe(md.publisher_id, topic, md.sequence)
                    if jump is not None:
                        if jump is DUPLICATE:
                            self.duplicates += 1
                            continue
                        self._report(jump)
                    run.append(msg)
                    continue
                ready, fetch = recovery.observe(md.publisher_id, topic, md.sequence, msg, now)
                if fetch is not None and self.on_fetch is not None:
                    self.on_fetch(fetch)
                if ready:
                    if self.journal is not None:  # before these handlers run, after those before: never twice
                        if run:
                            await self.start_all(run_topic, run)
                            run = []
                        self.journal.record(md.publisher_id, topic, ready[-1].metadata.sequence)
                    run += ready
        if run:
            await self.start_all(run_topic, run)
        _set_current(None)
        if self.redundant:
            self.expire()
        if recovery is not None and now >= self._next_expiry:
            self._next_expiry = now + 0.05
            await self.release(recovery.expire(now))

    async def release(self, msgs: list[ProcessingMessage]) -> None:
        """Deliver messages that recovery released (in order within each stream), outside a batch."""
        for msg in msgs:
            topic: str = msg.topic  # type: ignore[assignment]  # a decoded message has its topic
            if self.journal is not None:
                self.journal.record(msg.metadata.publisher_id, topic, msg.metadata.sequence)
            await self.start_all(topic, (msg,))
        _set_current(None)

    async def start_all(self, topic: str, msgs: Sequence[ProcessingMessage]) -> None:
        """Start the handlers of ``topic`` on each message, in order, waiting for a running handler to end
        whenever ``max_pending`` of them are running (the bound is passed by at most one message's
        handlers, less one)."""
        i = self.deliver(topic, msgs)
        while i < len(msgs):
            await self.handlers.wait_any()
            i = self.deliver(topic, msgs, i)

    def deliver(self, topic: str, msgs: Sequence[ProcessingMessage], i: int = 0) -> int:
        """Start the handlers of ``topic`` on ``msgs[i:]``, in order (messages of one stream, or of one topic
        in arrival order); return where to go on: ``len(msgs)`` when all started, less when ``max_pending``
        handlers are running as tasks (wait for one to end, then call again from there)."""
        table = self.table
        cache = table.cache
        timed = self.process_time is not None
        start = self._start_traced if tracing.tracer is not None and tracing.traced(topic) else self._start
        handlers, bound, n = self.handlers, self.max_pending, len(msgs)
        while i < n:
            msg = msgs[i]
            i += 1
            subs = cache.get(topic)  # per message: a handler may have (un)subscribed
            if subs is None:
                subs = table.match(topic)
            if not subs:
                self.unmatched += 1
                continue
            _set_current(msg)  # reset once per batch (dispatch) or per release
            self.dispatched += len(subs)
            went = False
            for sub in subs:
                try:
                    went = start(sub, msg, perf_counter() if timed else None) or went
                except Exception as exc:  # a handler's fault must not stop dispatch
                    self.handler_error(sub, exc)
            if went and len(handlers) >= bound:
                break
        return i

    def _special(self, frame: bytes, error: DecodeError) -> list[ProcessingMessage] | None:
        """The messages of a frame an ordinary decode refused: a tail copy's (PROTOCOL.md section 2.3, maybe
        holding a batch), a batch frame's (section 2.4); None for a malformed frame (counted and logged) or a
        tail copy this client gets anyway."""
        if frame.startswith(TAIL_MARK):
            inner = self._untail(frame)
            if inner is None:
                return None
            try:
                return [self._decode(inner)]
            except DecodeError as exc:
                frame, error = inner, exc
        try:
            msgs = self._codec.decode_batch(frame)
        except DecodeError as exc:
            self._decode_error(error if exc.reason == "batch" else exc)
            return None
        self.received += len(msgs) - 1
        return msgs

    def _untail(self, frame: bytes) -> bytes | None:
        """The ordinary frame inside a tail copy, or None: malformed (counted), or a second copy of a message
        this client's ordinary subscriptions bring anyway (dropped: each message is delivered once)."""
        inner = split_tail_copy(frame)
        if inner is None:
            self._decode_error(DecodeError("topic", "a tail copy without its word and NUL"))
            return None
        cut = inner.find(0, 0, 256)
        if cut > 0 and self.table.ordinary_covers(inner[:cut]):
            self.tail_copies_dropped += 1
            return None
        return inner

    def expire(self) -> None:
        """On a redundant bus: count (and log) what no forwarder brought in time."""
        sequences = self.sequences
        if isinstance(sequences, RedundantGapDetector):
            sequences.expire()
            for jump in sequences.reports:
                self._report(jump)
            sequences.reports.clear()
        control = self.control_sequences
        if isinstance(control, RedundantGapDetector):
            control.expire()
            control.reports.clear()

    def _start(self, sub: Subscription, msg: Any, started: float | None = None, span: Any = None) -> bool:
        """Run ``sub``'s handler eagerly; return True if it went on as a task.

        ``started`` (a perf_counter reading, with metrics on): record the handler's duration."""
        # aio.start_eagerly, specialised: a handler that completes without suspending
        # costs no Task; one that awaits goes on as a Task, so it never holds up later
        # messages (nor the presence updates its own requests need).
        result: Any = sub.handler(msg)
        eager = None
        if sub.is_async or inspect.iscoroutine(result):
            # its own task (an EagerTask) for its first step: for asyncio.timeout & co
            finished, yielded, eager = first_step(result, asyncio.get_running_loop())
            if finished:
                if started is not None:
                    self._timed(started)
                return False
            rest: Any = resume(result, yielded)
        elif result is not None and inspect.isawaitable(result):
            rest = result  # a sync handler that returned a future
        else:
            if started is not None:
                self._timed(started)
            return False
        task = self.handlers.spawn(self._finish(sub, rest, started, span), name="zmqbus-handler", fatal=False)
        if eager is not None:
            eager.bind(task)
        return True

    def _start_traced(self, sub: Subscription, msg: Any, started: float | None = None) -> bool:
        """:meth:`_start` inside a ``process`` span, a child of the sender's (tracing on)."""
        span, token = tracing.start_span("process", msg.topic, msg, sub.component_name, remote=True)
        try:
            went = self._start(sub, msg, started, span)
        except BaseException as exc:
            tracing.end_span(span, exc)
            raise
        finally:
            tracing.detach(token)
        if not went:
            tracing.end_span(span)
        return went

    def _timed(self, started: float) -> None:
        if self.process_time is not None:
            self.process_time.observe(perf_counter() - started)

    async def _finish(self, sub: Subscription, running: Any, started: float | None = None, span: Any = None) -> None:
        error: BaseException | None = None
        try:
            await running
        except Exception as exc:
            error = exc
            self.handler_error(sub, exc)
        finally:
            if started is not None:
                self._timed(started)
            if span is not None:
                tracing.end_span(span, error)

    def handler_error(self, sub: Subscription, exc: Exception) -> None:
        """Count and log (rate-limited) a handler that raised."""
        self.handler_errors += 1
        self._faults.log(
            logging.ERROR,
            f"handler:{sub.component_name}:{sub.pattern.text}",
            "handler %s for %r (component %s) raised %s: %s",
            getattr(sub.handler, "__qualname__", sub.handler),
            sub.pattern.text,
            sub.component_name,
            type(exc).__name__,
            exc,
        )

    def _report(self, jump: SequenceJump) -> None:
        if jump.is_reset:
            self._faults.log(
                logging.INFO,
                f"reset:{jump.topic!r}",
                "publisher %s restarted its sequence on topic %r (%d after %d)",
                jump.publisher_id,
                jump.topic,
                jump.sequence,
                jump.last,
            )
        else:
            self._faults.log(
                logging.WARNING,
                f"gap:{jump.topic!r}",
                "lost %d message(s) on topic %r from publisher %s (sequence %d after %d)",
                jump.missing,
                jump.topic,
                jump.publisher_id,
                jump.sequence,
                jump.last,
            )

    def _decode_error(self, exc: DecodeError) -> None:
        self.decode_errors[exc.reason] = self.decode_errors.get(exc.reason, 0) + 1
        self._faults.log(logging.WARNING, f"decode:{exc.reason}", "dropped a malformed message: %s", exc)


class _ReceiverReading(DrainLoop):
    """The FD-callback reading of one :class:`Receiver` (its pause and its batches are the receiver's)."""

    def __init__(self, receiver: Receiver) -> None:
        super().__init__()
        self.receiver = receiver

    def may_read(self) -> bool:
        return self.receiver._may_read()

    def read_batch(self) -> bool:
        return self.receiver._read_batch()
