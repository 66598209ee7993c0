"""What an operator can do to the runtime, from the panel's buttons or the command line.

One implementation behind both, so that they take the same input, go through the same
store and lock as the workers, and leave the same trace: each change to a task commits
an `OperatorEvent` by the front end's own worker id with it, so the log tells the whole
story. Pausing writes the kill switch workers read before each claim.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from swarm_runtime.contract import OperatorAction, OperatorEvent, Task
from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.queue.new_task import known_ids, validate_new_task
from swarm_runtime.queue.transition_events import EventNote
from swarm_runtime.store.documents import SharedDocuments
from swarm_runtime.store.events import EventLog
from swarm_runtime.store.pause import PauseState, set_pause
from swarm_runtime.store.state_files import Workspace

log = logging.getLogger("swarm.operator")


class Acted(NamedTuple):
    """A task as the action left it; `logged`: its event was committed with it."""

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
        self.events = EventLog(operator_id)

    def add(self, record: dict[str, Any]) -> Added:
        """Validate as every front end does, then append; a duplicate id is refused."""
        checked = validate_new_task(record, known_ids(self.store.load()))
        task = self.store.add(checked.record, self.note(OperatorAction.ADD))
        return Added(Acted(task, True), checked.warnings)

    def requeue(self, task_id: str) -> Acted:
        return Acted(self.store.requeue(task_id, self.note(OperatorAction.REQUEUE)), True)

    def cancel(self, task_id: str) -> Acted:
        return Acted(self.store.cancel(task_id, self.note(OperatorAction.CANCEL)), True)

    def requeue_failed(self) -> list[Acted]:
        note = self.note(OperatorAction.REQUEUE_FAILED)
        return [Acted(task, True) for task in self.store.requeue_failed(note)]

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

    def note(self, action: OperatorAction) -> EventNote:
        """The event an action commits with the task it changed, by this front end."""

        def event(task: Task) -> dict[str, Any]:
            return self.events.build(
                task.id, task.status, OperatorEvent, operator_action=action, errors=task.last_error
            )

        return event


def paused_scope(host: str | None) -> str:
    return "workers on every host" if host is None else f"workers on host {host!r}"
