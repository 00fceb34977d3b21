"""The caller core and responder cores against each other, over a fake link, with a fake clock.

In the manner of h11's ConnectionPair: no sockets, no event loop, no sleeps.
Each test moves time by hand and checks every decision exactly: retries,
failover, BUSY, duplicates, deadlines, shutdown.
"""

from __future__ import annotations

from zmqbus.core.calling import CallerCore, Complete, Connect, Disconnect, Wake
from zmqbus.core.control import Presence
from zmqbus.core.reqrep import Call, GiveUp, Retry
from zmqbus.core.retry import RetryPolicy
from zmqbus.core.serving import Busy, Cached, Refuse, ResponderCore, Start

POLICY = RetryPolicy(attempts=3, attempt_timeout=1.0, backoff=0.1, jitter=0.0)
CALLER = b"caller-1"


class Bus:
    """One caller core, responder cores by instance id, and what travels between them."""

    def __init__(self, *instances: str, max_concurrency: int = 1) -> None:
        self.now = 0.0
        self.caller = CallerCore(rand=lambda: 0.5)
        self.responders: dict[str, ResponderCore[str]] = {}
        self.dead: set[str] = set()
        for n, iid in enumerate(instances, 1):
            core: ResponderCore[str] = ResponderCore(iid, max_concurrency=max_concurrency)
            core.services.add("svc")
            self.responders[iid] = core
            assert self.announce(iid) == [Connect(f"tcp://{iid}", b"%d" % n)]

    def announce(self, iid: str, leaving: bool = False) -> list[Connect | Disconnect | Wake]:
        p = Presence(
            instance=iid, endpoint=f"tcp://{iid}", services=("svc",), interval=1.0, liveness=3, leaving=leaving
        )
        return self.caller.presence(p, self.now)

    def call(self, request_id: str, timeout: float = 10.0) -> Call:
        return self.caller.begin(request_id, "svc", self.now, timeout, POLICY)

    def try_on(self, call: Call) -> tuple[str, object]:
        """Assign the next try and deliver it; returns (instance, the responder's decision)."""
        inst = self.caller.assign(call, self.now)
        assert inst is not None
        call.waiter = object()  # a try is under way (the shell's future)
        if inst.instance_id in self.dead:
            return inst.instance_id, None
        decision = self.responders[inst.instance_id].request(
            CALLER, "svc", call.request_id, call.deadline, call.request_id, self.now
        )
        return inst.instance_id, decision

    def finish(self, iid: str, request_id: str) -> Complete | Wake | None:
        """The handler on ``iid`` ends; its reply travels back to the caller."""
        for action in self.responders[iid].done(request_id, b"REP " + request_id.encode(), self.now):
            assert isinstance(action, Start)  # queued work starting: not exercised here
        return self.caller.reply(request_id, None)


def test_a_try_that_times_out_is_retried_on_the_other_instance() -> None:
    bus = Bus("a", "b")
    call = bus.call("r1")
    first, decision = bus.try_on(call)
    assert decision == Start(CALLER, "svc", "r1", "r1")
    bus.dead.add(first)  # its reply never comes
    bus.now = 0.999
    assert bus.caller.tick(bus.now) == []
    bus.now = 1.0
    assert bus.caller.tick(bus.now) == [Wake(call, "attempt timed out")]
    # reported once: the timer is not set again for a try that is over (it would fire at once, in a loop)
    assert bus.caller.tick(bus.now) == [] and bus.caller.next_deadline() != 1.0
    step = bus.caller.after_failure(call, bus.now)
    assert step == Retry(0.1)  # backoff * multiplier**0, no jitter
    bus.now = 1.1
    second, decision = bus.try_on(call)
    assert second != first and isinstance(decision, Start)
    bus.now = 1.2
    assert bus.finish(second, "r1") == Complete(call, None)
    assert (call.attempt, bus.caller.retries, bus.caller.failovers) == (2, 1, 0)


