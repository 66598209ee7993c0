"""control_panel.py: the operator's page on 127.0.0.1.

The page watches the runtime through the files the runtime itself writes: queue.json
(read and changed through the worker's own store and lock), the events (the
workspace's execution_log.jsonl by byte offset or, with a database, every host's rows by
id; see store.events.event_source), the review queue, the audit trails, the
reward ledger and the workers' presence files. It keeps no copy of its own, so after a
restart it shows exactly what happened before.

This module wires the pieces of this subpackage into a Flask app: the guards, the read
models (health, tasks, outcomes), the operator actions and the event stream, all
sharing one `Panel` (state).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from flask import Flask, Response, jsonify, render_template, request

from swarm_runtime.contract import QUEUE_FILE, Mode, Status
from swarm_runtime.panel import actions
from swarm_runtime.panel.audit import SPEND_BUCKETS
from swarm_runtime.panel.errors import install_error_handlers
from swarm_runtime.panel.guards import install_guards
from swarm_runtime.panel.health import summary_of
from swarm_runtime.panel.metrics import Metrics
from swarm_runtime.panel.outcomes import GATE_SHOWN, gate_of, rewards_of, safety_of, spend_of
from swarm_runtime.panel.params import checked_id, choice_arg, int_arg, parse_body
from swarm_runtime.panel.state import MAX_STREAMS, Panel
from swarm_runtime.panel.stream import (
    DEFAULT_BACKLOG,
    LONG_POLL_MAX_SECONDS,
    MAX_EVENTS_PER_PAGE,
    long_poll,
    page_body,
    parse_cursor,
    stream_response,
)
from swarm_runtime.panel.tasks import TaskQuery, detail_of, fleet_view, status_tones, table_of
from swarm_runtime.queue.overview import named_endpoint
from swarm_runtime.settings import Settings
from swarm_runtime.web.json_errors import HttpError
from swarm_runtime.web.server import serve_main

MAX_BODY_BYTES = 256 * 1024
log = logging.getLogger("control_panel")
# Threads for ordinary requests, beyond the ones live streams may hold.
PANEL_REQUEST_THREADS = 8
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 200
MAX_QUERY_CHARS = 200
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
GOLDEN_PATH_ONLY = (
    "spawner endpoints are disabled in golden-path mode: tasks run only through "
    f"worker.py against {QUEUE_FILE}"
)


def create_app(settings: Settings) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    panel = Panel(settings)
    app.extensions["panel"] = panel
    install_guards(app, settings, panel.csrf_token, panel.scrub)
    install_error_handlers(app, panel.workspace)
    _register_page(app, panel)
    _register_reads(app, panel)
    _register_outcomes(app, panel)
    _register_actions(app, panel)
    _register_events(app, panel)
    _register_metrics(app, panel)
    return app


def utc_clock() -> datetime:
    return datetime.now(UTC)


def _register_page(app: Flask, panel: Panel) -> None:
    @app.get("/")
    def index() -> str:
        return render_template(
            "index.html",
            csrf_token=panel.csrf_token,
            tones=json.dumps(status_tones()),
            statuses=[s.value for s in Status],
            modes=[m.value for m in Mode],
            gate_statuses=list(GATE_SHOWN),
            spend_buckets=list(SPEND_BUCKETS),
        )

    @app.route("/api/spawner/", defaults={"_rest": ""}, methods=ALL_METHODS)
    @app.route("/api/spawner/<path:_rest>", methods=ALL_METHODS)
    def spawner(_rest: str) -> Response:
        raise HttpError(410, GOLDEN_PATH_ONLY)


def _register_reads(app: Flask, panel: Panel) -> None:
    @app.get("/api/summary")
    def summary() -> Response:
        panel.catch_up()
        return jsonify(summary_of(panel, utc_clock()))

    @app.get("/api/tasks")
    def tasks() -> Response:
        status = choice_arg("status", [s.value for s in Status])
        page = int_arg("page", 1, 1, 1_000_000)
        per_page = int_arg("per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
        query = request.args.get("q", "")[:MAX_QUERY_CHARS]
        host = request.args.get("host", "")[:MAX_QUERY_CHARS] or None
        panel.catch_up()
        wanted = TaskQuery(status, query, host)
        return jsonify(table_of(panel, wanted, page, per_page, utc_clock().timestamp()))

    @app.get("/api/tasks/<task_id>")
    def task_detail(task_id: str) -> Response:
        panel.catch_up()
        return jsonify(detail_of(panel, checked_id(task_id), utc_clock().timestamp()))

    @app.get("/api/fleet")
    def fleet() -> Response:
        return jsonify(fleet_view(panel, utc_clock().timestamp()))


def _register_outcomes(app: Flask, panel: Panel) -> None:
    @app.get("/api/quality-gate")
    def gate() -> Response:
        return jsonify(gate_of(panel, choice_arg("status", GATE_SHOWN)))

    @app.get("/api/safety")
    def safety() -> Response:
        panel.catch_up(panel.safety_log)
        return jsonify(safety_of(panel))

    @app.get("/api/rewards")
    def rewards() -> Response:
        return jsonify(rewards_of(panel))

    @app.get("/api/spend")
    def spend() -> Response:
        bucket = choice_arg("bucket", list(SPEND_BUCKETS), default="minute")
        panel.catch_up(panel.spend_log)
        return jsonify(spend_of(panel, bucket or "minute"))


def _register_actions(app: Flask, panel: Panel) -> None:
    @app.post("/api/tasks")
    def add_task() -> tuple[Response, int]:
        return jsonify(actions.add_task(panel, parse_body(actions.AddTaskBody))), 201

    @app.post("/api/tasks/<task_id>/requeue")
    def requeue(task_id: str) -> Response:
        return jsonify(actions.requeue(panel, checked_id(task_id)))

    @app.post("/api/tasks/<task_id>/cancel")
    def cancel(task_id: str) -> Response:
        return jsonify(actions.cancel(panel, checked_id(task_id)))

    @app.post("/api/tasks/requeue-failed")
    def requeue_failed() -> Response:
        return jsonify(actions.requeue_failed(panel))

    @app.post("/api/pause")
    def pause() -> Response:
        return jsonify(actions.pause(panel, parse_body(actions.PauseBody)))

    @app.post("/api/resume")
    def resume() -> Response:
        return jsonify(actions.resume(panel, parse_body(actions.PauseBody)))


def _register_events(app: Flask, panel: Panel) -> None:
    @app.get("/api/events")
    def events() -> Response:
        limit = int_arg("limit", DEFAULT_BACKLOG, 1, MAX_EVENTS_PER_PAGE)
        wait = int_arg("wait", 0, 0, int(LONG_POLL_MAX_SECONDS))
        after = request.args.get("after")
        cursor = None if after in (None, "") else int_arg("after", 0, -1, 2**62)
        page = long_poll(panel, cursor, request.args.get("epoch"), limit, wait)
        return jsonify(page_body(page))

    @app.get("/api/stream")
    def stream() -> Response:
        backlog = int_arg("backlog", DEFAULT_BACKLOG, 0, MAX_EVENTS_PER_PAGE)
        cursor, epoch = parse_cursor(request.headers.get("Last-Event-ID"))
        return stream_response(panel, cursor, epoch, backlog)


def _register_metrics(app: Flask, panel: Panel) -> None:
    """Prometheus scrapes /metrics; the audit trail it follows is closed with the app."""
    metrics = Metrics(panel, utc_clock)
    weakref.finalize(app, metrics.close)

    @app.get("/metrics")
    def scrape() -> Response:
        return metrics.response(request.headers.get("Accept"))


@contextmanager
def following_the_log(app: Flask) -> Iterator[None]:
    """While the panel serves, a thread follows the log; after, the panel closes its files."""
    panel: Panel = app.extensions["panel"]
    app.extensions["on_stop"] = panel.stop.set
    log.info(
        "workspace %s, execution API %s",
        panel.workspace.root,
        named_endpoint(panel.settings, panel.workspace, panel.store),
    )
    threading.Thread(target=panel.follow, name="log-follower", daemon=True).start()
    try:
        yield
    finally:
        panel.close()


def main(argv: list[str] | None = None) -> int:
    return serve_main(
        argv,
        prog="control_panel.py",
        doc=__doc__,
        name="control panel",
        port_setting="panel_port",
        create_app=create_app,
        running=following_the_log,
        threads=MAX_STREAMS + PANEL_REQUEST_THREADS,
    )


if __name__ == "__main__":
    sys.exit(main())
