"""control_panel.py: the operator's page on 127.0.0.1.

This first version shows the queue at a glance from queue.json (the same file the
worker uses, never a private copy). The live log view and the operator actions
build on it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from flask import Flask, abort, jsonify, render_template, request

from errors import StateFileError, SwarmError
from http_server import serve
from queue_store import QueueStore
from settings import Settings
from state_store import Workspace

log = logging.getLogger("control_panel")
GOLDEN_PATH_ONLY = (
    "spawner endpoints are disabled in golden-path mode: tasks run only through "
    "worker.py against queue.json"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(settings: Settings) -> Flask:
    app = Flask(__name__)
    workspace = Workspace(settings.workspace)
    store = QueueStore(workspace, retain=settings.queue_retain)

    @app.before_request
    def only_our_host() -> None:
        """Refuse DNS-rebinding requests: the Host must name this loopback server."""
        server_url = app.config.get("SERVER_URL")
        if server_url and request.host not in allowed_hosts(server_url):
            abort(403, description=f"unexpected Host header {request.host!r}")

    @app.after_request
    def harden(response: Any) -> Any:
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/")
    def index() -> str:
        return render_template("index.html", summary=queue_summary(store))

    @app.get("/api/queue/summary")
    def summary() -> Any:
        return jsonify(queue_summary(store))

    @app.route("/api/spawner/<path:_rest>", methods=["GET", "POST", "PUT", "DELETE"])
    def spawner(_rest: str) -> Any:
        response = jsonify({"error": GOLDEN_PATH_ONLY})
        response.status_code = 410
        return response

    @app.errorhandler(403)
    def forbidden(exc: Any) -> Any:
        response = jsonify({"error": exc.description})
        response.status_code = 403
        return response

    return app


def allowed_hosts(server_url: str) -> set[str]:
    port = server_url.rsplit(":", 1)[1]
    return {f"127.0.0.1:{port}", f"localhost:{port}"}


def queue_summary(store: QueueStore) -> dict[str, Any]:
    try:
        doc = store.load()
    except StateFileError as exc:
        return {"error": str(exc), "tasks": []}
    counts: dict[str, int] = {}
    for task in doc.tasks:
        counts[task.status.value] = counts.get(task.status.value, 0) + 1
    return {
        "error": None,
        "by_status": counts,
        "tasks": [
            {"id": t.id, "status": t.status.value, "mode": t.effective_mode.value,
             "attempts": t.attempts, "depends_on": t.depends_on, "error": t.last_error}
            for t in doc.tasks[-200:]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    parser = argparse.ArgumentParser(prog="control_panel.py", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help="port on 127.0.0.1 (0 picks a free one)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(panel_port=args.port)
    except SwarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return serve(create_app(settings), settings.panel_port, "control panel")


if __name__ == "__main__":
    sys.exit(main())
