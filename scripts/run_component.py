#!/usr/bin/env python3
"""Launch a component: ``scripts/run_component.py module:Class [--name N] [--replicas N] [--pub EP] [--sub EP]``.

A thin launcher for deployments that prefer a script to the console entry
point; every option is ``zmqbus run``'s (see ``--help``).
"""

import sys

from zmqbus.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]], prog_name="run_component.py"))
