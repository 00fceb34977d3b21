"""Rate-limited logging for faults that can arrive once per message.

The first occurrence of a key is logged at once; later ones within
``interval`` seconds are only counted, and the next line that is logged says
how many were suppressed. The clock is injected so tests need no sleeps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` unless ``key`` was logged in the last interval.

        Returns True when a line was written.
        """
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg += " (%d more like this suppressed)"
            args = (*args, skipped)
        self.logger.log(level, msg, *args)
        return True
