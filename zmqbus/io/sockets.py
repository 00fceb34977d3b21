"""The socket primitives: the process's ZeroMQ context, error mapping, and :class:`Channel`.

Rules of this module and of :mod:`.transport`, the only places where pyzmq meets asyncio:

* Sockets are plain (sync) ``zmq.Socket`` objects, always used with
  ``NOBLOCK``; asyncio only learns *when* to try again, through the socket's
  ``FD`` registered with ``loop.add_reader``. Draining with non-blocking
  receives and awaiting only on ``zmq.Again`` is what lets one asyncio task
  receive several hundred thousand messages a second (one ``await`` per
  message caps near 80k).
* The ZeroMQ FD signals *changes*; after anything that may have consumed the
  signal (a send, a setsockopt) the waiting side must re-check ``EVENTS``.
  :meth:`Channel.wake` does that, and every wait is also bounded by a timeout.
* Each socket belongs to one thread (the event loop's).
* ``zmq.ZMQError`` never leaves these modules: it becomes :class:`TransportError`
  or :class:`ClosedError`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import zmq

from ..core.errors import ClosedError, TransportError

__all__ = [
    "Channel",
    "get_context",
    "mapped_errors",
    "fast_get",
    "fast_send",
    "translated",
    "mark_background",
    "user_id",
]

log = logging.getLogger(__name__)

_ctx: zmq.Context[zmq.Socket[bytes]] | None = None
_ctx_pid = 0
_ctx_lock = threading.Lock()


def get_context() -> zmq.Context[zmq.Socket[bytes]]:
    """This process's ZeroMQ context, created on first use.

    A context must never cross ``fork``: a child process gets a fresh one.
    """
    global _ctx, _ctx_pid
    with _ctx_lock:
        if _ctx is None or _ctx_pid != os.getpid() or _ctx.closed:
            _ctx = zmq.Context()
            _ctx_pid = os.getpid()
        return _ctx


def _flush_at_exit() -> None:
    """At interpreter exit, let sockets closed with a linger finish sending.

    ZeroMQ sends a closed socket's queued messages only while its context
    lives: a process that publishes a burst, closes its broker and exits
    would otherwise lose the tail of the burst (measured: 10-40% of 3,000
    messages of 16 KiB). Terminating the context waits at most each closed
    socket's linger.

    Sockets of a client that was never closed (its event loop no longer
    runs) are closed here first, with their linger, and a warning says so:
    their queue gets the same chance to leave, unconfirmed. Termination is
    skipped while any other socket is still open (a running forwarder), since
    the context would then wait for it forever; and it is bounded by
    :data:`EXIT_FLUSH_TIMEOUT` in any case: a socket that was garbage-collected
    without being closed (pyzmq's ``__del__`` closes it only if its
    ResourceWarning is not turned into an error) is invisible here and would
    hold ``term()`` forever (seen under pytest's ``-W error``).
    """
    ctx = _ctx
    if ctx is None or ctx.closed or _ctx_pid != os.getpid():
        return
    abandoned = [ch for ch in list(_channels) if not ch.sock.closed and not ch.in_use()]
    if abandoned:
        log.warning(
            "exiting with %d zmqbus socket(s) never closed (a MessageBroker without close()?): "
            "their queued messages get each socket's linger to leave, unconfirmed",
            len(abandoned),
        )
        for ch in abandoned:
            ch.sock.close()  # with the LINGER its SocketConfig set
    sockets = getattr(ctx, "_sockets", None)
    if sockets is None or any(not s.closed and s not in _background for s in list(sockets)):
        return
    # term() releases the GIL while it waits, so a helper thread bounds it.
    terminator = threading.Thread(target=ctx.term, name="zmqbus-exit-flush", daemon=True)
    terminator.start()
    terminator.join(EXIT_FLUSH_TIMEOUT)
    if terminator.is_alive():
        log.warning(
            "exit: the ZeroMQ context did not terminate within %g s (a socket dropped without close()?); "
            "exiting without waiting for it",
            EXIT_FLUSH_TIMEOUT,
        )


_background: weakref.WeakSet[zmq.Socket[bytes]] = weakref.WeakSet()


def mark_background(sock: zmq.Socket[bytes]) -> None:
    """A socket of a service thread that closes itself when the context terminates (the ZAP
    handler's): it does not hold back the exit flush."""
    _background.add(sock)


#: Seconds the exit flush may take at the most (each socket's linger is 1 s by default).
EXIT_FLUSH_TIMEOUT = 5.0

atexit.register(_flush_at_exit)


def fast_send(sock: zmq.Socket[bytes]) -> Any:
    """``sock.send`` without pyzmq's Python-level wrapper.

    The wrapper (``zmq.sugar.socket.Socket.send``) only adds the draft API's
    ``routing_id`` and ``group`` arguments, which zmqbus never uses, and costs
    0.25-0.45 us per call on top of the 0.25 us of the send itself. Falls
    back to ``sock.send`` if a pyzmq version lays its classes out otherwise.
    """
    base = getattr(getattr(zmq, "backend", None), "Socket", None)
    send = getattr(base, "send", None)
    if base is None or send is None or not isinstance(sock, base):
        return sock.send
    return send.__get__(sock, type(sock))


def fast_get(sock: zmq.Socket[bytes]) -> Any:
    """``sock.get`` without pyzmq's Python-level wrapper (which turns ``EVENTS`` into an enum: 1.06 us
    a read against 0.64). Falls back to ``sock.get`` as :func:`fast_send` does."""
    base = getattr(getattr(zmq, "backend", None), "Socket", None)
    get = getattr(base, "get", None)
    if base is None or get is None or not isinstance(sock, base):
        return sock.get
    return get.__get__(sock, type(sock))


def translated(what: str, exc: zmq.ZMQError) -> ClosedError | TransportError:
    """The error to raise for ``exc`` (what :func:`mapped_errors` raises, for code on the hot path that
    cannot afford a context manager)."""
    if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
        return ClosedError(f"{what}: socket or context closed")
    return TransportError(f"{what}: {exc.strerror}")


@contextlib.contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """Translate ``zmq.ZMQError`` raised inside the block."""
    try:
        yield
    except zmq.ZMQError as exc:
        raise translated(what, exc) from None


class Channel:
    """Awaitable readiness for one non-blocking zmq socket.

    Every wait is bounded, but a wait costs no timer of its own: one timer per
    channel, set for the earliest deadline among its waiters, times them out
    (a receive loop waits after almost every small batch, and a timer set and
    cancelled each time cost about 2.5 us of its 8 to 10).
    """

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self.sock = sock
        _channels.add(self)
        self._get = fast_get(sock)
        with mapped_errors("socket fd"):
            self._fd = int(sock.getsockopt(zmq.FD))
        self._loop: asyncio.AbstractEventLoop | None = None
        #: (event, future, deadline) of each waiting coroutine.
        self._waiters: list[tuple[int, asyncio.Future[bool], float]] = []
        self._recheck_due = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        #: Called from the FD callback itself when set (:meth:`set_reader`): no task to wake first.
        self._reader: Callable[[], None] | None = None

    def wait_readable(self, timeout: float | None) -> Coroutine[Any, Any, bool]:
        """Wait until a receive may succeed (False on timeout; see :meth:`wait`). Returns :meth:`wait`'s
        coroutine itself: no second coroutine per wait on the hot path."""
        return self.wait(_POLLIN, timeout)

    def wait_writable(self, timeout: float | None) -> Coroutine[Any, Any, bool]:
        """Wait until a send may succeed (False on timeout; see :meth:`wait`)."""
        return self.wait(_POLLOUT, timeout)

    def events(self) -> int:
        """The socket's ``EVENTS`` (``POLLIN``/``POLLOUT`` bits) now; reading them also clears the FD signal."""
        try:
            return self._get(_EVENTS)  # type: ignore[no-any-return]
        except zmq.ZMQError as exc:
            raise translated("wait", exc) from None

    def readable(self) -> bool:
        """True if a receive may succeed now (an ``EVENTS`` read: it also re-arms the FD signal)."""
        return bool(self.events() & _POLLIN)

    async def wait(self, event: int, timeout: float | None) -> bool:
        """Wait until ``event`` (``zmq.POLLIN``/``POLLOUT``) may be possible.

        Returns False on timeout. Callers must still handle ``zmq.Again``:
        readiness is a hint, re-checked by the next non-blocking call.
        """
        if self.events() & event:
            return True
        loop = asyncio.get_running_loop()
        if self._loop is None:
            # Registered once for the channel's life: request/reply waits after
            # almost every small batch, and add/remove_reader each time would
            # cost two epoll_ctl calls. Reading EVENTS in the callback drains
            # ZeroMQ's signal, so an idle registration never spins.
            self._loop = loop
            loop.add_reader(self._fd, self._on_fd)
        fut: asyncio.Future[bool] = loop.create_future()
        deadline = math.inf if timeout is None else loop.time() + timeout
        waiter = (event, fut, deadline)
        self._waiters.append(waiter)
        if deadline < self._timer_at:
            self._arm(loop, deadline)
        try:
            return await fut
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._on_deadline)

    def _on_deadline(self) -> None:
        """The channel's timer: time out the waiters whose deadline passed, re-arm for the next one."""
        self._timer, self._timer_at = None, math.inf
        loop = self._loop
        if loop is None:
            return
        now, nearest = loop.time(), math.inf
        for _, fut, deadline in self._waiters:
            if deadline <= now:
                _resolve(fut, False)
            elif deadline < nearest and not fut.done():
                nearest = deadline
        if nearest < math.inf:
            self._arm(loop, nearest)

    def set_reader(self, reader: Callable[[], None] | None) -> None:
        """Read from the FD callback: ``reader()`` is called, on the loop, whenever the socket may have
        something to read, and must receive until ``zmq.Again`` and then read :meth:`events` (which
        re-arms the FD signal). It runs in the callback itself, as an asyncio protocol's
        ``data_received`` does: a message is handled one loop turn and one task switch sooner than by a
        task awaiting :meth:`wait_readable` (about 6 us a wake-up here). None stops it."""
        self._reader = reader
        if reader is not None and self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._fd, self._on_fd)

    def in_use(self) -> bool:
        """True while the event loop that waits on this socket is running."""
        return self._loop is not None and self._loop.is_running()

    def wake(self) -> None:
        """Make every waiter, and the reader, re-check (after an operation that may eat the FD edge)."""
        for _, fut, _ in self._waiters:
            _resolve(fut, True)
        if self._reader is not None:
            self.recheck()

    def recheck(self) -> None:
        """After a send on a socket someone waits on: wake them if their event is ready now.

        A send processes ZeroMQ's command mailbox and so can consume the FD
        signal of a message that arrived meanwhile; without this the waiter
        would sleep until its timeout.
        """
        if (self._waiters or self._reader is not None) and not self._recheck_due and self._loop is not None:
            # Deferred to the loop's next turn (which runs before it polls again),
            # and coalesced: reading EVENTS costs a syscall (about 2 us), and a
            # busy caller sends many requests per turn.
            self._recheck_due = True
            self._loop.call_soon(self._deferred_recheck)

    def _deferred_recheck(self) -> None:
        self._recheck_due = False
        self.recheck_now()

    def recheck_now(self) -> None:
        """:meth:`recheck` at once: for the end of a run of sends (one ``EVENTS`` read for all of them,
        and no extra turn of the loop before a waiter learns that a reply is already there)."""
        if self._waiters or self._reader is not None:
            self._check(None)

    def _on_fd(self) -> None:
        reader = self._reader
        if reader is not None:
            reader()  # its receives process ZeroMQ's commands, and it reads EVENTS once drained
            if not self._waiters:
                return
        self._check(reader)

    def _check(self, done: Callable[[], None] | None) -> None:
        """Read EVENTS (which clears the FD signal); run the reader (unless it is ``done``) if there is
        something to read, and wake the waiters whose event is ready."""
        try:
            events = self._get(_EVENTS)
        except zmq.ZMQError:
            events = _POLLIN | _POLLOUT  # let the reader or the waiter find out why
        reader = self._reader
        if reader is not None and reader is not done and events & _POLLIN:
            reader()
        for event, fut, _ in self._waiters:
            if events & event:
                _resolve(fut, True)

    def _unwatch(self) -> None:
        self._reader = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            self._loop = None

    def close(self, linger: float | None = None) -> None:
        self.wake()
        self._unwatch()
        with mapped_errors("close"):
            self.sock.close(linger=None if linger is None else int(linger * 1000))


_channels: weakref.WeakSet[Channel] = weakref.WeakSet()
#: Plain ints: ``zmq.POLLIN`` is an ``IntFlag``, and ``int & IntFlag`` builds an enum member (about 1 us).
_POLLIN, _POLLOUT, _EVENTS = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.EVENTS)


def user_id(frame: zmq.Frame) -> str:
    """The ZAP user id (a key name) of the connection a frame came from; "" if none."""
    try:
        user = frame.get("User-Id")
    except zmq.ZMQError:
        return ""
    return user if isinstance(user, str) else ""


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)
