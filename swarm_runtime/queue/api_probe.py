"""Whether the execution API that queue.json names answers its `/status`.

Asked over loopback only, without the internal token (a status needs none), and with a
short timeout, so a view of the runtime never waits on an API that is down.
"""

from __future__ import annotations

from typing import Any

import requests

from swarm_runtime.web.loopback import loopback_url


def probe_api(session: requests.Session, endpoint: str, timeout: float) -> dict[str, Any]:
    """`reachable` and `ok` (it answered, and said all is well), with the error if not."""
    answer: dict[str, Any] = {"endpoint": endpoint, "reachable": False, "error": None}
    checked = loopback_url(endpoint)
    if checked is None:
        return answer | {"error": "not a loopback URL; only 127.0.0.1 is asked"}
    try:
        reply = session.get(f"{checked.rstrip('/')}/status", timeout=timeout)
    except requests.RequestException as exc:
        return answer | {"error": f"no answer ({type(exc).__name__})"}
    body = _json_or_empty(reply)
    error = None if reply.ok else str(body.get("error") or f"HTTP {reply.status_code}")
    return answer | {
        "reachable": True,
        "ok": reply.ok,
        "error": error,
        "provider": body.get("provider"),
        "provider_name": body.get("provider_name"),
        "provider_answering": body.get("provider_answering"),
        "provider_error": body.get("provider_error"),
    }


def _json_or_empty(reply: requests.Response) -> dict[str, Any]:
    try:
        body = reply.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
