#!/usr/bin/env python3
"""The whole benchmark suite: ``benchmarks/suite.py [--quick] [--peers] [--json] [--out DIR] [--only SECTION]``.

The same as ``zmqbus bench``; see benchmarks/README.md for how to read it.
"""

import sys

from zmqbus.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]], prog_name="suite.py"))
