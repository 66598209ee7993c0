"""Whether the execution API answers, asked over loopback only and at most once a second."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from swarm_runtime.queue.api_probe import probe_api
from swarm_runtime.web.loopback import direct_session

API_PROBE_TTL_SECONDS = 1.0
API_PROBE_TIMEOUT_SECONDS = 0.5


class ApiProbe:
    """Every open page polls the summary; this keeps that from becoming load on the API."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, str, dict[str, Any]] | None = None
        self._session = direct_session()

    def check(self, endpoint: str) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            if self._last and self._last[1] == endpoint:
                if now - self._last[0] < API_PROBE_TTL_SECONDS:
                    return self._last[2]
            result = self._probe(endpoint)
            self._last = (now, endpoint, result)
            return result

    def _probe(self, endpoint: str) -> dict[str, Any]:
        return probe_api(self._session, endpoint, API_PROBE_TIMEOUT_SECONDS)
