"""How long to wait before trying again, for every client and queue that retries."""

from __future__ import annotations

import math
import random
from typing import Any, Protocol

MAX_DOUBLINGS = 32


def backoff(retry: int, base: float, cap: float, jitter: tuple[float, float] = (1.0, 1.0)) -> float:
    """base, 2×base, 4×base… for the 1st, 2nd, 3rd retry, capped; then scaled by a random
    factor within `jitter`, so clients that failed together do not all come back together."""
    doublings = min(max(retry, 1) - 1, MAX_DOUBLINGS)
    return min(cap, max(base, 0.0) * 2.0**doublings) * random.uniform(*jitter)


class Headers(Protocol):
    """Headers looked up by name regardless of case: requests' and http.client's."""

    def get(self, name: str, default: Any, /) -> Any: ...


def retry_after(headers: Headers, cap: float) -> float | None:
    """Retry-After in seconds, capped so a server cannot park a client for an hour; None when
    it is missing or not a number (an HTTP date included)."""
    try:
        seconds = float(headers.get("Retry-After", ""))
    except ValueError:
        return None
    if math.isnan(seconds):
        return None
    return min(cap, max(0.0, seconds))
