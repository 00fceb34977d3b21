#!/usr/bin/env python3
"""Pub/sub throughput, zmqbus vs raw pyzmq + msgpack: ``benchmarks/pubsub.py [--quick] [--json]``.

The same as ``zmqbus bench pubsub``; see benchmarks/README.md for how to read it.
"""

import sys

from zmqbus.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "pubsub", *sys.argv[1:]], prog_name="pubsub.py"))
