"""The ``zmqbus`` command line: :mod:`.main` (the group and the bus, run and bench commands) and
:mod:`.ops` (what an operator of a running bus asks: ls, req, ping, dlq, stats)."""

from __future__ import annotations

from . import ops as ops  # registers its commands on the group
from .main import main as main

__all__ = ["main"]
