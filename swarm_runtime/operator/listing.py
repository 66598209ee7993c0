"""`tasks` and `show`: the panel's task table and task detail, for a terminal.

The rows are the panel's own (`queue.overview.task_summary`), filtered by the same
search; a task's timeline is its events, oldest first, from the panel's event source
(the workspace's log, or every host's rows in the database).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from swarm_runtime.contract import QueueDocument, Task
from swarm_runtime.errors import UnknownTaskError
from swarm_runtime.operator.events import event_line
from swarm_runtime.operator.text import clean, listed, moment, short
from swarm_runtime.queue.overview import counts_by_status, select_tasks, task_summary
from swarm_runtime.store.event_source import EventSource

TIMELINE_LIMIT = 500
PROMPT_CHARS = 400


class TaskFilter(NamedTuple):
    status: str | None = None
    mode: str | None = None
    search: str = ""
    id_part: str = ""
    limit: int = 50


def task_list(doc: QueueDocument, wanted: TaskFilter) -> dict[str, Any]:
    """Newest first; `limit` 0 shows every task that matches."""
    chosen = [
        task
        for task in select_tasks(doc.tasks, wanted.status, wanted.search)
        if (not wanted.mode or task.effective_mode == wanted.mode) and wanted.id_part in task.id
    ]
    shown = chosen[: wanted.limit] if wanted.limit > 0 else chosen
    return {
        "tasks": [task_summary(task) for task in shown],
        "total": len(chosen),
        "shown": len(shown),
        "counts": counts_by_status(doc.tasks),
    }


def task_list_lines(listing: dict[str, Any]) -> list[str]:
    rows = [f"{'ID':<24} {'STATUS':<17} {'MODE':<5} {'TRIES':>5}  {'UPDATED':<19}  HEADLINE"]
    rows += [
        f"{clean(t['id']):<24} {t['status']:<17} {t['mode']:<5} {t['attempts']:>5}  "
        f"{moment(t['updated_at'] or t['created_at']):<19}  {short(t['headline'], 60)}"
        for t in listing["tasks"]
    ]
    if listing["shown"] < listing["total"]:
        rows.append(f"({listing['shown']} of {listing['total']} shown; --limit 0 shows all)")
    rows.append(f"in the queue: {listed(listing['counts'])}")
    return rows


def task_detail(doc: QueueDocument, events: EventSource, task_id: str) -> dict[str, Any]:
    """A task in the queue, or one archived or known only from the log; else UnknownTaskError."""
    task = doc.find(task_id)
    events.refresh()
    timeline, total = events.timeline(task_id, TIMELINE_LIMIT)
    archived = task is None and (task_id in doc.completed or task_id in doc.failed)
    if task is None and not archived and not total:
        raise UnknownTaskError(task_id)
    return {
        "id": task_id,
        "task": task.to_record() if task else None,
        "summary": task_summary(task) if task else None,
        "archived": archived,
        "dependents": [t.id for t in doc.tasks if task_id in t.depends_on],
        "timeline": [item.event for item in timeline],
        "timeline_total": total,
    }


def task_detail_lines(detail: dict[str, Any]) -> list[str]:
    task = Task.model_validate(detail["task"]) if detail["task"] else None
    lines = [f"{'task':<10} {clean(detail['id'])}"]
    if task is None:
        where = "archived" if detail["archived"] else "known only from the log"
        lines.append(f"{'status':<10} {where}")
    else:
        lines += task_field_lines(task, detail["summary"], detail["dependents"])
    total, shown = detail["timeline_total"], len(detail["timeline"])
    more = f" (the latest {shown} shown)" if shown < total else ""
    lines.append(f"{'events':<10} {total}{more}")
    lines += ["  " + event_line(event) for event in detail["timeline"]]
    return lines


def task_field_lines(task: Task, summary: dict[str, Any], dependents: list[str]) -> list[str]:
    fields = {
        "status": f"{task.status.value} (attempts {task.attempts})",
        "mode": task.effective_mode.value,
        "model": summary["model"],
        "budget": budget_range(task),
        "depends on": ", ".join(task.depends_on),
        "dependents": ", ".join(dependents),
        "created": moment(task.created_at),
        "updated": moment(task.updated_at),
        "prompt": task.prompt and short(task.prompt, PROMPT_CHARS),
        "command": task.command and short(task.command, PROMPT_CHARS),
        "error": task.last_error and short(task.last_error, PROMPT_CHARS),
        "actions": ", ".join(summary["actions"]) or "none in this state",
    }
    return [f"{name:<10} {clean(value)}" for name, value in fields.items() if value]


def budget_range(task: Task) -> str | None:
    if task.min_budget is None and task.max_budget is None:
        return None
    low = "-" if task.min_budget is None else f"${task.min_budget}"
    high = "-" if task.max_budget is None else f"${task.max_budget}"
    return f"{low} to {high}"
