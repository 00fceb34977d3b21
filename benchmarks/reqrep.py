#!/usr/bin/env python3
"""Request/reply latency and throughput, zmqbus vs raw DEALER/ROUTER: ``benchmarks/reqrep.py [--quick] [--json]``.

The same as ``zmqbus bench reqrep``; see benchmarks/README.md for how to read it.
"""

import sys

from zmqbus.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "reqrep", *sys.argv[1:]], prog_name="reqrep.py"))
