"""What the worker, the API, the panel and the operator commands may do to the queue.

Two stores answer it: `queue.store.QueueStore` (queue.json in the workspace, the
default) and `queue.postgres.PostgresQueueStore` (one PostgreSQL database shared by
every host). Callers hold a `TaskQueue` and never learn which one it is.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from typing import Any, Protocol

from swarm_runtime.contract import ExecutionRecord, QueueDocument, Status, Task
from swarm_runtime.queue.leases import WorkerIdentity
from swarm_runtime.queue.transactions import ClaimOutcome
from swarm_runtime.queue.transition_events import Effect, EventNote


class TaskQueue(Protocol):
    # reading: never waits for a transaction

    def load(self) -> QueueDocument:
        """The whole queue as one committed state; the caller must treat it as read-only."""
        ...

    def version(self) -> Hashable:
        """Changes whenever the queue may have: a cheap test before `load`."""
        ...

    def wait_for_change(self, timeout: float, stop: threading.Event) -> None:
        """Return once the queue may have changed, `timeout` seconds passed, or `stop` is set."""
        ...

    # the worker's transactions: each commits its events with it, or nothing at all

    def claim(
        self, worker: WorkerIdentity, lease_seconds: float, ahead: bool = False
    ) -> ClaimOutcome:
        """Commits the claim's own events: reclaimed leases, failures, the attempt's start.
        `ahead`: as for `finish_and_claim`."""
        ...

    def heartbeat(self, task_id: str, worker: WorkerIdentity, lease_seconds: float) -> bool: ...

    def record_execution(
        self,
        task_id: str,
        worker: WorkerIdentity,
        execution: ExecutionRecord,
        *,
        events: Sequence[dict[str, Any]] = (),
        **fields: Any,
    ) -> Task: ...

    def finish(
        self,
        task_id: str,
        worker: WorkerIdentity,
        status: Status,
        *,
        events: Sequence[dict[str, Any]] = (),
        effects: Sequence[Effect] = (),
        **fields: Any,
    ) -> Task: ...

    def finish_and_claim(
        self,
        task_id: str,
        worker: WorkerIdentity,
        status: Status,
        lease_seconds: float,
        *,
        events: Sequence[dict[str, Any]] = (),
        effects: Sequence[Effect] = (),
        ahead: bool = False,
        **fields: Any,
    ) -> tuple[Task, ClaimOutcome]:
        """`finish`, then `claim` for the same worker, committed as one where the store can.
        `ahead`: the worker has a task in flight, and claims another only while the queue
        has work to spare for every other worker at work; a store may claim none."""
        ...

    def record_execution_and_claim(
        self,
        task_id: str,
        worker: WorkerIdentity,
        execution: ExecutionRecord,
        lease_seconds: float,
        *,
        events: Sequence[dict[str, Any]] = (),
        ahead: bool = False,
        **fields: Any,
    ) -> tuple[Task, ClaimOutcome]:
        """`record_execution`, then `claim` for the same worker, committed as one where
        the store can; `ahead` as for `finish_and_claim`."""
        ...

    def plan(
        self,
        parent_id: str,
        worker: WorkerIdentity,
        subtasks: list[dict[str, Any]],
        parent_updates: dict[str, Any],
        *,
        events: Sequence[dict[str, Any]] = (),
    ) -> list[Task]: ...

    def log_events(
        self, events: Sequence[dict[str, Any]], holder: WorkerIdentity | None = None
    ) -> bool:
        """Events that change no task; with `holder`, only while it holds their tasks."""
        ...

    # adding work, and the operator's actions

    def add(self, record: dict[str, Any], note: EventNote | None = None) -> Task: ...

    def add_many(
        self, records: list[dict[str, Any]], note: EventNote | None = None
    ) -> list[Task]: ...

    def set_api_endpoint(self, endpoint: str) -> None: ...

    def requeue(self, task_id: str, note: EventNote | None = None) -> Task: ...

    def cancel(self, task_id: str, note: EventNote | None = None) -> Task: ...

    def requeue_failed(self, note: EventNote | None = None) -> list[Task]: ...

    def import_queue(self, document: QueueDocument) -> int:
        """Fill an empty queue with a queue.json document as it stands."""
        ...

    # the end of a process

    def flush(self, leaving: WorkerIdentity | None = None) -> None:
        """Make every committed change visible to readers of the store's raw form; for a
        worker `leaving`, unless another worker at work will."""
        ...

    def close(self) -> None:
        """Release what the store holds open (connections); the store is not used after."""
        ...
