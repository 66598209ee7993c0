"""What the operator can do from the page, through the same store and lock as the worker.

Each change to a task is then logged as an `OperatorEvent` by the panel's own worker
id, so the log tells the whole story; pausing writes the kill switch workers read
before each claim.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from swarm_runtime.contract import (
    PANEL_WORKER_ID,
    Mode,
    OperatorAction,
    OperatorEvent,
    Task,
    TaskId,
)
from swarm_runtime.panel.state import Panel
from swarm_runtime.panel.tasks import task_row
from swarm_runtime.store.pause import set_pause
from swarm_runtime.web.json_errors import HttpError

log = logging.getLogger("control_panel")


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
        """The task as the store takes it; a local task needs a command, an LLM one a prompt."""
        required = "command" if self.mode == Mode.LOCAL else "prompt"
        if getattr(self, required) is None:
            raise HttpError(400, f"a {self.mode.value} task needs a {required}", field=required)
        return self.model_dump(mode="json", exclude_none=True)


class PauseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)


def acted(panel: Panel, task: Task, action: OperatorAction) -> dict[str, Any]:
    """Log the operator's action as the task's event, so the log tells the whole story.

    The queue has already changed; a log that cannot be written is reported, not undone."""
    try:
        panel.events.emit(
            task.id, task.status, OperatorEvent, operator_action=action, errors=task.last_error
        )
        logged = True
    except OSError as exc:
        log.error("operator action %s on %s not logged: %s", action.value, task.id, exc)
        logged = False
    return {"task": task_row(task, panel.index.task(task.id)), "event_logged": logged}


def add_task(panel: Panel, body: AddTaskBody) -> dict[str, Any]:
    return acted(panel, panel.store.add(body.record()), OperatorAction.ADD)


def requeue(panel: Panel, task_id: str) -> dict[str, Any]:
    return acted(panel, panel.store.requeue(task_id), OperatorAction.REQUEUE)


def cancel(panel: Panel, task_id: str) -> dict[str, Any]:
    return acted(panel, panel.store.cancel(task_id), OperatorAction.CANCEL)


def requeue_failed(panel: Panel) -> dict[str, Any]:
    results = [
        acted(panel, task, OperatorAction.REQUEUE_FAILED) for task in panel.store.requeue_failed()
    ]
    return {
        "requeued": [r["task"]["id"] for r in results],
        "event_logged": all(r["event_logged"] for r in results),
    }


def pause(panel: Panel, body: PauseBody) -> dict[str, Any]:
    state = set_pause(panel.workspace, True, by=PANEL_WORKER_ID, reason=body.reason)
    log.warning("workers paused from the panel%s", f": {body.reason}" if body.reason else "")
    return state.model_dump(mode="json")


def resume(panel: Panel) -> dict[str, Any]:
    state = set_pause(panel.workspace, False, by=PANEL_WORKER_ID)
    log.info("workers resumed from the panel")
    return state.model_dump(mode="json")