def test_a_silent_instance_fails_its_calls_over_at_once() -> None:
    bus = Bus("a", "b")
    call = bus.call("r1")
    first, _ = bus.try_on(call)
    other = "b" if first == "a" else "a"
    bus.now = 2.5
    bus.announce(other)  # the other one keeps announcing; the first went silent at t=0
    assert bus.caller.next_deadline() == 1.0  # the try's deadline comes first
    bus.now = 3.0 + 1e-9
    actions = bus.caller.tick(bus.now)
    assert Disconnect(f"tcp://{first}") in actions and Wake(call, "instance silent") in actions
    assert bus.caller.failovers == 1
    assert bus.caller.directory.get(first) is None and bus.caller.directory.get(other) is not None


def test_busy_keeps_a_slow_but_alive_responder() -> None:
    bus = Bus("a")
    call = bus.call("r1")
    bus.try_on(call)
    bus.now = 1.0 - 1e-9
    assert bus.responders["a"].busy(bus.now, interval=1.0) == []
    bus.now = 0.9
    assert bus.responders["a"].busy(bus.now, interval=0.5) == [Busy(CALLER, "r1")]
    bus.caller.busy("r1", bus.now)  # the try's deadline moves to 0.9 + 1.0
    bus.now = 1.5
    assert bus.caller.tick(bus.now) == []
    assert bus.caller.next_deadline() == 1.9
    bus.now = 1.8
    assert bus.finish("a", "r1") == Complete(call, None)
    assert call.attempt == 1


def test_a_retry_to_the_same_instance_is_never_executed_twice() -> None:
    bus = Bus("a")
    call = bus.call("r1")
    bus.try_on(call)
    bus.now = 1.0
    assert bus.caller.tick(bus.now) == [Wake(call, "attempt timed out")]
    assert bus.caller.after_failure(call, bus.now) == Retry(0.1)
    bus.now = 1.1
    iid, decision = bus.try_on(call)  # the only instance: tried again, same request id
    assert (iid, decision) == ("a", None)  # still running there: its reply is on the way
    assert bus.finish("a", "r1") == Complete(call, None)
    # a third copy (a retry that crossed the reply) is answered from the cache
    assert bus.responders["a"].request(CALLER, "svc", "r1", call.deadline, "r1", bus.now) == Cached(CALLER, b"REP r1")
    assert bus.caller.reply("r1", None) is None  # the caller no longer waits: a late duplicate
    assert bus.caller.tracker.late_replies == 1 and bus.responders["a"].stats.executed == 1


def test_a_deadline_that_passes_in_the_queue_comes_back_as_expired() -> None:
    bus = Bus("a", max_concurrency=1)
    first, second = bus.call("r1"), bus.call("r2", timeout=0.5)
    assert isinstance(bus.try_on(first)[1], Start)
    assert bus.try_on(second)[1] is None  # queued behind r1
    bus.now = 1.0
    actions = bus.responders["a"].done("r1", b"REP r1", bus.now)
    assert len(actions) == 1 and isinstance(actions[0], Refuse) and actions[0].request == "r2"
    error = actions[0].error
    assert (error.code, error.retryable) == ("expired", False)
    assert bus.caller.reply("r1", None) == Complete(first, None)
    assert bus.caller.reply("r2", error) == Complete(second, error)


def test_shutting_down_sends_new_work_elsewhere_and_attempts_run_out() -> None:
    bus = Bus("a", "b")
    call = bus.call("r1")
    iid, _ = bus.try_on(call)
    for core in bus.responders.values():
        core.close()
    # the running try is interrupted: not retryable, the call ends with the error
    (interrupted,) = bus.responders[iid].interrupt()
    assert bus.caller.reply("r1", interrupted.error) == Complete(call, interrupted.error)
    # new work: refused retryably by each closing instance, until the attempts are spent
    call2 = bus.call("r2")
    for attempt in (1, 2, 3):
        _, decision = bus.try_on(call2)
        assert isinstance(decision, Refuse) and decision.error.retryable
        assert bus.caller.reply("r2", decision.error) == Wake(call2, "retryable error: " + decision.error.message)
        step = bus.caller.after_failure(call2, bus.now)
        if attempt < 3:
            assert isinstance(step, Retry)
            bus.now += step.delay
    assert step == GiveUp("attempts")


