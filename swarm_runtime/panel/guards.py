"""The panel's guards: a local control plane is a target.

Every request must name this server in its Host (DNS rebinding); every state change
needs the page's CSRF token and no foreign Origin; every answer carries a strict CSP
and friends; any value equal to a runtime secret is scrubbed from every answer.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from flask import Flask, Response, request

from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace
from swarm_runtime.web.hosts import allowed_hosts, check_host, served_port
from swarm_runtime.web.json_errors import HttpError

CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
REDACTED = "[redacted]"
# Answered with 410 whatever the method, so no token is needed to learn they are gone.
SPAWNER_PREFIX = "/api/spawner/"


class SecretScrubber:
    """Replaces the settings' secrets and the execution token wherever they appear.

    The token file is read once it exists: the API may create it after the panel starts."""

    def __init__(self, settings: Settings, workspace: Workspace):
        self._settings = settings
        self._token_path = workspace.token_path
        self._token: str | None = None

    def values(self) -> list[str]:
        """Each secret in raw and JSON-escaped form, longest first."""
        if self._token is None:
            try:
                self._token = self._token_path.read_text(encoding="utf-8").strip()
            except OSError:
                self._token = None
        values = [*self._settings.secret_values(), *([self._token] if self._token else [])]
        return sorted(
            {form for v in values for form in (v, json.dumps(v)[1:-1]) if form},
            key=len,
            reverse=True,
        )

    def __call__(self, text: str) -> str:
        for value in self.values():
            text = text.replace(value, REDACTED)
        return text


def check_request(port: int, csrf_token: str) -> None:
    """Raise a 403 unless the request is addressed to us and, if it changes state, from us."""
    check_host(port, "panel")
    hosts = allowed_hosts(port)
    if request.method not in UNSAFE_METHODS or request.path.startswith(SPAWNER_PREFIX):
        return
    origin = request.headers.get("Origin")
    if origin is not None and origin not in {f"http://{host}" for host in hosts}:
        raise HttpError(403, f"foreign Origin {origin!r} refused")
    supplied = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(supplied.encode(), csrf_token.encode()):
        raise HttpError(403, f"missing or invalid CSRF token (header {CSRF_HEADER})")


def harden(response: Response, scrub: Callable[[str], str]) -> Response:
    """Security headers on everything; no caching of the page or the API; no secrets."""
    response.headers.update(SECURITY_HEADERS)
    if request.path.startswith("/api/") or request.path == "/":
        response.headers["Cache-Control"] = "no-store"
    if not response.is_streamed and not response.direct_passthrough:
        body = response.get_data(as_text=True)
        scrubbed = scrub(body)
        if scrubbed != body:
            response.set_data(scrubbed)
    return response


def install_guards(
    app: Flask, settings: Settings, csrf_token: str, scrub: Callable[[str], str]
) -> None:
    app.before_request(lambda: check_request(served_port(app, settings.panel_port), csrf_token))
    app.after_request(lambda response: harden(response, scrub))
