"""Read models of the queue that every operator view shares: counts by status, the
workers alive, a task's one-line summary and the task list's filter.

Plain functions of queue.json's tasks and the workers' presence files, cheap enough for
10,000 tasks, so the panel's page and the command line show the same numbers.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from swarm_runtime.contract import QueueDocument, Status, Task, WorkerPresence, allowed_actions
from swarm_runtime.errors import StateFileError, StoreUnavailable
from swarm_runtime.queue.endpoint import endpoint_and_source
from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.queue.store import lease_is_live
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace

HEADLINE_CHARS = 120


def counts_by_status(tasks: list[Task]) -> dict[str, int]:
    """Counts in the contract's order of statuses, leaving out those with none."""
    counts = Counter(task.status.value for task in tasks)
    return {status.value: counts[status.value] for status in Status if counts[status.value]}


def archived_counts(doc: QueueDocument) -> dict[str, int]:
    """Finished tasks moved out of `tasks` to the archive; only their ids remain."""
    present = {task.id for task in doc.tasks}
    return {
        Status.COMPLETED.value: len(set(doc.completed) - present),
        Status.FAILED.value: len(set(doc.failed) - present),
    }


def queue_counts(doc: QueueDocument) -> dict[str, Any]:
    return {
        "error": None,
        "by_status": counts_by_status(doc.tasks),
        "total": len(doc.tasks),
        "archived": archived_counts(doc),
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


def headline(task: Task, limit: int = HEADLINE_CHARS) -> str:
    text = task.prompt or task.command or ""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first if len(first) <= limit else first[: limit - 1] + "…"


def task_summary(task: Task) -> dict[str, Any]:
    """A task's row: what it is, where it stands, and the actions the store would accept."""
    model = task.model or (task.execution.model if task.execution else None)
    return {
        "id": task.id,
        "status": task.status.value,
        "mode": task.effective_mode.value,
        "model": model,
        "attempts": task.attempts,
        "depends_on": task.depends_on,
        "host": task.host,
        "worker_labels": task.worker_labels,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "error": task.last_error,
        "headline": headline(task),
        "actions": [action.value for action in allowed_actions(task)],
    }


def matches(task: Task, needle: str) -> bool:
    fields = (task.id, task.prompt, task.command, task.last_error, task.model)
    return any(needle in value.casefold() for value in fields if value)


def select_tasks(tasks: list[Task], status: str | None, query: str) -> list[Task]:
    """Tasks with `status` whose id or text contains `query`, newest first."""
    needle = query.strip().casefold()
    chosen = [
        (position, task)
        for position, task in enumerate(tasks)
        if (not status or task.status == status) and (not needle or matches(task, needle))
    ]
    chosen.sort(key=lambda pair: (pair[1].created_at or "", pair[0]), reverse=True)
    return [task for _, task in chosen]


def named_endpoint(settings: Settings, workspace: Workspace, queue: TaskQueue) -> str:
    """This host's API, for a process's start-up line; a queue that cannot be read yet
    is said so here and reported in full by whoever reads it next."""
    try:
        url, source = endpoint_and_source(settings, workspace, queue.load().api_endpoint)
        return f"{url} (from {source})"
    except (StateFileError, StoreUnavailable) as exc:
        return f"unknown for now ({exc})"
