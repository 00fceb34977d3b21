"""Retry policy: how many tries, how long each may take, how long to wait between them.

Pure code; randomness is injected (``rand``) so tests are exact.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetryPolicy", "NO_RETRY"]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for a request, always bounded by the request's deadline.

    :param attempts: total tries, the first included (1 means no retry).
    :param attempt_timeout: seconds to wait for a reply to one try before
        trying again (the same message id, preferably on another instance).
        A responder that reports it is still working (``BUSY``) extends it, so
        a slow but alive responder is not abandoned. ``None``: only the
        request's deadline, a dead instance or a retryable error end a try.
    :param backoff: delay before the first retry, in seconds.
    :param multiplier: growth of the delay per retry.
    :param max_backoff: cap on the delay.
    :param jitter: the delay is scaled by a random factor in ``[1 - jitter, 1 + jitter]``.

    Defaults follow the ZeroMQ guide's tested numbers: three tries, and a try
    abandoned after the liveness window of three 1-second heartbeats.
    """

    attempts: int = 3
    attempt_timeout: float | None = 3.0
    backoff: float = 0.05
    multiplier: float = 2.0
    max_backoff: float = 1.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.attempt_timeout is not None and self.attempt_timeout <= 0:
            raise ValueError("attempt_timeout must be positive or None")
        if self.backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoff and max_backoff must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (1 is the first retry)."""
        base = min(self.max_backoff, self.backoff * self.multiplier ** max(0, retry - 1))
        return max(0.0, base * (1.0 - self.jitter + 2.0 * self.jitter * rand()))


#: One try only.
NO_RETRY = RetryPolicy(attempts=1)
