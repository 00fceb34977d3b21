#!/usr/bin/env python3
"""Launch a zmqbus forwarder: ``scripts/forwarder.py [--pub EP] [--sub EP] ...``.

A thin launcher for deployments that prefer a script to the console entry
point; every option is ``zmqbus forwarder``'s (see ``--help``).
"""

import sys

from zmqbus.cli import main

if __name__ == "__main__":
    sys.exit(main(["forwarder", *sys.argv[1:]], prog_name="forwarder.py"))
