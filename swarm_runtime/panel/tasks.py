"""Read models of the task table and of one task's detail.

Plain functions of queue.json's tasks and the log index: newest first, filtered,
searched and paginated, cheap enough for 10,000 tasks on every page view.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, TypeVar

from swarm_runtime.contract import (
    APPROVED_STATUSES,
    CLAIMABLE_STATUSES,
    FAILED_STATUSES,
    QueueDocument,
    Status,
    Task,
)
from swarm_runtime.panel.log_tail import IndexedEvent, TaskInfo
from swarm_runtime.panel.state import Panel
from swarm_runtime.panel.stream import event_item
from swarm_runtime.queue.fleet import Placement, task_host
from swarm_runtime.queue.overview import counts_by_status, select_tasks, task_summary
from swarm_runtime.store.event_source import sets_last_status
from swarm_runtime.web.json_errors import HttpError

T = TypeVar("T")

TIMELINE_LIMIT = 500


class TaskQuery(NamedTuple):
    """The task list's filter: a status, text in the task, the host it runs on."""

    status: str | None = None
    query: str = ""
    host: str | None = None


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


def task_row(
    task: Task, info: TaskInfo | None, placement: Placement | None = None
) -> dict[str, Any]:
    """The summary every operator view shows, what the log index knows of the task, where
    it runs, and (given the live workers) why no worker will take it, if none will."""
    row = task_summary(task)
    row["last_event"] = info.last_timestamp if info else None
    row["events"] = info.events if info else 0
    row["host"] = task_host(task)
    row["waiting_for"] = placement.waiting_for(task) if placement else None
    return row


def page_of(items: list[T], page: int, per_page: int) -> tuple[list[T], int]:
    """One page of `items` (the last one when `page` is past it) and the number of pages."""
    pages = max(1, math.ceil(len(items) / per_page))
    start = (min(page, pages) - 1) * per_page
    return items[start : start + per_page], pages


def table_of(
    panel: Panel, wanted: TaskQuery, page: int, per_page: int, now: float
) -> dict[str, Any]:
    doc = panel.load_queue()
    placement = panel.placement(now)
    tasks = [t for t in doc.tasks if task_host(t) == wanted.host] if wanted.host else doc.tasks
    chosen = select_tasks(tasks, wanted.status, wanted.query)
    shown, pages = page_of(chosen, page, per_page)
    return {
        "tasks": [task_row(t, panel.index.task(t.id), placement) for t in shown],
        "total": len(chosen),
        "page": min(page, pages),
        "pages": pages,
        "per_page": per_page,
        "counts": counts_by_status(doc.tasks),
    }


def latest_field(name: str, task: Task | None, timeline: list[IndexedEvent]) -> Any:
    """The task's recorded execution has the last word; else the newest event that says."""
    if task is not None and task.execution is not None:
        value = getattr(task.execution, name, None)
        if value:
            return value
    said = (e.event for e in reversed(timeline) if sets_last_status(e.event.get("status", "")))
    return next((event[name] for event in said if event.get(name)), None)


def task_links(
    doc: QueueDocument, task_id: str, task: Task | None, timeline: list[IndexedEvent]
) -> dict[str, Any]:
    """Parent, subtasks (planned or already in the queue), dependencies and dependents."""
    planned = latest_field("phase4_subtasks", None, timeline) or []
    children = [t.id for t in doc.tasks if t.phase4_parent_task == task_id]
    return {
        "parent": task.phase4_parent_task if task else None,
        "subtasks": list(dict.fromkeys([*planned, *children])),
        "depends_on": task.depends_on if task else [],
        "dependents": [t.id for t in doc.tasks if task_id in t.depends_on],
    }


def executed_on(timeline: list[IndexedEvent]) -> str | None:
    """The host whose worker last started the task, as its events say."""
    started = (e.event for e in reversed(timeline) if e.event.get("status") == Status.IN_PROGRESS)
    return next((event["host"] for event in started if event.get("host")), None)


def detail_of(panel: Panel, task_id: str, now: float) -> dict[str, Any]:
    """A task in the queue, or one archived or known only from the log; else a 404."""
    doc = panel.load_queue()
    task = doc.find(task_id)
    timeline, total = panel.index.timeline(task_id, TIMELINE_LIMIT)
    archived = task is None and (task_id in doc.completed or task_id in doc.failed)
    if task is None and not archived and not total:
        raise HttpError(404, f"no task with id {task_id!r} in the queue or the log", field="id")
    row = task_row(task, panel.index.task(task_id), panel.placement(now)) if task else None
    return {
        "id": task_id,
        "task": task.to_record() if task else None,
        "archived": archived,
        "row": row,
        "host": row["host"] if row and row["host"] else executed_on(timeline),
        "waiting_for": row["waiting_for"] if row else None,
        "prompt": task.prompt if task else None,
        "command": task.command if task else None,
        "output": latest_field("output", task, timeline),
        "result": latest_field("result_summary", task, timeline),
        "errors": latest_field("errors", task, timeline),
        "links": task_links(doc, task_id, task, timeline),
        "timeline": [event_item(e) for e in timeline],
        "timeline_total": total,
    }


def fleet_view(panel: Panel, now: float) -> dict[str, Any]:
    """The Workers view: every host's pause, workers and tasks. With queue.json unreadable
    (its tile says so) the hosts still show, from their workers' presence alone."""
    try:
        tasks = panel.load_queue().tasks
    except HttpError:
        tasks = []
    return panel.placement(now).fleet(tasks, now).model_dump(mode="json")
