"""What an operator can do to the runtime, from the panel's buttons or the command line.

One implementation behind both, so that they take the same input, go through the same
store and lock as the workers, and leave the same trace: each change to a task is then
logged as an `OperatorEvent` by the front end's own worker id, so the log tells the
whole story. Pausing writes the kill switch workers read before each claim.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from swarm_runtime.contract import OperatorAction, OperatorEvent, Task
from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.queue.new_task import known_ids, validate_new_task
from swarm_runtime.store.documents import SharedDocuments
from swarm_runtime.store.events import EventLog
from swarm_runtime.store.pause import PauseState, set_pause
from swarm_runtime.store.state_files import Workspace

log = logging.getLogger("swarm.operator")


class Acted(NamedTuple):
    """A task as the action left it; `logged` is False when its event could not be written."""

    task: Task
    logged: bool


class Added(NamedTuple):
    acted: Acted
    warnings: list[str]


class Operations:
    def __init__(
        self,
        workspace: Workspace,
        store: TaskQueue,
        operator_id: str,
        documents: SharedDocuments | None = None,
    ):
        """`documents` hold the pause switch and the budget: the workspace's unless given."""
        self.workspace = workspace
        self.store = store
        self.operator_id = operator_id
        self.database = documents.database if documents else None
        self.pause_switch = documents.pause if documents else None
        self.budget_document = documents.budget if documents else None
        self.events = EventLog(workspace, operator_id, documents.database if documents else None)

    def add(self, record: dict[str, Any]) -> Added:
        """Validate as every front end does, then append; a duplicate id is refused."""
        checked = validate_new_task(record, known_ids(self.store.load()))
        task = self.store.add(checked.record)
        return Added(self.logged(task, OperatorAction.ADD), checked.warnings)

    def requeue(self, task_id: str) -> Acted:
        return self.logged(self.store.requeue(task_id), OperatorAction.REQUEUE)

    def cancel(self, task_id: str) -> Acted:
        return self.logged(self.store.cancel(task_id), OperatorAction.CANCEL)

    def requeue_failed(self) -> list[Acted]:
        action = OperatorAction.REQUEUE_FAILED
        return [self.logged(task, action) for task in self.store.requeue_failed()]

    def pause(self, reason: str | None = None, host: str | None = None) -> PauseState:
        """The fleet's pause (`host` None) or one host's; the other hosts' stay as they are."""
        switch = self.pause_switch or self.workspace
        state = set_pause(switch, True, by=self.operator_id, reason=reason, host=host)
        why = f": {reason}" if reason else ""
        log.warning("%s paused by %s%s", paused_scope(host), self.operator_id, why)
        return state

    def resume(self, host: str | None = None) -> PauseState:
        switch = self.pause_switch or self.workspace
        state = set_pause(switch, False, by=self.operator_id, host=host)
        log.info("%s resumed by %s", paused_scope(host), self.operator_id)
        return state

    def logged(self, task: Task, action: OperatorAction) -> Acted:
        """Log the action as the task's event. The queue has already changed; a log that
        cannot be written is reported, not undone."""
        try:
            self.events.emit(
                task.id, task.status, OperatorEvent, operator_action=action, errors=task.last_error
            )
        except OSError as exc:
            log.error("operator action %s on %s not logged: %s", action.value, task.id, exc)
            return Acted(task, False)
        return Acted(task, True)


def paused_scope(host: str | None) -> str:
    return "workers on every host" if host is None else f"workers on host {host!r}"
