"""Cheap unique identifiers.

``str(uuid.uuid4())`` costs about 2 us; the hot path instead uses a
per-process random prefix plus a counter, which is unique across processes
(64 random bits per process) and ordered within one. The prefix is drawn again
after ``fork`` so that a forked child never repeats its parent's ids.
"""

from __future__ import annotations

import itertools
import os
import secrets

__all__ = ["new_id", "process_prefix"]

_prefix = ""
_format = "-%x"  # the prefix, a dash, the counter in hex: % formats it in 0.17 us, an f-string in 0.22
_counter = itertools.count(1)


def _reseed() -> None:
    global _prefix, _format, _counter
    _prefix = secrets.token_hex(8)
    _format = _prefix + "-%x"
    _counter = itertools.count(1)


_reseed()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def process_prefix() -> str:
    """The random 16-hex-digit prefix of this process's ids."""
    return _prefix


def new_id() -> str:
    """A new id, unique across processes: ``<16 hex>-<counter in hex>``."""
    return _format % next(_counter)