def test_an_overloaded_refusal_uses_no_attempt_and_backs_off_until_the_deadline() -> None:
    """A try refused before it ran (``overloaded``) is a requeue: tried again after the policy's backoff for
    its number of refusals, the attempt given back; the call gives up only at its deadline. Another
    retryable refusal (``shutting_down``, ``unknown_service``) still uses an attempt."""
    bus = Bus("a")
    bus.responders["a"].max_queue = 0  # one request runs, none may wait
    assert isinstance(bus.try_on(bus.call("busy"))[1], Start)  # takes the only slot
    call = bus.call("r1", timeout=2.0)
    delays = []
    while True:
        _, decision = bus.try_on(call)
        assert isinstance(decision, Refuse) and decision.error.code == "overloaded"
        assert call.attempt == 1  # every try is the first attempt: none of them ran
        assert bus.caller.reply("r1", decision.error) == Wake(call, "retryable error: " + decision.error.message)
        step = bus.caller.after_failure(call, bus.now)
        if isinstance(step, GiveUp):
            break
        delays.append(step.delay)
        bus.now += step.delay
    assert step == GiveUp("deadline") and len(delays) > POLICY.attempts  # more tries than attempts, in time
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8] and bus.now <= call.deadline
    assert bus.caller.requeues == call.refusals == len(delays) + 1 and bus.caller.retries == 0

    # room again: the next try runs, as attempt 1, and completes
    call2 = bus.call("r2")
    _, decision = bus.try_on(call2)
    assert isinstance(decision, Refuse)
    bus.caller.reply("r2", decision.error)
    step = bus.caller.after_failure(call2, bus.now)
    assert isinstance(step, Retry)
    bus.finish("a", "busy")
    _, decision = bus.try_on(call2)
    assert isinstance(decision, Start) and call2.attempt == 1

    # a refusal that comes while no try waits (between two tries) is not taken for the next try's
    call3 = bus.call("r3")
    _, decision = bus.try_on(call3)
    assert isinstance(decision, Refuse)  # r2 runs now
    call3.waiter = None
    bus.caller.reply("r3", decision.error)
    assert not call3.requeue


def test_a_leaving_instance_and_a_restart_on_its_address() -> None:
    bus = Bus("a")
    call = bus.call("r1")
    bus.try_on(call)
    # a new instance announces the same endpoint: the old one is gone, its call fails over
    p = Presence(instance="a2", endpoint="tcp://a", services=("svc",), interval=1.0, liveness=3)
    assert bus.caller.presence(p, bus.now) == [
        Disconnect("tcp://a"),
        Wake(call, "instance replaced"),
        Connect("tcp://a", b"2"),
    ]
    assert bus.caller.presence(
        Presence(instance="a2", endpoint="tcp://a", services=("svc",), interval=1.0, liveness=3, leaving=True), bus.now
    ) == [Disconnect("tcp://a")]
    assert len(bus.caller.directory) == 0


def test_a_reconnection_never_reuses_a_routing_id() -> None:
    """libzmq aborts a ROUTER that connects with a routing id one of its pipes still holds, and a
    disconnected pipe lingers: an instance that leaves (or goes silent) and announces itself again
    at once must be connected under a new id, whatever its instance id."""
    bus = Bus("a")
    ids = {b"1"}
    for _ in range(50):
        assert bus.announce("a", leaving=True) == [Disconnect("tcp://a")]
        (connect,) = bus.announce("a")
        assert isinstance(connect, Connect) and connect.endpoint == "tcp://a"
        assert connect.routing_id not in ids and connect.routing_id[:1] != b"\0"
        ids.add(connect.routing_id)
    bus.now += 10.0  # silent: expired, then back
    assert bus.caller.tick(bus.now) == [Disconnect("tcp://a")]
    (connect,) = bus.announce("a")
    assert isinstance(connect, Connect) and connect.routing_id not in ids
