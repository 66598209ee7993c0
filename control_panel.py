"""control_panel.py: the operator's page on 127.0.0.1.

The page watches the runtime through the files the runtime itself writes: queue.json
(read and changed through the worker's own store and lock), execution_log.jsonl
(followed by byte offset, see log_tail.py), the review queue, the audit trails and the
reward ledger. It keeps no copy of its own, so after a restart it shows exactly what
happened before. Operator actions are logged as events carrying `operator_action`;
pausing writes the kill switch that workers read before each claim.

A local control plane is a target. Every request must name this server in its Host
(DNS rebinding); every state change needs the page's CSRF token and no foreign Origin;
task and model output is only ever rendered as text under a strict CSP; any value equal
to a runtime secret is scrubbed from every answer; nothing under .swarm/ is served.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import math
import os
import secrets
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import requests
from flask import Flask, Response, jsonify, render_template, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from werkzeug.exceptions import HTTPException

import quality_gate
from budget_ledger import BudgetLedger
from errors import (
    DuplicateTaskError,
    InvalidTransition,
    StateFileError,
    SwarmError,
    UnknownTaskError,
)
from event_log import EventLog
from http_server import serve
from log_tail import READ_BLOCK_BYTES, EventPage, IndexedEvent, JsonlFold, LogIndex, TaskInfo
from loopback import is_loopback_url
from pause_switch import read_pause, set_pause
from queue_store import QueueStore, is_parked, lease_is_live
from runtime_contract import (
    APPROVED_STATUSES,
    CLAIMABLE_STATUSES,
    FAILED_STATUSES,
    ErrorBody,
    Mode,
    QualityGateStatus,
    QueueDocument,
    Status,
    Task,
    TaskId,
    is_valid_task_id,
)
from settings import Settings
from state_store import Workspace, read_json
from swarm_enrichment import Balances, RewardLedger, parse_state

log = logging.getLogger("control_panel")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

OPERATOR_ID = "control-panel"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
GOLDEN_PATH_ONLY = (
    "spawner endpoints are disabled in golden-path mode: tasks run only through "
    "worker.py against queue.json"
)
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

MAX_BODY_BYTES = 256 * 1024
REQUEST_INDEX_BYTES = 1024 * 1024
INDEX_INTERVAL_SECONDS = 0.2
API_PROBE_TTL_SECONDS = 1.0
API_PROBE_TIMEOUT_SECONDS = 0.5
WORKER_SEEN_WINDOW_SECONDS = 120.0
STREAM_POLL_SECONDS = 0.2
STREAM_KEEPALIVE_SECONDS = 15.0
STREAM_LIFETIME_SECONDS = 300.0
STREAM_RETRY_MS = 1000
MAX_STREAMS = 16
LONG_POLL_MAX_SECONDS = 25.0
DEFAULT_BACKLOG = 100
MAX_EVENTS_PER_PAGE = 500
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 200
TIMELINE_LIMIT = 500
LIST_LIMIT = 200
SPEND_BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}
SPEND_POINTS = 120


# --- wire formats -----------------------------------------------------------------------


class AddTaskBody(BaseModel):
    """The add-task form; the store fills in status and timestamps, as for `worker.py add`."""

    model_config = ConfigDict(extra="forbid")

    id: TaskId
    mode: Mode = Mode.LLM
    prompt: str | None = Field(default=None, max_length=100_000)
    command: str | None = Field(default=None, max_length=10_000)
    depends_on: list[TaskId] = Field(default_factory=list)
    model: str | None = Field(default=None, max_length=200)
    max_budget: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @field_validator("depends_on", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return [] if value is None else value

    @field_validator("prompt", "command", "model", mode="after")
    @classmethod
    def _blank_is_absent(cls, value: str | None) -> str | None:
        return value if value and value.strip() else None

    def record(self) -> dict[str, Any]:
        required = "command" if self.mode == Mode.LOCAL else "prompt"
        if getattr(self, required) is None:
            raise PanelError(400, f"a {self.mode.value} task needs a {required}", field=required)
        return self.model_dump(mode="json", exclude_none=True)


class PauseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)


# --- errors -----------------------------------------------------------------------------


class PanelError(Exception):
    """An answer with a JSON ErrorBody, raised anywhere in a handler."""

    def __init__(self, status: int, message: str, *, field: str | None = None):
        self.status = status
        self.body = ErrorBody(error=message, field=field)
        super().__init__(message)


def refusal(exc: SwarmError, workspace: Workspace) -> PanelError:
    """The status code an operator's request earns, with the runtime's own explanation."""
    if isinstance(exc, UnknownTaskError):
        return PanelError(404, str(exc), field="id")
    if isinstance(exc, InvalidTransition | DuplicateTaskError):
        field = "id" if isinstance(exc, DuplicateTaskError) else None
        return PanelError(409, str(exc), field=field)
    if isinstance(exc, StateFileError):
        name = shown_path(exc.path, workspace)
        problems = "; ".join(exc.problems)
        return PanelError(503, f"{name} cannot be used and was left as it is: {problems}",
                          field=name)
    return PanelError(500, str(exc))


def shown_path(path: Path, workspace: Workspace) -> str:
    try:
        return str(path.resolve().relative_to(workspace.root))
    except ValueError:
        return path.name


# --- reading state ----------------------------------------------------------------------


class FileCache(Generic[T]):
    """A parsed state file, parsed again only once the file was replaced or changed.

    State files are replaced atomically, so (inode, mtime, size) names a version; with
    10,000 tasks in queue.json this keeps a page view from validating them all again."""

    def __init__(self, path: Path, parse: Callable[[], T]):
        self.path = path
        self._parse = parse
        self._lock = threading.Lock()
        self._version: tuple[int, int, int] | None = None
        self._value: T | None = None

    def get(self) -> T:
        try:
            stat = os.stat(self.path)
            version: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            version = None
        with self._lock:
            if self._value is None or version != self._version:
                self._value, self._version = self._parse(), version
            return self._value


class ApiProbe:
    """Whether the execution API answers /status, asked at most once a second whoever asks."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, str, dict[str, Any]] | None = None
        self._session = requests.Session()
        self._session.trust_env = False  # a proxy must never see loopback traffic

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
        if not is_loopback_url(endpoint):
            return answer | {"error": "not a loopback URL; the panel only asks 127.0.0.1"}
        try:
            reply = self._session.get(f"{endpoint.rstrip('/')}/status",
                                      timeout=API_PROBE_TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            return answer | {"error": f"no answer ({type(exc).__name__})"}
        body = _json_or_empty(reply)
        error = None if reply.ok else str(body.get("error") or f"HTTP {reply.status_code}")
        return answer | {"reachable": True, "ok": reply.ok, "error": error,
                         "provider": body.get("provider")}


def _json_or_empty(reply: requests.Response) -> dict[str, Any]:
    try:
        body = reply.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class SpendSeries:
    """LLM spend per minute from the API audit trail, each line folded in once."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        self.minutes: dict[int, list[float]] = {}
        self.total = 0.0
        self.events: Counter[str] = Counter()

    def add(self, record: dict[str, Any]) -> None:
        moment = parse_time(record.get("timestamp"))
        if moment is None:
            return
        cost = record.get("cost")
        cost = float(cost) if isinstance(cost, int | float) and math.isfinite(cost) else 0.0
        bucket = self.minutes.setdefault(int(moment.timestamp()) // 60, [0.0, 0])
        bucket[0] += cost
        bucket[1] += 1
        self.total += cost
        self.events[str(record.get("event"))] += 1


def bucket_spend(minutes: dict[int, list[float]], width: int, points: int) -> list[dict[str, Any]]:
    """The latest `points` buckets of `width` seconds that saw any call, oldest first."""
    buckets: dict[int, list[float]] = {}
    for minute, (cost, calls) in minutes.items():
        start = minute * 60 // width * width
        total = buckets.setdefault(start, [0.0, 0])
        total[0] += cost
        total[1] += calls
    latest = sorted(buckets)[-points:]
    return [
        {"start": datetime.fromtimestamp(start, UTC).isoformat(),
         "cost": round(buckets[start][0], 6), "calls": int(buckets[start][1])}
        for start in latest
    ]


class SafetyBlocks:
    """The latest refusals of the safety gateway, from its audit trail."""

    def __init__(self, kept: int = LIST_LIMIT):
        self._kept = kept
        self.forget()

    def forget(self) -> None:
        self.checked = 0
        self.blocked = 0
        self.latest: deque[dict[str, Any]] = deque(maxlen=self._kept)

    def add(self, record: dict[str, Any]) -> None:
        self.checked += 1
        if record.get("passed") is not False:
            return
        self.blocked += 1
        self.latest.append({
            "timestamp": record.get("timestamp"), "task_id": record.get("task_id"),
            "reason": record.get("blocked_reason"), "rules": record.get("rules") or [],
        })


class Panel:
    """Everything the handlers read and change, built once per app."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.workspace = Workspace(settings.workspace)
        self.workspace.ensure_layout()
        self.store = QueueStore.for_settings(self.workspace, settings)
        self.events = EventLog(self.workspace, OPERATOR_ID)
        self.csrf_token = secrets.token_urlsafe(32)
        self.stop = threading.Event()
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.probe = ApiProbe()
        self.budget = BudgetLedger(self.workspace, settings.budget_limit)
        self.index = LogIndex(self.workspace.log_path)
        self.spend = SpendSeries()
        self.safety = SafetyBlocks()
        self.spend_log = JsonlFold(self.workspace.api_audit_path, self.spend.add, self.spend.forget)
        self.safety_log = JsonlFold(self.workspace.safety_audit_path, self.safety.add,
                                    self.safety.forget)
        ws = self.workspace
        self.queue = FileCache(ws.queue_path, self.store.load)
        self.gate = FileCache(ws.quality_gate_path, lambda: quality_gate.load(ws))
        self.grants = FileCache(ws.reward_ledger_path, lambda: parse_state(
            RewardLedger, read_json(ws.reward_ledger_path, dict), ws.reward_ledger_path))
        self.balances = FileCache(ws.balances_path, lambda: parse_state(
            Balances, read_json(ws.balances_path, dict), ws.balances_path))
        self._token: str | None = None

    @property
    def followers(self) -> tuple[LogIndex, JsonlFold, JsonlFold]:
        return self.index, self.spend_log, self.safety_log

    def follow(self) -> None:
        """Keep every log indexed until `stop`: the background half of incremental reading.

        Each step holds a follower's lock for one block only, so requests interleave
        with the first indexing of a large log instead of waiting for all of it."""
        while not self.stop.is_set():
            for follower in self.followers:
                while follower.refresh(READ_BLOCK_BYTES) and not self.stop.is_set():
                    pass
            self.stop.wait(INDEX_INTERVAL_SECONDS)

    def close(self) -> None:
        self.stop.set()
        for follower in self.followers:
            follower.close()

    def secret_values(self) -> list[str]:
        """The settings' secrets and the execution token, in raw and JSON-escaped form."""
        if self._token is None:
            try:
                self._token = self.workspace.token_path.read_text(encoding="utf-8").strip()
            except OSError:
                self._token = None
        values = [*self.settings.secret_values(), *([self._token] if self._token else [])]
        return sorted({form for v in values for form in (v, json.dumps(v)[1:-1]) if form},
                      key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for value in self.secret_values():
            text = text.replace(value, REDACTED)
        return text

    def load_queue(self) -> QueueDocument:
        try:
            return self.queue.get()
        except StateFileError as exc:
            raise refusal(exc, self.workspace) from None


# --- pure views -------------------------------------------------------------------------


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def status_tones() -> dict[str, str]:
    """How the page colours each status, derived from the contract's own groupings."""
    tones = {status.value: "neutral" for status in Status}
    groups = [
        ("waiting", CLAIMABLE_STATUSES),
        ("active", {Status.IN_PROGRESS, Status.PENDING_REVIEW, Status.SUBTASK_STARTED}),
        ("good", APPROVED_STATUSES | {Status.COMPLETED, Status.SUBTASK_COMPLETED}),
        ("warn", {Status.LEASE_EXPIRED, Status.REQUEUE}),
        ("bad", FAILED_STATUSES | {Status.SUBTASK_FAILED}),
    ]
    for tone, statuses in groups:
        tones.update({status.value: tone for status in statuses})
    return tones


def counts_by_status(tasks: list[Task]) -> dict[str, int]:
    counts = Counter(task.status.value for task in tasks)
    return {status.value: counts[status.value] for status in Status if counts[status.value]}


def archived_counts(doc: QueueDocument) -> dict[str, int]:
    """Finished tasks moved out of `tasks` to the archive; only their ids remain."""
    present = {task.id for task in doc.tasks}
    return {"completed": len(set(doc.completed) - present),
            "failed": len(set(doc.failed) - present)}


def actions_for(task: Task) -> list[str]:
    """What the operator may do to the task now; mirrors the store's own transition rules."""
    actions = []
    if task.status in FAILED_STATUSES or is_parked(task):
        actions.append("requeue")
    if task.status in CLAIMABLE_STATUSES:
        actions.append("cancel")
    return actions


def headline(task: Task, limit: int = 120) -> str:
    text = task.prompt or task.command or ""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first if len(first) <= limit else first[: limit - 1] + "…"


def task_row(task: Task, info: TaskInfo | None) -> dict[str, Any]:
    model = task.model or (task.execution.model if task.execution else None)
    return {
        "id": task.id, "status": task.status.value, "mode": task.effective_mode.value,
        "model": model, "attempts": task.attempts, "depends_on": task.depends_on,
        "created_at": task.created_at, "updated_at": task.updated_at,
        "last_event": info.last_timestamp if info else None,
        "events": info.events if info else 0, "error": task.last_error,
        "headline": headline(task), "actions": actions_for(task),
    }


def matches(task: Task, needle: str) -> bool:
    fields = (task.id, task.prompt, task.command, task.last_error, task.model)
    return any(needle in value.casefold() for value in fields if value)


def select_tasks(tasks: list[Task], status: str | None, query: str) -> list[Task]:
    """Tasks with `status` whose id or text contains `query`, newest first."""
    needle = query.strip().casefold()
    chosen = [
        (position, task) for position, task in enumerate(tasks)
        if (not status or task.status == status) and (not needle or matches(task, needle))
    ]
    chosen.sort(key=lambda pair: (pair[1].created_at or "", pair[0]), reverse=True)
    return [task for _, task in chosen]


def page_of(items: list[T], page: int, per_page: int) -> tuple[list[T], int]:
    pages = max(1, math.ceil(len(items) / per_page))
    start = (min(page, pages) - 1) * per_page
    return items[start : start + per_page], pages


def latest_field(name: str, task: Task | None, timeline: list[IndexedEvent]) -> Any:
    """The task's recorded execution has the last word; else the newest event that says."""
    if task is not None and task.execution is not None:
        value = getattr(task.execution, name, None)
        if value:
            return value
    return next((e.event[name] for e in reversed(timeline) if e.event.get(name)), None)


def task_links(doc: QueueDocument, task_id: str, task: Task | None,
               timeline: list[IndexedEvent]) -> dict[str, Any]:
    planned = latest_field("phase4_subtasks", None, timeline) or []
    children = [t.id for t in doc.tasks if t.phase4_parent_task == task_id]
    return {
        "parent": task.phase4_parent_task if task else None,
        "subtasks": list(dict.fromkeys([*planned, *children])),
        "depends_on": task.depends_on if task else [],
        "dependents": [t.id for t in doc.tasks if task_id in t.depends_on],
    }


def worker_presence(
    leased: dict[str, str], last_seen: dict[str, str | None], now: datetime, window: float
) -> list[dict[str, Any]]:
    """Workers holding a live lease, and those that wrote an event within `window` seconds."""
    workers = {
        worker: {"worker_id": worker, "task_id": task_id, "lease": True,
                 "last_seen": last_seen.get(worker)}
        for worker, task_id in leased.items()
    }
    for worker, seen in last_seen.items():
        moment = parse_time(seen)
        if worker in workers or worker == OPERATOR_ID or moment is None:
            continue
        if (now - moment).total_seconds() <= window:
            workers[worker] = {"worker_id": worker, "task_id": None, "lease": False,
                               "last_seen": seen}
    return sorted(workers.values(), key=lambda w: w["worker_id"])


def event_item(item: IndexedEvent) -> dict[str, Any]:
    return {"cursor": item.cursor, "event": item.event}


def page_body(page: EventPage) -> dict[str, Any]:
    return {"events": [event_item(e) for e in page.events], "cursor": page.cursor,
            "epoch": page.epoch, "reset": page.reset, "more": page.more}


def parse_cursor(token: str | None) -> tuple[int | None, str | None]:
    """`epoch:offset` (or a bare offset) from Last-Event-ID; anything else starts over."""
    if not token:
        return None, None
    epoch, _, offset = token.rpartition(":")
    try:
        return int(offset), epoch or None
    except ValueError:
        return -1, None


def sse(data: dict[str, Any], *, event_id: str, kind: str | None = None) -> str:
    head = f"event: {kind}\n" if kind else ""
    return f"{head}id: {event_id}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


# --- request helpers --------------------------------------------------------------------


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PanelError(400, f"{name} must be an integer", field=name) from None
    if not low <= value <= high:
        raise PanelError(400, f"{name} must be between {low} and {high}", field=name)
    return value


def parse_body(model: type[M]) -> M:
    raw = request.get_json(silent=True)
    if raw is None and not request.get_data():
        raw = {}
    if not isinstance(raw, dict):
        raise PanelError(400, "the request body must be a JSON object", field="body")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise PanelError(400, f"invalid field {field!r}: {first['msg']}", field=field) from None


def checked_id(task_id: str) -> str:
    if not is_valid_task_id(task_id):
        raise PanelError(400, "task ids match [A-Za-z0-9._-]{1,128}", field="id")
    return task_id


def allowed_hosts(port: int) -> set[str]:
    return {f"127.0.0.1:{port}", f"localhost:{port}"}


def served_port(app: Flask, settings: Settings) -> int:
    """The bound port once serving (`--port 0` picks one); the configured one before that."""
    server_url = app.config.get("SERVER_URL")
    return int(server_url.rsplit(":", 1)[1]) if server_url else settings.panel_port


# --- the app ----------------------------------------------------------------------------


def create_app(settings: Settings) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    panel = Panel(settings)
    app.extensions["panel"] = panel
    _install_guards(app, panel)
    _install_error_handlers(app, panel)
    _register_page(app, panel)
    _register_reads(app, panel)
    _register_actions(app, panel)
    _register_stream(app, panel)
    return app


def _install_guards(app: Flask, panel: Panel) -> None:
    @app.before_request
    def only_our_host_and_page() -> None:
        port = served_port(app, panel.settings)
        hosts = allowed_hosts(port)
        if request.host.lower() not in hosts:
            raise PanelError(403, f"unexpected Host header {request.host!r}: the panel answers "
                             f"only to 127.0.0.1:{port} or localhost:{port}")
        if request.method not in UNSAFE_METHODS or request.path.startswith("/api/spawner/"):
            return
        origin = request.headers.get("Origin")
        if origin is not None and origin not in {f"http://{host}" for host in hosts}:
            raise PanelError(403, f"foreign Origin {origin!r} refused")
        supplied = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(supplied.encode(), panel.csrf_token.encode()):
            raise PanelError(403, f"missing or invalid CSRF token (header {CSRF_HEADER})")

    @app.after_request
    def harden(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        if request.path.startswith("/api/") or request.path == "/":
            response.headers["Cache-Control"] = "no-store"
        if not response.is_streamed and not response.direct_passthrough:
            body = response.get_data(as_text=True)
            scrubbed = panel.scrub(body)
            if scrubbed != body:
                response.set_data(scrubbed)
        return response


def _install_error_handlers(app: Flask, panel: Panel) -> None:
    def answer(status: int, body: ErrorBody) -> Response:
        response = jsonify(body.model_dump(mode="json", exclude_none=True))
        response.status_code = status
        return response

    @app.errorhandler(PanelError)
    def panel_error(exc: PanelError) -> Response:
        return answer(exc.status, exc.body)

    @app.errorhandler(SwarmError)
    def swarm_error(exc: SwarmError) -> Response:
        error = refusal(exc, panel.workspace)
        return answer(error.status, error.body)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return answer(exc.code or 500, ErrorBody(error=exc.description or exc.name))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in %s", request.path)
        return answer(500, ErrorBody(error=f"internal error: {type(exc).__name__}"))


def _register_page(app: Flask, panel: Panel) -> None:
    @app.get("/")
    def index() -> str:
        return render_template(
            "index.html", csrf_token=panel.csrf_token, tones=json.dumps(status_tones()),
            statuses=[s.value for s in Status], modes=[m.value for m in Mode],
            gate_statuses=[QualityGateStatus.NEEDS_QA.value, QualityGateStatus.REJECTED.value],
            spend_buckets=list(SPEND_BUCKETS),
        )

    @app.route("/api/spawner/", defaults={"_rest": ""},
               methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    @app.route("/api/spawner/<path:_rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    def spawner(_rest: str) -> Response:
        raise PanelError(410, GOLDEN_PATH_ONLY)


def _register_reads(app: Flask, panel: Panel) -> None:
    @app.get("/api/summary")
    def summary() -> Response:
        panel.index.refresh(REQUEST_INDEX_BYTES)
        return jsonify(summary_of(panel, utc_clock()))

    @app.get("/api/tasks")
    def tasks() -> Response:
        status = request.args.get("status") or None
        if status is not None and status not in {s.value for s in Status}:
            raise PanelError(400, f"unknown status {status!r}", field="status")
        page = int_arg("page", 1, 1, 1_000_000)
        per_page = int_arg("per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
        panel.index.refresh(REQUEST_INDEX_BYTES)
        doc = panel.load_queue()
        chosen = select_tasks(doc.tasks, status, request.args.get("q", "")[:200])
        shown, pages = page_of(chosen, page, per_page)
        return jsonify({
            "tasks": [task_row(t, panel.index.task(t.id)) for t in shown],
            "total": len(chosen), "page": min(page, pages), "pages": pages,
            "per_page": per_page, "counts": counts_by_status(doc.tasks),
        })

    @app.get("/api/tasks/<task_id>")
    def task_detail(task_id: str) -> Response:
        panel.index.refresh(REQUEST_INDEX_BYTES)
        return jsonify(detail_of(panel, checked_id(task_id)))

    @app.get("/api/events")
    def events() -> Response:
        limit = int_arg("limit", DEFAULT_BACKLOG, 1, MAX_EVENTS_PER_PAGE)
        wait = int_arg("wait", 0, 0, int(LONG_POLL_MAX_SECONDS))
        after = request.args.get("after")
        cursor = None if after in (None, "") else int_arg("after", 0, -1, 2**62)
        return jsonify(page_body(long_poll(panel, cursor, request.args.get("epoch"), limit, wait)))

    @app.get("/api/quality-gate")
    def gate() -> Response:
        return jsonify(gate_of(panel, request.args.get("status") or None))

    @app.get("/api/safety")
    def safety() -> Response:
        panel.safety_log.refresh(REQUEST_INDEX_BYTES)
        return jsonify(safety_of(panel))

    @app.get("/api/rewards")
    def rewards() -> Response:
        return jsonify(rewards_of(panel))

    @app.get("/api/spend")
    def spend() -> Response:
        bucket = request.args.get("bucket") or "minute"
        if bucket not in SPEND_BUCKETS:
            raise PanelError(400, f"bucket must be one of {', '.join(SPEND_BUCKETS)}",
                             field="bucket")
        panel.spend_log.refresh(REQUEST_INDEX_BYTES)
        return jsonify(spend_of(panel, bucket))


def utc_clock() -> datetime:
    return datetime.now(UTC)


def _register_actions(app: Flask, panel: Panel) -> None:
    @app.post("/api/tasks")
    def add_task() -> tuple[Response, int]:
        record = parse_body(AddTaskBody).record()
        task = panel.store.add(record)
        return jsonify(acted(panel, task, "add")), 201

    @app.post("/api/tasks/<task_id>/requeue")
    def requeue(task_id: str) -> Response:
        return jsonify(acted(panel, panel.store.requeue(checked_id(task_id)), "requeue"))

    @app.post("/api/tasks/<task_id>/cancel")
    def cancel(task_id: str) -> Response:
        return jsonify(acted(panel, panel.store.cancel(checked_id(task_id)), "cancel"))

    @app.post("/api/tasks/requeue-failed")
    def requeue_failed() -> Response:
        tasks = panel.store.requeue_failed()
        results = [acted(panel, task, "requeue_failed") for task in tasks]
        return jsonify({"requeued": [r["task"]["id"] for r in results],
                        "event_logged": all(r["event_logged"] for r in results)})

    @app.post("/api/pause")
    def pause() -> Response:
        body = parse_body(PauseBody)
        state = set_pause(panel.workspace, True, by=OPERATOR_ID, reason=body.reason)
        log.warning("workers paused from the panel%s", f": {body.reason}" if body.reason else "")
        return jsonify(state.model_dump(mode="json"))

    @app.post("/api/resume")
    def resume() -> Response:
        parse_body(PauseBody)
        state = set_pause(panel.workspace, False, by=OPERATOR_ID)
        log.info("workers resumed from the panel")
        return jsonify(state.model_dump(mode="json"))


def acted(panel: Panel, task: Task, action: str) -> dict[str, Any]:
    """Log the operator's action as the task's event, so the log tells the whole story.

    The queue has already changed; a log that cannot be written is reported, not undone."""
    try:
        panel.events.emit(task.id, task.status, operator_action=action, errors=task.last_error)
        logged = True
    except OSError as exc:
        log.error("operator action %s on %s not logged: %s", action, task.id, exc)
        logged = False
    return {"task": task_row(task, panel.index.task(task.id)), "event_logged": logged}


def _register_stream(app: Flask, panel: Panel) -> None:
    @app.get("/api/stream")
    def stream() -> Response:
        backlog = int_arg("backlog", DEFAULT_BACKLOG, 0, MAX_EVENTS_PER_PAGE)
        cursor, epoch = parse_cursor(request.headers.get("Last-Event-ID"))
        if not panel.streams.acquire(blocking=False):
            raise PanelError(503, f"{MAX_STREAMS} live streams are open already; close a tab "
                             "or use /api/events")
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                panel.streams.release()

        response = Response(event_stream(panel, cursor, epoch, backlog),
                            mimetype="text/event-stream")
        response.headers["X-Accel-Buffering"] = "no"
        response.call_on_close(release)
        return response


def event_stream(
    panel: Panel, cursor: int | None, epoch: str | None, backlog: int,
    lifetime: float = STREAM_LIFETIME_SECONDS,
) -> Iterator[str]:
    """Server-sent events: the backlog (or what followed Last-Event-ID), then each new event.

    The stream ends after `lifetime` seconds or when the panel stops, so no thread is held
    forever; the browser reconnects by itself, sending the id of the last event it got."""
    yield f"retry: {STREAM_RETRY_MS}\n\n"
    panel.index.refresh(REQUEST_INDEX_BYTES)
    page = panel.index.backlog(backlog) if cursor is None else \
        panel.index.events_after(cursor, MAX_EVENTS_PER_PAGE, epoch)
    deadline = time.monotonic() + lifetime
    quiet_since = time.monotonic()
    while True:
        chunk = "".join(sse_page(page))
        if chunk:
            quiet_since = time.monotonic()
            yield panel.scrub(chunk)
        elif time.monotonic() - quiet_since > STREAM_KEEPALIVE_SECONDS:
            quiet_since = time.monotonic()
            yield ": keepalive\n\n"
        if not page.more and (panel.stop.wait(STREAM_POLL_SECONDS) or time.monotonic() > deadline):
            return
        panel.index.refresh(REQUEST_INDEX_BYTES)
        page = panel.index.events_after(page.cursor, MAX_EVENTS_PER_PAGE, page.epoch)


def sse_page(page: EventPage) -> Iterator[str]:
    if page.reset:
        yield sse({"epoch": page.epoch}, event_id=f"{page.epoch}:{page.cursor}", kind="reset")
    for item in page.events:
        yield sse(event_item(item), event_id=f"{page.epoch}:{item.cursor}")


def long_poll(panel: Panel, cursor: int | None, epoch: str | None, limit: int,
              wait: int) -> EventPage:
    """Events after `cursor` (the backlog without one), waiting up to `wait` s for the first."""
    deadline = time.monotonic() + wait
    while True:
        panel.index.refresh(REQUEST_INDEX_BYTES)
        if cursor is None:
            return panel.index.backlog(limit)
        page = panel.index.events_after(cursor, limit, epoch)
        if page.events or page.reset or time.monotonic() >= deadline:
            return page
        if panel.stop.wait(STREAM_POLL_SECONDS):
            return page


# --- the views, read from the workspace ------------------------------------------------


def summary_of(panel: Panel, now: datetime) -> dict[str, Any]:
    queue: dict[str, Any]
    leased: dict[str, str] = {}
    window = max(WORKER_SEEN_WINDOW_SECONDS, 3 * panel.settings.lease_seconds)
    endpoint = None
    try:
        doc = panel.load_queue()
    except PanelError as exc:
        queue = {"error": exc.body.error}
    else:
        endpoint = doc.api_endpoint
        queue = {"error": None, "by_status": counts_by_status(doc.tasks), "total": len(doc.tasks),
                 "archived": archived_counts(doc)}
        moment = now.timestamp()
        leased = {t.lease.worker_id: t.id for t in doc.tasks if lease_is_live(t.lease, moment)}
    return {
        "api": panel.probe.check(endpoint) if endpoint else {"reachable": False,
                                                              "error": "queue.json unreadable"},
        "workers": worker_presence(leased, panel.index.workers_last_seen(), now, window),
        "pause": pause_of(panel),
        "budget": budget_of(panel),
        "queue": queue,
        "log": log_of(panel),
        "now": now.isoformat(),
    }


def pause_of(panel: Panel) -> dict[str, Any]:
    try:
        return read_pause(panel.workspace).model_dump(mode="json") | {"error": None}
    except StateFileError as exc:
        return {"paused": True, "error": f"{refusal(exc, panel.workspace).body.error}; "
                "workers claim nothing while it is unreadable"}


def budget_of(panel: Panel) -> dict[str, Any]:
    try:
        snapshot = panel.budget.snapshot()
    except StateFileError as exc:
        error = refusal(exc, panel.workspace).body.error
        return {"limit": panel.settings.budget_limit, "error": error}
    return {"limit": snapshot.limit, "spent": round(snapshot.spent, 6),
            "reserved": round(snapshot.reserved, 6), "remaining": round(snapshot.remaining, 6),
            "error": None}


def log_of(panel: Panel) -> dict[str, Any]:
    stats = panel.index.stats()
    return {
        "events": stats.events, "lines": stats.lines, "tasks": stats.tasks,
        "file_bytes": stats.file_bytes, "indexed_bytes": stats.indexed_bytes,
        "behind_bytes": panel.index.behind, "resets": stats.resets, "epoch": stats.epoch,
        "malformed_count": stats.malformed_count,
        "malformed": [vars(m) for m in stats.malformed[-5:]],
    }


def detail_of(panel: Panel, task_id: str) -> dict[str, Any]:
    doc = panel.load_queue()
    task = doc.find(task_id)
    timeline, total = panel.index.timeline(task_id, TIMELINE_LIMIT)
    archived = task is None and (task_id in doc.completed or task_id in doc.failed)
    if task is None and not archived and not total:
        raise PanelError(404, f"no task with id {task_id!r} in the queue or the log", field="id")
    return {
        "id": task_id, "task": task.to_record() if task else None, "archived": archived,
        "row": task_row(task, panel.index.task(task_id)) if task else None,
        "prompt": task.prompt if task else None, "command": task.command if task else None,
        "output": latest_field("output", task, timeline),
        "result": latest_field("result_summary", task, timeline),
        "errors": latest_field("errors", task, timeline),
        "links": task_links(doc, task_id, task, timeline),
        "timeline": [event_item(e) for e in timeline], "timeline_total": total,
    }


def gate_of(panel: Panel, status: str | None) -> dict[str, Any]:
    shown = {QualityGateStatus.NEEDS_QA.value, QualityGateStatus.REJECTED.value}
    if status is not None and status not in shown:
        raise PanelError(400, f"status must be one of {', '.join(sorted(shown))}", field="status")
    changes = list(panel.gate.get().changes.values())
    counts = Counter(change.status.value for change in changes)
    chosen = [c for c in changes if c.status.value == status] if status else changes
    chosen.sort(key=lambda c: c.updated_at, reverse=True)
    return {"counts": dict(counts), "total": len(chosen),
            "changes": [c.model_dump(mode="json") for c in chosen[:LIST_LIMIT]]}


def safety_of(panel: Panel) -> dict[str, Any]:
    with panel.safety_log.lock:
        blocks = list(reversed(panel.safety.latest))
        checked, blocked = panel.safety.checked, panel.safety.blocked
    try:
        tasks = [{"id": t.id, "error": t.last_error, "updated_at": t.updated_at}
                 for t in panel.load_queue().tasks if t.status == Status.SAFETY_BLOCKED]
    except PanelError:
        tasks = []
    return {"checked": checked, "blocked": blocked, "blocks": blocks, "tasks": tasks[-LIST_LIMIT:],
            "malformed_count": panel.safety_log.malformed.count}


def rewards_of(panel: Panel) -> dict[str, Any]:
    grants = sorted(panel.grants.get().grants.values(), key=lambda g: g.granted_at, reverse=True)
    identities = {
        name: balance.model_dump(mode="json", exclude={"history"}) | {"total": balance.total_tokens}
        for name, balance in panel.balances.get().identities.items()
    }
    return {"grants": [g.model_dump(mode="json") for g in grants[:LIST_LIMIT]],
            "total_grants": len(grants), "identities": identities}


def spend_of(panel: Panel, bucket: str) -> dict[str, Any]:
    with panel.spend_log.lock:
        points = bucket_spend(panel.spend.minutes, SPEND_BUCKETS[bucket], SPEND_POINTS)
        total, events = panel.spend.total, dict(panel.spend.events)
    return {"bucket": bucket, "points": points, "total_cost": round(total, 6), "events": events,
            "budget": budget_of(panel), "malformed_count": panel.spend_log.malformed.count}


# --- command line -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout,
        format="%(asctime)s %(levelname)s control_panel: %(message)s",
    )
    parser = argparse.ArgumentParser(prog="control_panel.py", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help="port on 127.0.0.1 (0 picks a free one)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(panel_port=args.port)
        app = create_app(settings)
    except SwarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    panel: Panel = app.extensions["panel"]
    threading.Thread(target=panel.follow, name="log-follower", daemon=True).start()
    try:
        return serve(app, settings.panel_port, "control panel")
    finally:
        panel.close()


if __name__ == "__main__":
    sys.exit(main())
