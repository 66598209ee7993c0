"""A token bucket: bursts up to the per-minute rate, then one call per refilled token."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from swarm_runtime.errors import RateLimited


class TokenBucket:
    """Starts full, so a fresh server can take a burst of `rate_per_minute` calls at once."""

    def __init__(self, rate_per_minute: int, *, clock: Callable[[], float] = time.monotonic):
        if rate_per_minute < 1:
            raise ValueError("rate_per_minute must be at least 1")
        self.capacity = float(rate_per_minute)
        self._per_second = rate_per_minute / 60.0
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Take one token, or raise RateLimited saying when the next one will be there."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            raise RateLimited((1.0 - self._tokens) / self._per_second)

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.capacity, self._tokens + elapsed * self._per_second)
        self._updated = now
