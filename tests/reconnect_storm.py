"""A responder leaves and announces itself again, at once, while requests flow (run as a subprocess).

    python tests/reconnect_storm.py ROUNDS [IN_FLIGHT]

One process: a forwarder in a thread on two free tcp loopback ports, a
responder broker serving ``storm.echo`` and a caller broker with IN_FLIGHT
request loops. Each round, the responder publishes a ``leaving`` presence and
at once its ordinary presence again, so the caller disconnects the instance
and connects to it again while replies of the old connection may still be in
flight. This is what a responder whose heartbeats were late (a loaded
machine) or that re-announced after a forwarder restart looks like to a
caller. The caller must never reuse a routing id that a pipe of its ROUTER
may still hold: libzmq aborts the whole process on it
(``Assertion failed: !has_out_pipe (routing_id) (src/router.cpp:438)``).

It prints one JSON line: rounds done, requests answered, requests that
failed (any zmqbus error, counted by type, not fatal), and exits 1 if a
request loop is still waiting 15 s after the storm (every request has a
2 s timeout: a reply that came between two tries once left its request
waiting forever). An abort kills this process with SIGABRT, which only the
test that runs this script, from outside, can see.
"""

from __future__ import annotations

import asyncio
import json
import sys

from zmqbus import Forwarder, MessageBroker, ProcessingMessage, RetryPolicy
from zmqbus.core.errors import ZmqbusError
from zmqbus.framework.procs import tcp_endpoints


async def echo(message: ProcessingMessage) -> object:
    return message.content


async def storm(rounds: int, in_flight: int) -> dict[str, int]:
    pub, sub = tcp_endpoints()
    fwd = Forwarder(pub, sub, stats_interval=None).start()
    counts = {"rounds": 0, "answered": 0, "failed": 0}
    try:
        async with MessageBroker(pub, sub, name="storm-responder") as responder:
            responder.serve("storm.echo", echo)
            async with MessageBroker(pub, sub, name="storm-caller") as caller:
                await caller.wait_for_service("storm.echo", timeout=10.0)
                stop = asyncio.Event()

                async def load(n: int) -> None:
                    i = 0
                    while not stop.is_set():
                        i += 1
                        try:
                            await caller.request(
                                "storm.echo",
                                ProcessingMessage("storm.echo", {"n": n, "i": i}),
                                timeout=2.0,
                                retry=RetryPolicy(attempts=3, backoff=0.001),
                            )
                            counts["answered"] += 1
                        except ZmqbusError as exc:
                            counts["failed"] += 1
                            kind = f"failed_{type(exc).__name__}"
                            counts[kind] = counts.get(kind, 0) + 1

                loops = [asyncio.create_task(load(n)) for n in range(in_flight)]
                rpc = responder._requests.responder  # the real announcements, through the real forwarder
                assert rpc is not None
                for _ in range(rounds):
                    await rpc.announce(leaving=True)
                    await rpc.announce()
                    await asyncio.sleep(0.002)  # let some requests and replies cross the reconnect
                    counts["rounds"] += 1
                await caller.wait_for_service("storm.echo", timeout=10.0)
                stop.set()
                _, pending = await asyncio.wait(loops, timeout=15.0)
                if pending:
                    raise SystemExit(f"{len(pending)} request loop(s) still waiting 15 s after the storm: {counts}")
    finally:
        fwd.stop()
    return counts


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    in_flight = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    print(json.dumps(asyncio.run(storm(rounds, in_flight))), flush=True)


if __name__ == "__main__":
    main()
