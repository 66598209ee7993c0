"""`status`: the panel's health header for a terminal, each part read on its own.

One unreadable state file is reported in its own line and never hides the others, as
on the panel; the numbers come from the same read models (queue.overview).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from swarm_runtime.contract import QUEUE_FILE, QueueDocument
from swarm_runtime.errors import StateFileError, StoreUnavailable
from swarm_runtime.llm.budget import BudgetLedger, budget_view
from swarm_runtime.operator.text import clean, dollars, listed, moment
from swarm_runtime.queue.api_probe import probe_api
from swarm_runtime.queue.endpoint import endpoint_for
from swarm_runtime.queue.operations import Operations
from swarm_runtime.queue.overview import alive_workers, live_leases, queue_counts
from swarm_runtime.queue.presence import live_workers
from swarm_runtime.settings import Settings
from swarm_runtime.store.pause import read_pause
from swarm_runtime.web.loopback import direct_session

API_TIMEOUT_SECONDS = 1.0


def status_of(operations: Operations, settings: Settings, now: datetime) -> dict[str, Any]:
    workspace = operations.workspace
    doc: QueueDocument | None = None
    try:
        doc = operations.store.load()
    except (StateFileError, StoreUnavailable) as exc:
        queue: dict[str, Any] = {"error": str(exc)}
        api: dict[str, Any] = {"reachable": False, "error": f"{QUEUE_FILE} unreadable"}
    else:
        queue = queue_counts(doc)
        endpoint = endpoint_for(settings, operations.workspace, doc.api_endpoint)
        api = probe_api(direct_session(), endpoint, API_TIMEOUT_SECONDS)
    leased = live_leases(doc, now.timestamp()) if doc else {}
    return {
        "api": api,
        "workers": alive_workers(
            live_workers(workspace, now.timestamp(), operations.database), leased, {}
        ),
        "pause": pause_of(operations),
        "budget": budget_of(operations, settings),
        "queue": queue,
        "now": now.isoformat(),
    }


def pause_of(operations: Operations) -> dict[str, Any]:
    try:
        switch = operations.pause_switch or operations.workspace
        return read_pause(switch).model_dump(mode="json") | {"error": None}
    except (StateFileError, StoreUnavailable) as exc:
        return {"paused": True, "error": f"{exc}; workers claim nothing while it is unreadable"}


def budget_of(operations: Operations, settings: Settings) -> dict[str, Any]:
    ledger = BudgetLedger(operations.workspace, settings.budget_limit, operations.budget_document)
    return budget_view(ledger)


def status_lines(status: dict[str, Any]) -> list[str]:
    parts = [
        ("api", api_text(status["api"])),
        ("workers", workers_text(status["workers"])),
        ("pause", pause_text(status["pause"])),
        ("budget", budget_text(status["budget"])),
        ("tasks", queue_text(status["queue"])),
    ]
    return [f"{name:<8} {text}" for name, text in parts]


def api_text(api: dict[str, Any]) -> str:
    where = clean(api.get("endpoint") or "")
    if not api.get("reachable"):
        return f"{where} unreachable: {clean(api.get('error'))}".strip()
    if not api.get("ok"):
        return f"{where} answers with an error: {clean(api.get('error'))}"
    return f"{where} reachable (provider {clean(api.get('provider') or '-')})"


def workers_text(workers: list[dict[str, Any]]) -> str:
    if not workers:
        return "none alive"
    shown = [
        f"{clean(w['worker_id'])} ({'on ' + clean(w['task_id']) if w['task_id'] else 'idle'}"
        f"{', paused' if w['paused'] else ''})"
        for w in workers
    ]
    return f"{len(workers)} alive: " + ", ".join(shown)


def pause_text(pause: dict[str, Any]) -> str:
    if pause.get("error"):
        return f"PAUSED: {clean(pause['error'])}"
    if not pause.get("paused"):
        return "running"
    reason = f": {clean(pause['reason'])}" if pause.get("reason") else ""
    return f"PAUSED by {clean(pause.get('by'))} since {moment(pause.get('since'))}{reason}"


def budget_text(budget: dict[str, Any]) -> str:
    if budget.get("error"):
        return f"unreadable: {clean(budget['error'])}"
    return (
        f"{dollars(budget['spent'])} spent, {dollars(budget['reserved'])} reserved, "
        f"{dollars(budget['remaining'])} left of {dollars(budget['limit'])}"
    )


def queue_text(queue: dict[str, Any]) -> str:
    if queue.get("error"):
        return f"unreadable: {clean(queue['error'])}"
    archived = queue["archived"]
    return (
        f"{queue['total']} in the queue ({listed(queue['by_status'])}); archived: "
        f"completed {archived['completed']}, failed {archived['failed']}"
    )
