"""The ``zmqbus`` command line, split by audience: :mod:`.main` (the group, its global options and
``keygen``), :mod:`.buscmds` (forwarder, watch, send, stats), :mod:`.ops` (what an operator of a
running bus asks: ls, req, ping, dlq), :mod:`.processes` (demo, run, up) and :mod:`.measure` (bench,
soak). Each module registers its commands on the group when imported."""

from __future__ import annotations

from . import buscmds as buscmds, measure as measure, ops as ops, processes as processes  # register commands
from .main import main as main

__all__ = ["main"]
