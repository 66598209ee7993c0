"""The health header: API reachable, workers alive, paused or running, budget, queue, log.

Each part is read on its own and reports its own error, so one unreadable state file
darkens one tile and never the whole header.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from swarm_runtime.contract import QUEUE_FILE, QueueDocument, Status, WorkerPresence
from swarm_runtime.errors import StateFileError
from swarm_runtime.panel.errors import refusal
from swarm_runtime.panel.state import Panel
from swarm_runtime.panel.tasks import counts_by_status
from swarm_runtime.queue.presence import live_workers
from swarm_runtime.queue.store import lease_is_live
from swarm_runtime.store.pause import read_pause
from swarm_runtime.web.json_errors import HttpError

MALFORMED_SHOWN = 5


def archived_counts(doc: QueueDocument) -> dict[str, int]:
    """Finished tasks moved out of `tasks` to the archive; only their ids remain."""
    present = {task.id for task in doc.tasks}
    return {
        Status.COMPLETED.value: len(set(doc.completed) - present),
        Status.FAILED.value: len(set(doc.failed) - present),
    }


def live_leases(doc: QueueDocument, now: float) -> dict[str, str]:
    """worker id -> the task it holds, for leases still renewed by a living holder."""
    return {t.lease.worker_id: t.id for t in doc.tasks if lease_is_live(t.lease, now)}


def alive_workers(
    present: list[WorkerPresence], leased: dict[str, str], last_logged: dict[str, str | None]
) -> list[dict[str, Any]]:
    """Workers that announce themselves (idle ones too) or hold a live lease.

    A lease alone is enough: its holder renews it, so it is alive even when its presence
    file is missing (written by an older worker, or removed by hand)."""
    workers = {
        p.worker_id: {
            "worker_id": p.worker_id,
            "task_id": leased.get(p.worker_id),
            "lease": p.worker_id in leased,
            "paused": p.paused,
            "last_seen": datetime.fromtimestamp(p.last_seen, UTC).isoformat(),
        }
        for p in present
    }
    for worker, task_id in leased.items():
        workers.setdefault(
            worker,
            {
                "worker_id": worker,
                "task_id": task_id,
                "lease": True,
                "paused": False,
                "last_seen": last_logged.get(worker),
            },
        )
    return sorted(workers.values(), key=lambda w: w["worker_id"])


def summary_of(panel: Panel, now: datetime) -> dict[str, Any]:
    moment = now.timestamp()
    leased: dict[str, str] = {}
    try:
        doc = panel.load_queue()
    except HttpError as exc:
        queue: dict[str, Any] = {"error": exc.body.error}
        api = {"reachable": False, "error": f"{QUEUE_FILE} unreadable"}
    else:
        queue = {
            "error": None,
            "by_status": counts_by_status(doc.tasks),
            "total": len(doc.tasks),
            "archived": archived_counts(doc),
        }
        api = panel.probe.check(doc.api_endpoint)
        leased = live_leases(doc, moment)
    present = live_workers(panel.workspace, moment)
    return {
        "api": api,
        "workers": alive_workers(present, leased, panel.index.workers_last_seen()),
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
        return {
            "paused": True,
            "error": f"{refusal(exc, panel.workspace).body.error}; "
            "workers claim nothing while it is unreadable",
        }


def budget_of(panel: Panel) -> dict[str, Any]:
    try:
        snapshot = panel.budget.snapshot()
    except StateFileError as exc:
        error = refusal(exc, panel.workspace).body.error
        return {"limit": panel.settings.budget_limit, "error": error}
    return {
        "limit": snapshot.limit,
        "spent": round(snapshot.spent, 6),
        "reserved": round(snapshot.reserved, 6),
        "remaining": round(snapshot.remaining, 6),
        "error": None,
    }


def log_of(panel: Panel) -> dict[str, Any]:
    stats = panel.index.stats()
    return {
        "events": stats.events,
        "lines": stats.lines,
        "tasks": stats.tasks,
        "file_bytes": stats.file_bytes,
        "indexed_bytes": stats.indexed_bytes,
        "behind_bytes": panel.index.behind,
        "resets": stats.resets,
        "epoch": stats.epoch,
        "malformed_count": stats.malformed_count,
        "malformed": [vars(m) for m in stats.malformed[-MALFORMED_SHOWN:]],
    }
