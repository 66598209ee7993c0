"""`POST /plan`: ask the model for improvement tasks over the sandbox and append them.

The offline model reads the file list back out of `planning_prompt`, so with no provider
configured the plan is deterministic: one task per Python file, largest first."""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from swarm_runtime.contract import Mode
from swarm_runtime.errors import SwarmError, TaskInputError
from swarm_runtime.llm.provider import PLANNER_REQUEST
from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.queue.new_task import known_ids, validate_new_task
from swarm_runtime.store.state_files import Workspace

MAX_LISTED_FILES = 120
PRIORITY_BUDGETS = {"high": (0.08, 0.15), "medium": (0.05, 0.10), "low": (0.02, 0.05)}
FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


class PlanError(SwarmError):
    """The model's reply could not be turned into tasks; nothing was queued."""


class PlannedTask(BaseModel):
    description: str = Field(min_length=3, max_length=2000)
    priority: Literal["high", "medium", "low"] = "medium"


PLAN_ADAPTER = TypeAdapter(list[PlannedTask])


def scan_python_files(root: Path) -> list[tuple[str, int]]:
    """(relative path, line count) of every .py file, skipping hidden and vendored folders."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = Path(folder, name)
                with path.open("rb") as handle:
                    found.append((str(path.relative_to(root)), sum(1 for _ in handle)))
    return found


def planning_prompt(files: list[tuple[str, int]]) -> str:
    listing = "\n".join(f"- {path}: {lines} lines" for path, lines in files[:MAX_LISTED_FILES])
    if len(files) > MAX_LISTED_FILES:
        listing += f"\n... and {len(files) - MAX_LISTED_FILES} more files"
    return (
        f"{PLANNER_REQUEST} ({len(files)} files).\n{listing or '(no Python files yet)'}\n\n"
        'Answer with only a JSON array of objects: {"description": str, '
        '"priority": "high" | "medium" | "low"}.'
    )


def parse_plan(text: str) -> list[PlannedTask]:
    """3 to 5 valid tasks from the reply (a fenced block is unwrapped), or PlanError."""
    fenced = FENCE.search(text)
    candidate = fenced.group(1) if fenced else text
    try:
        tasks = PLAN_ADAPTER.validate_python(json.loads(candidate))
    except json.JSONDecodeError as exc:
        raise PlanError(f"planner reply is not JSON ({exc.msg}): {text[:200]!r}") from None
    except ValidationError as exc:
        raise PlanError(f"planner reply is not a list of tasks: {exc.errors()[0]['msg']}") from None
    if not 3 <= len(tasks) <= 5:
        raise PlanError(f"planner proposed {len(tasks)} tasks; 3 to 5 are required")
    return tasks


def task_records(tasks: list[PlannedTask]) -> list[dict[str, Any]]:
    batch = secrets.token_hex(3)
    records = []
    for index, task in enumerate(tasks, start=1):
        low, high = PRIORITY_BUDGETS[task.priority]
        records.append(
            {
                "id": f"plan-{batch}-{index:02d}",
                "prompt": task.description,
                "mode": Mode.LLM.value,
                "intensity": task.priority,
                "min_budget": low,
                "max_budget": high,
            }
        )
    return records


def checked_records(records: list[dict[str, Any]], known: set[str]) -> list[dict[str, Any]]:
    """Each proposal passes the validator every new task passes, or nothing is queued."""
    try:
        return [validate_new_task(record, known).record for record in records]
    except TaskInputError as exc:
        raise PlanError(f"planner proposed a task that cannot be queued: {exc}") from None


def plan_tasks(wrapper: Any, store: TaskQueue, workspace: Workspace) -> dict[str, Any]:
    files = scan_python_files(workspace.sandbox)
    call = wrapper.call_llm(
        planning_prompt(files),
        model=None,
        max_tokens=1024,
        temperature=0.4,
        task_id=None,
        max_budget=None,
    )
    records = checked_records(task_records(parse_plan(call.text)), known_ids(store.load()))
    added = store.add_many(records)
    return {
        "status": "planned",
        "files_scanned": len(files),
        "total_lines": sum(lines for _, lines in files),
        "tasks_created": len(added),
        "task_ids": [task.id for task in added],
        "model": call.model,
    }
