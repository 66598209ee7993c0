"""What the operator can do from the page: the runtime's operations (queue.operations),
shared with the command line, answered in the panel's JSON.

Each change to a task is logged as an `OperatorEvent` by the panel's own worker id; a
new task is checked by the one validator every front end uses, and a refusal names
its field in a 400.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from swarm_runtime.contract import PANEL_WORKER_ID, Mode, PlaceName
from swarm_runtime.errors import TaskInputError
from swarm_runtime.panel.state import Panel
from swarm_runtime.panel.tasks import task_row
from swarm_runtime.queue.operations import Acted, Operations
from swarm_runtime.web.json_errors import HttpError


class AddTaskBody(BaseModel):
    """The add-task form: its shape only. What makes a task acceptable (text present and
    not too long, budgets in order, valid ids) is the shared validator's to say."""

    model_config = ConfigDict(extra="forbid")

    id: str
    mode: Mode = Mode.LLM
    prompt: str | None = None
    command: str | None = None
    depends_on: list[str] | str | None = None
    model: str | None = None
    min_budget: float | None = None
    max_budget: float | None = None
    host: str | None = None
    worker_labels: list[str] | str | None = None

    def record(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class PauseBody(BaseModel):
    """Pause or resume every host, or with `host` that host's workers only."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)
    host: PlaceName | None = None


def operations(panel: Panel) -> Operations:
    return Operations(panel.workspace, panel.store, PANEL_WORKER_ID, panel.documents)


def acted(panel: Panel, result: Acted) -> dict[str, Any]:
    task = result.task
    return {"task": task_row(task, panel.index.task(task.id)), "event_logged": result.logged}


def add_task(panel: Panel, body: AddTaskBody) -> dict[str, Any]:
    try:
        added = operations(panel).add(body.record())
    except TaskInputError as exc:
        raise HttpError(400, str(exc), field=exc.field) from None
    return acted(panel, added.acted) | {"warnings": added.warnings}


def requeue(panel: Panel, task_id: str) -> dict[str, Any]:
    return acted(panel, operations(panel).requeue(task_id))


def cancel(panel: Panel, task_id: str) -> dict[str, Any]:
    return acted(panel, operations(panel).cancel(task_id))


def requeue_failed(panel: Panel) -> dict[str, Any]:
    results = operations(panel).requeue_failed()
    return {
        "requeued": [result.task.id for result in results],
        "event_logged": all(result.logged for result in results),
    }


def pause(panel: Panel, body: PauseBody) -> dict[str, Any]:
    state = operations(panel).pause(body.reason, body.host)
    return state.model_dump(mode="json") | {"host": body.host}


def resume(panel: Panel, body: PauseBody) -> dict[str, Any]:
    return operations(panel).resume(body.host).model_dump(mode="json") | {"host": body.host}
