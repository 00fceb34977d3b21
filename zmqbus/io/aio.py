"""Small asyncio helpers shared by the dispatcher and the responder (no sockets)."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import inspect
import logging
import queue
import threading
import types
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = [
    "start_eagerly",
    "first_step",
    "EagerTask",
    "resume",
    "is_async_callable",
    "wait_event",
    "TaskOwner",
    "to_thread",
    "run_on_loop",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_async_callable(fn: Any) -> bool:
    """True for a coroutine function, a bound async method or an object whose ``__call__`` is async."""
    # not callable(): the question is whether __call__ is a coroutine function
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


class EagerTask:
    """What ``asyncio.current_task()`` is while a handler's first step runs eagerly, before it has a Task.

    ``asyncio.timeout`` and ``asyncio.TaskGroup`` bind the current task when entered and cancel it later.
    A handler started eagerly ran its first step inside the reading task (or in the socket's FD callback,
    with no task at all): a timeout there, once the handler went on as a task of its own, cancelled the
    *reading* task (the client stopped receiving, silently) instead of the handler, and a TaskGroup
    raised. This stands in for the handler's task during that step and, once :meth:`bind` names the
    Task that goes on with the handler, forwards ``cancel``, ``uncancel``, ``cancelling`` and ``done`` to
    it (a cancel asked for before that is passed on when it is bound). Code that compares the current
    task by identity across an ``await`` sees two objects (this, then the Task).
    """

    __slots__ = ("_loop", "_task", "_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task: asyncio.Task[Any] | None = None
        self._pending: list[Any] | None = None  # cancel messages asked for before the Task existed (rare)

    def bind(self, task: asyncio.Task[Any]) -> None:
        """The handler goes on in ``task``."""
        self._task = task
        if self._pending:
            for msg in self._pending:  # after the task's first step (which resumes the handler at its await)
                self._loop.call_soon(task.cancel, msg)
            self._pending = None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def cancel(self, msg: Any = None) -> bool:
        if self._task is not None:
            return self._task.cancel(msg)
        if self._pending is None:
            self._pending = []
        self._pending.append(msg)
        return True

    def cancelling(self) -> int:
        return self._task.cancelling() if self._task is not None else len(self._pending or ())

    def uncancel(self) -> int:
        if self._task is not None:
            return self._task.uncancel()
        if self._pending:
            self._pending.pop()
        return len(self._pending or ())

    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def __repr__(self) -> str:
        return f"<EagerTask of {self._task!r}>"


# asyncio's own bookkeeping of the current task (what its Tasks call around each step; present from 3.7
# through 3.13). Without it, the first step runs as it did before EagerTask: in whatever task is current.
_enter_task = getattr(asyncio.tasks, "_enter_task", None)
_leave_task = getattr(asyncio.tasks, "_leave_task", None)


def _task_table() -> dict[Any, Any] | None:
    """asyncio's table of the current task per loop, when ``current_task()`` reads it (CPython 3.7-3.13: a
    dict in the C module). Swapping an entry there costs 0.1 us where ``_leave_task``/``_enter_task``
    around a step cost 0.5; checked here once, with a key no loop uses, so another implementation
    falls back to the functions."""
    table = getattr(asyncio.tasks, "_current_tasks", None)
    if type(table) is not dict:
        return None
    probe, mark = object(), object()
    try:
        table[probe] = mark
        return table if asyncio.current_task(probe) is mark else None  # type: ignore[arg-type]
    except Exception:
        return None
    finally:
        table.pop(probe, None)


_current_tasks = _task_table()


def first_step(coro: Any, loop: asyncio.AbstractEventLoop) -> tuple[bool, Any, EagerTask]:
    """``coro.send(None)`` as its own task, a new :class:`EagerTask` (the task that was current, if any,
    is current again afterwards): ``(True, result, eager)`` when the coroutine finished, ``(False,
    yielded, eager)`` when it suspended. Exceptions the step raises propagate."""
    eager = EagerTask(loop)
    tasks = _current_tasks
    try:
        if tasks is not None:
            current = tasks.get(loop)
            tasks[loop] = eager  # duck-typed: what current_task() returns
            try:
                return False, coro.send(None), eager
            finally:
                if current is None:
                    tasks.pop(loop, None)
                else:
                    tasks[loop] = current
        if _enter_task is None or _leave_task is None:
            return False, coro.send(None), eager
        current = asyncio.current_task(loop)
        if current is not None:
            _leave_task(loop, current)
        _enter_task(loop, eager)
        try:
            return False, coro.send(None), eager
        finally:
            _leave_task(loop, eager)
            if current is not None:
                _enter_task(loop, current)
    except StopIteration as stop:
        return True, stop.value, eager


def start_eagerly(coro: Any) -> tuple[bool, Any, EagerTask]:
    """Run ``coro`` up to its first suspension, as its own task (:class:`EagerTask`).

    Returns ``(True, result, eager)`` if it finished without suspending (no
    Task is needed), or ``(False, rest, eager)`` where ``rest`` is an awaitable
    that finishes it: give it to a Task and ``eager.bind`` that Task.
    Exceptions raised before the first suspension propagate to the caller.
    Call it with the context the coroutine should see.
    """
    finished, value, eager = first_step(coro, asyncio.get_running_loop())
    return (True, value, eager) if finished else (False, resume(coro, value), eager)


@types.coroutine
def resume(coro: Any, yielded: Any) -> Any:
    """Go on driving a coroutine that was started by hand and suspended at ``yielded``.

    Starting a handler's coroutine with ``coro.send(None)`` answers the common
    case (it completes without suspending) with no Task at all; when it does
    suspend, a Task runs ``resume(coro, yielded)``, which hands the Task what
    the coroutine waits on and forwards results and exceptions back, exactly
    as ``yield from`` would have from the start (Python 3.12's eager tasks do
    this natively).
    """
    while True:
        try:
            value = yield yielded
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(value)
            except StopIteration as stop:
                return stop.value


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for ``event`` up to ``timeout`` seconds; True if it is set.

    Not ``asyncio.wait_for``: on Python 3.11 it can swallow a cancellation
    that arrives just as the awaited thing completes, leaving the cancelled
    task running (seen here: a responder's heartbeat task that close() then
    waited for forever). ``asyncio.wait`` never swallows one.
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
        return bool(done)
    finally:
        waiter.cancel()


class DrainLoop:
    """Reading from a socket's FD callback (``Channel.set_reader(loop.drain)``), the part both readers share.

    :meth:`drain` calls :meth:`read_batch` until it says the socket is drained, at most 8 times per call
    (then the rest of the event loop runs first, and the drain goes on at its next turn); it never runs
    inside itself (a handler that makes the socket re-check); an exception ends the reading: it is set on
    :attr:`failed`, which the task owning the reading awaits (and so raises).
    """

    ROUNDS = 8

    def __init__(self) -> None:
        self.failed: asyncio.Future[None] | None = None
        self._again_due = False
        self._draining = False

    def start(self) -> asyncio.Future[None]:
        """Begin (on the running loop); returns :attr:`failed`."""
        self.failed = asyncio.get_running_loop().create_future()
        return self.failed

    def may_read(self) -> bool:
        """False while reading is paused (a subclass's state)."""
        return True

    def read_batch(self) -> bool:
        """Read and handle one batch; True when the socket is drained (and its FD signal re-armed)."""
        raise NotImplementedError

    def drain(self) -> None:
        failed = self.failed
        if failed is None or failed.done() or self._draining or not self.may_read():
            return
        self._draining = True
        try:
            for _ in range(self.ROUNDS):
                if self.read_batch():
                    return
            if not self._again_due:
                self._again_due = True
                asyncio.get_running_loop().call_soon(self._again)
        except Exception as exc:
            failed.set_exception(exc)
        finally:
            self._draining = False

    def _again(self) -> None:
        self._again_due = False
        self.drain()


class TaskOwner:
    """Owns a set of tasks: none is ever left unwatched (the one task-tracking mechanism of zmqbus).

    Every task started with :meth:`spawn` is tracked until it ends. One that
    ends with an exception is logged once; if it was started ``fatal``,
    ``on_fatal(exc)`` is called (a client then closes itself, and its next
    call raises). :meth:`drain` waits for them (tasks they start included),
    :meth:`cancel` cancels and awaits them all.
    """

    def __init__(self, on_fatal: Callable[[BaseException], None] | None = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_fatal = on_fatal

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str, fatal: bool = True) -> asyncio.Task[Any]:
        """Start ``coro`` as an owned task (on the running loop)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, fatal))
        return task

    def _done(self, task: asyncio.Task[Any], fatal: bool) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if fatal and self._on_fatal is not None:
            log.error("background task %s failed: %s: %s", task.get_name(), type(exc).__name__, exc)
            self._on_fatal(exc)
        else:
            log.warning("background task %s failed: %s: %s", task.get_name(), type(exc).__name__, exc)

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every owned task has ended; True if they all did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while self._tasks:
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=left)
        return True

    async def wait_any(self) -> None:
        """Wait until at least one owned task ends (at once if there are none)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)

    def cancel_now(self) -> None:
        """Ask every owned task to stop (without waiting: :meth:`cancel` waits)."""
        for task in list(self._tasks):
            task.cancel()

    async def cancel(self) -> None:
        """Cancel every owned task and wait until all have ended (tasks they spawn included)."""
        while self._tasks:
            tasks = set(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks -= tasks


class _DaemonThreads:
    """A grow-on-demand pool of daemon threads for sync handlers.

    Not ``asyncio.to_thread``: the default executor's threads are joined at
    interpreter exit, so one busy sync handler kept a stopped component
    process alive far past its grace period. Daemon threads never block
    exit; what still runs at exit is abandoned, which is what a grace period
    means.
    """

    def __init__(self, max_threads: int = 32) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._max = max_threads

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle == 0 and self._threads < self._max:
                self._threads += 1
                threading.Thread(target=self._work, name=f"zmqbus-worker-{self._threads}", daemon=True).start()
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
            job()


_threads = _DaemonThreads()


class _Completions:
    """What worker threads finished, handed to one event loop in bursts.

    ``call_soon_threadsafe`` writes to the loop's self-pipe on every call (a
    syscall, and a wake-up of the loop): one per job cost a sync handler
    about a third of its throughput. A job that finishes while an earlier
    one's hand-over is still pending joins it instead.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._done: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = collections.deque()
        self._scheduled = False

    def put(self, fn: Callable[..., None], *args: Any) -> None:
        """From any thread: run ``fn(*args)`` on the loop soon."""
        self._done.append((fn, args))
        if not self._scheduled:  # a drain that clears the flag after this append still sees the job
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more

    def _drain(self) -> None:
        self._scheduled = False
        done = self._done
        while done:
            fn, args = done.popleft()
            fn(*args)


_completions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Completions] = weakref.WeakKeyDictionary()


async def to_thread(fn: Callable[..., T], /, *args: Any) -> T:
    """Run ``fn(*args)`` in a daemon worker thread with the caller's context; await its result.

    Like ``asyncio.to_thread`` (context variables such as the current message
    are carried along), but the thread never keeps the process from exiting,
    and results that finish close together wake the loop once.
    Cancelling the await does not stop the thread; its result is dropped.
    """
    loop = asyncio.get_running_loop()
    completions = _completions.get(loop)
    if completions is None:
        completions = _completions[loop] = _Completions(loop)
    fut: asyncio.Future[T] = loop.create_future()
    ctx = contextvars.copy_context()

    def settle(ok: bool, value: Any) -> None:
        if not fut.done():
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def job() -> None:
        value: Any
        try:
            ok, value = True, ctx.run(fn, *args)
        except BaseException as exc:  # handed to the awaiting task
            ok, value = False, exc
        completions.put(settle, ok, value)

    _threads.submit(job)
    return await fut


def run_on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], T], timeout: float) -> T:
    """Run ``fn()`` on ``loop`` and return its result, from any thread (at once on the loop's own thread).

    What a loop's state is read by from another thread (a metrics scrape), so that no dict changes while
    it is copied. Raises :class:`BusTimeout` if the loop does not run it within ``timeout`` seconds, and
    :class:`ClosedError` if the loop is closed.
    """
    import concurrent.futures

    from ..core.errors import BusTimeout, ClosedError

    try:
        if asyncio.get_running_loop() is loop:
            return fn()
    except RuntimeError:
        pass  # no loop runs in this thread
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def call() -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:
            done.set_exception(exc)

    try:
        loop.call_soon_threadsafe(call)
    except RuntimeError:
        raise ClosedError("the event loop is closed") from None
    try:
        return done.result(timeout)
    except concurrent.futures.TimeoutError:
        raise BusTimeout(f"the event loop did not answer within {timeout:g} s") from None
