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
from swarm_runtime.queue.fleet import (
    Fleet,
    FleetHost,
    FleetWorker,
    read_placement,
)
from swarm_runtime.queue.operations import Operations
from swarm_runtime.queue.overview import alive_workers, live_leases, queue_counts
from swarm_runtime.settings import Settings
from swarm_runtime.store.documents import SharedDocument
from swarm_runtime.store.pause import PauseState
from swarm_runtime.store.state_files import Workspace
from swarm_runtime.web.loopback import direct_session

API_TIMEOUT_SECONDS = 1.0


def status_of(operations: Operations, settings: Settings, now: datetime) -> dict[str, Any]:
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
    at = now.timestamp()
    leased = live_leases(doc, at) if doc else {}
    placement = read_placement(
        operations.workspace, operations.database, pause_source(operations), at
    )
    fleet = placement.fleet(doc.tasks if doc else [], at)
    return {
        "api": api,
        "workers": alive_workers(placement.present, leased, {}),
        "pause": pause_view(placement.pause, placement.pause_error),
        "budget": budget_of(operations, settings),
        "queue": queue,
        "fleet": fleet.model_dump(mode="json"),
        "now": now.isoformat(),
    }


def pause_source(operations: Operations) -> Workspace | SharedDocument:
    return operations.pause_switch or operations.workspace


def pause_view(pause: PauseState | None, error: str | None) -> dict[str, Any]:
    if pause is None:
        return {"paused": True, "error": error}
    return pause.model_dump(mode="json") | {"error": None}


def fleet_report(operations: Operations, now: datetime) -> Fleet:
    """Every host's workers and tasks; a queue that cannot be read is the command's error."""
    tasks = operations.store.load().tasks
    at = now.timestamp()
    switch = pause_source(operations)
    return read_placement(operations.workspace, operations.database, switch, at).fleet(tasks, at)


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
    hosts = Fleet.model_validate(status["fleet"]).hosts
    parts[3:3] = [("host", host_text(host)) for host in hosts]
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
        hosts = [name for name, entry in (pause.get("hosts") or {}).items() if entry["paused"]]
        return "running" + (f" (paused: {', '.join(map(clean, hosts))})" if hosts else "")
    reason = f": {clean(pause['reason'])}" if pause.get("reason") else ""
    return f"PAUSED by {clean(pause.get('by'))} since {moment(pause.get('since'))}{reason}"


def host_text(host: FleetHost) -> str:
    """One host on one line: paused or not, its workers and the tasks it holds or awaits."""
    workers = ", ".join(worker_text(w) for w in host.workers) or "none alive"
    return (
        f"{clean(host.host)}: {host_state(host)}; workers: {workers}; running {host.running}, "
        f"pinned waiting {host.pinned_waiting}"
    )


def host_state(host: FleetHost) -> str:
    if host.pause is None:
        return "running"
    every = " (every host)" if host.pause_scope == "fleet" else ""
    return pause_text(host.pause.model_dump()) + every


def worker_text(worker: FleetWorker) -> str:
    doing = f"on {clean(worker.task_id)}" if worker.task_id else worker.state
    labels = f" [{', '.join(map(clean, worker.labels))}]" if worker.labels else ""
    return f"{clean(worker.worker_id)} ({doing}){labels}"


def fleet_lines(fleet: Fleet) -> list[str]:
    """The fleet's pause, then each host and, under it, each of its workers."""
    lines = [f"{'fleet':<10} {pause_text(pause_view(fleet.pause, fleet.pause_error))}"]
    for host in fleet.hosts:
        tasks = f"running {host.running}, pinned waiting {host.pinned_waiting}"
        lines.append(f"{clean(host.host):<10} {host_state(host)}; {tasks}")
        lines += [f"  {clean(w.worker_id):<8} {worker_line(w)}" for w in host.workers]
        lines += [] if host.workers else ["  no worker alive"]
    if not fleet.hosts:
        lines.append("no host seen: none has a live worker, a running or pinned task, or a pause")
    return lines


def worker_line(worker: FleetWorker) -> str:
    doing = f"busy on {clean(worker.task_id)}" if worker.task_id else worker.state
    labels = ", ".join(map(clean, worker.labels)) or "-"
    paused = ", paused" if worker.paused and worker.state != "paused" else ""
    return f"{doing}{paused} · pid {worker.pid} · labels {labels}"


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
