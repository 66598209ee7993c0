"""Whether the execution API answers, asked over loopback only and at most once a second."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from swarm_runtime.web.loopback import direct_session, loopback_url

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
        answer: dict[str, Any] = {"endpoint": endpoint, "reachable": False, "error": None}
        checked = loopback_url(endpoint)
        if checked is None:
            return answer | {"error": "not a loopback URL; the panel only asks 127.0.0.1"}
        try:
            reply = self._session.get(
                f"{checked.rstrip('/')}/status", timeout=API_PROBE_TIMEOUT_SECONDS
            )
        except requests.RequestException as exc:
            return answer | {"error": f"no answer ({type(exc).__name__})"}
        body = _json_or_empty(reply)
        error = None if reply.ok else str(body.get("error") or f"HTTP {reply.status_code}")
        return answer | {
            "reachable": True,
            "ok": reply.ok,
            "error": error,
            "provider": body.get("provider"),
        }


def _json_or_empty(reply: requests.Response) -> dict[str, Any]:
    try:
        body = reply.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
