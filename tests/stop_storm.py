"""Stop a forwarder while 200 peers disconnect at once, many times (run as a subprocess).

    python tests/stop_storm.py ROUNDS [PEERS]

Each round starts a ``Forwarder`` on two free tcp loopback ports in this
process, starts a child process that connects PEERS sockets (half PUB to the
publishers' side, half SUB to the subscribers' side), waits until the
forwarder has accepted them all, kills the child with SIGKILL (every peer
disconnects at once) and calls ``stop()`` at once. It prints one JSON line:
the rounds done and the slowest ``stop()``.

A deadlock here holds the GIL inside libzmq, so nothing in this process can
notice it: the test that runs this script bounds it from outside with a
timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from zmqbus.bus.forwarder import Forwarder
from zmqbus.framework.procs import tcp_endpoints

_CHILD = """
import sys, time, zmq
ctx = zmq.Context()
pub, sub, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
socks = []
for i in range(n):
    s = ctx.socket(zmq.PUB if i % 2 else zmq.SUB)
    s.connect(pub if i % 2 else sub)
    if not i % 2:
        s.subscribe(b"storm.%d" % i)
    socks.append(s)
print("connected", flush=True)
time.sleep(60)
"""


def one_round(peers: int) -> float:
    pub, sub = tcp_endpoints()
    fwd = Forwarder(pub, sub, stats_interval=None).start()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, pub, sub, str(peers)], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        child.stdout.readline()
        deadline = time.monotonic() + 10.0
        while True:
            s = fwd.statistics()
            if s.publisher_connects + s.subscriber_connects >= peers:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"only {s.publisher_connects + s.subscriber_connects} of {peers} peers connected")
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        started = time.monotonic()
        fwd.stop()
        return time.monotonic() - started
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait()


def main() -> None:
    rounds = int(sys.argv[1])
    peers = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    slowest = 0.0
    for i in range(rounds):
        slowest = max(slowest, one_round(peers))
        print(f"round {i + 1}", file=sys.stderr, flush=True)
    print(json.dumps({"rounds": rounds, "peers": peers, "slowest_stop_s": round(slowest, 3)}), flush=True)


if __name__ == "__main__":
    main()
