"""The queue's operations, written once for every store.

Each operation is a change to a `QueueState` (the decisions are `queue.rules`), run by
the store's `_transaction`: the file store runs it under queue.json's lock, the database
store under the queue's lock in one database transaction. A store provides only that,
and the time it reads while the lock is held; what an operation does to the queue is
the same whichever store runs it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from swarm_runtime.contract import (
    DEFAULT_API_ENDPOINT,
    ExecutionRecord,
    Lease,
    OperatorAction,
    QueueDocument,
    Status,
    Task,
    check_task_fields,
    iso,
    normalize_task,
    task_allows,
    utc_now,
)
from swarm_runtime.errors import (
    DuplicateTaskError,
    LeaseLostError,
    QueueNotEmpty,
    UnknownTaskError,
)
from swarm_runtime.queue.leases import WorkerIdentity, lease_is_live, owned_by
from swarm_runtime.queue.rules import (
    Propagated,
    Reclaim,
    awaits_review,
    change_status,
    is_drained,
    next_runnable,
    operate,
    propagate_failures,
    reclaim_dead_leases,
    record_outcome,
    spare_task,
)
from swarm_runtime.queue.state import QueueState
from swarm_runtime.queue.transition_events import Effect, EventNote, claim_events

R = TypeVar("R")
Change = Callable[[QueueState, float], R]


@dataclass
class ClaimOutcome:
    """What one claim did: the task won (or None), plus what it cleaned up on the way."""

    task: Task | None = None
    reclaimed: list[Reclaim] = field(default_factory=list)
    propagated: list[Propagated] = field(default_factory=list)
    drained: bool = False
    api_endpoint: str = DEFAULT_API_ENDPOINT
    # When the attempt began, as its committed `in_progress` event says.
    started_at: str | None = None


class QueueTransactions(ABC):
    @abstractmethod
    def _transaction(self, change: Change[R]) -> R:
        """Run `change` on the current queue and the time read under the lock; make what
        it changed durable before returning (or, if the change defers it, with the
        store's next sync), or nothing of it if it raises."""

    def _task_transaction(self, task_id: str, change: Change[R]) -> R:
        """A transaction that changes only the task `task_id` (a store may run it on that
        task alone: the database's row)."""
        return self._transaction(change)

    def add(self, record: dict[str, Any], note: EventNote | None = None) -> Task:
        """Append one task; a duplicate id is refused (also one already archived)."""
        return self.add_many([record], note)[0]

    def add_many(self, records: list[dict[str, Any]], note: EventNote | None = None) -> list[Task]:
        """Append tasks all together or not at all; `note` makes each one's event."""
        tasks = new_tasks(records)

        def change(state: QueueState, now: float) -> list[Task]:
            refuse_taken(state, tasks)
            state.add([t.model_copy(deep=True) for t in tasks])
            if note is not None:
                for task in tasks:
                    state.emit(note(task))
            return tasks

        return self._transaction(change)

    def set_api_endpoint(self, endpoint: str) -> None:
        self._transaction(lambda state, now: state.set_api_endpoint(endpoint))

    def claim(
        self, worker: WorkerIdentity, lease_seconds: float, ahead: bool = False
    ) -> ClaimOutcome:
        """Reclaim dead leases, fail what can never run, then lease the first runnable
        task; `ahead` (beside a task in flight), only with work to spare (`claim_change`)."""
        return self._transaction(claim_change(worker, lease_seconds, ahead))

    def heartbeat(self, task_id: str, worker: WorkerIdentity, lease_seconds: float) -> bool:
        """Extend our lease; False means another worker has reclaimed the task."""
        return self._task_transaction(task_id, heartbeat_change(task_id, worker, lease_seconds))

    def finish(
        self,
        task_id: str,
        worker: WorkerIdentity,
        status: Status,
        *,
        events: Sequence[dict[str, Any]] = (),
        effects: Sequence[Effect] = (),
        **fields: Any,
    ) -> Task:
        """Record the task's new status and release its lease; only the holder may.
        `effects` (a review's vote and reward) commit with it.

        The worker's next step (its next claim, or its wait for work) makes this durable
        before anything else happens: the finish does not wait for an fsync of its own."""
        change = durable_with_the_next(finish_change(task_id, worker, status, **fields))
        return self._task_transaction(task_id, fenced(task_id, worker, events, change, effects))

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
        """`finish`, then the worker's next `claim`, committed as one where the store can
        (`_then_claim`). A finish refused for a lost lease claims nothing."""
        change = finish_change(task_id, worker, status, **fields)
        finish = fenced(task_id, worker, events, change, effects)
        return self._then_claim(task_id, finish, worker, lease_seconds, ahead)

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
        """`record_execution`, then the worker's next `claim`, committed as one where the
        store can (`_then_claim`): the next task then runs while this one is reviewed. A
        record refused for a lost lease claims nothing."""
        change = execution_change(task_id, worker, execution, **fields)
        recorded = fenced(task_id, worker, events, change)
        return self._then_claim(task_id, recorded, worker, lease_seconds, ahead)

    def _then_claim(
        self,
        task_id: str,
        step: Change[Task],
        worker: WorkerIdentity,
        lease_seconds: float,
        ahead: bool,
    ) -> tuple[Task, ClaimOutcome]:
        """Two transactions, the task's `step` and then `claim` (the claim's fsync covers
        the step); a store whose every transaction takes the same lock runs them as one."""
        stepped = self._task_transaction(task_id, durable_with_the_next(step))
        return stepped, self.claim(worker, lease_seconds, ahead)

    def record_execution(
        self,
        task_id: str,
        worker: WorkerIdentity,
        execution: ExecutionRecord,
        *,
        events: Sequence[dict[str, Any]] = (),
        **fields: Any,
    ) -> Task:
        """Executed, now under review by the same worker: the lease stays, the result is kept.

        The review's verdict follows at once, and the worker's next step makes both
        durable: this one does not wait for an fsync of its own."""
        change = durable_with_the_next(execution_change(task_id, worker, execution, **fields))
        return self._task_transaction(task_id, fenced(task_id, worker, events, change))

    def log_events(
        self, events: Sequence[dict[str, Any]], holder: WorkerIdentity | None = None
    ) -> bool:
        """Commit events that change no task. With `holder`, only while it still holds
        each event's task: a worker that lost its lease writes nothing for that attempt."""

        def change(state: QueueState, now: float) -> bool:
            if holder is not None and not all(
                (task := state.find(e["task_id"])) is not None and owned_by(task, holder)
                for e in events
            ):
                return False
            for event in events:
                state.emit(event)
            return True

        return self._transaction(change)

    def plan(
        self,
        parent_id: str,
        worker: WorkerIdentity,
        subtasks: list[dict[str, Any]],
        parent_updates: dict[str, Any],
        *,
        events: Sequence[dict[str, Any]] = (),
    ) -> list[Task]:
        """Append a parent's subtasks and make it wait for them, in one write.

        The parent goes back to `queued` without counting the claim as an attempt,
        since planning ran nothing."""
        for record in subtasks:
            check_task_fields(str(record.get("id")), record)
        subtask_records = new_tasks(subtasks)

        def change(state: QueueState, now: float) -> list[Task]:
            parent = owned(state, parent_id, worker)
            refuse_taken(state, subtask_records)
            change_status(
                state,
                parent_id,
                Status.QUEUED,
                attempts=max(0, parent.attempts - 1),
                **parent_updates,
            )
            state.add([t.model_copy(deep=True) for t in subtask_records], before=parent_id)
            for event in events:
                state.emit(event)
            return subtask_records

        return self._transaction(change)

    def requeue(self, task_id: str, note: EventNote | None = None) -> Task:
        """An operator sends a finished-badly task back to the line, with a fresh review
        count; `note` makes the event committed with it."""
        return self._operate(task_id, OperatorAction.REQUEUE, note)

    def cancel(self, task_id: str, note: EventNote | None = None) -> Task:
        """An operator withdraws a task that has not started; its dependents then fail."""
        return self._operate(task_id, OperatorAction.CANCEL, note)

    def requeue_failed(self, note: EventNote | None = None) -> list[Task]:
        """Every task that ended failed (not cancelled or safety-blocked) goes back to the line."""
        action = OperatorAction.REQUEUE_FAILED

        def change(state: QueueState, now: float) -> list[Task]:
            chosen = [t for t in state.doc.tasks if task_allows(t, action)]
            requeued = []
            for task in chosen:
                requeued.append(state.hand_out(operate(state, task, action)))
                record_outcome(state, task.id)
                if note is not None:
                    state.emit(note(requeued[-1]))
            return requeued

        return self._transaction(change)

    def import_queue(self, document: QueueDocument) -> int:
        """Fill an empty queue with `document` as it stands (statuses, leases, the
        outcome lists, the API's address): how a queue.json moves into a database."""

        def change(state: QueueState, now: float) -> int:
            if state.doc.tasks or state.completed_ids or state.failed_ids:
                raise QueueNotEmpty(
                    len(state.doc.tasks), len(state.completed_ids | state.failed_ids)
                )
            state.add([t.model_copy(deep=True) for t in document.tasks])
            for task_id in document.completed:
                state.set_outcome(task_id, "completed")
            for task_id in document.failed:
                state.set_outcome(task_id, "failed")
            state.set_api_endpoint(document.api_endpoint)
            return len(document.tasks)

        return self._transaction(change)

    def _operate(self, task_id: str, action: OperatorAction, note: EventNote | None) -> Task:
        def change(state: QueueState, now: float) -> Task:
            task = state.find(task_id)
            if task is None:
                raise UnknownTaskError(task_id)
            changed = operate(state, task, action)
            record_outcome(state, task_id)
            if note is not None:
                state.emit(note(changed))
            return state.hand_out(changed)

        return self._transaction(change)


def fenced(
    task_id: str,
    worker: WorkerIdentity,
    events: Sequence[dict[str, Any]],
    change: Change[R],
    effects: Sequence[Effect] = (),
) -> Change[R]:
    """`change`, committing `events` and `effects` with it: a change refused for a lost
    lease (fenced by attempt) commits none of them. On the files, the effects write
    nothing: what they vouch for is applied when the journal is folded."""

    def with_events(state: QueueState, now: float) -> R:
        owned(state, task_id, worker)
        result = change(state, now)
        committed = list(events)
        for effect in effects:
            made = effect(state.outstanding)
            if committed:
                committed[-1] = committed[-1] | made.fields
            if made.vouch is not None:
                state.vouch(*made.vouch)
        for event in committed:
            state.emit(event)
        return result

    return with_events


def claim_change(
    worker: WorkerIdentity, lease_seconds: float, ahead: bool = False
) -> Change[ClaimOutcome]:
    """The first runnable task; `ahead` (beside a task in flight), only while the queue
    has work to spare for every other worker at work (`spare_task`)."""

    def change(state: QueueState, now: float) -> ClaimOutcome:
        outcome = ClaimOutcome(
            reclaimed=reclaim_dead_leases(state, now, lease_is_live),
            api_endpoint=state.doc.api_endpoint,
        )
        outcome.propagated = propagate_failures(state)
        if ahead:
            task = spare_task(state, now, worker.worker_id, worker.may_run)
        else:
            task = next_runnable(state, now, worker.may_run)
        if task is not None:
            outcome.task = lease_task(state, task, worker, now, lease_seconds)
            outcome.started_at = iso(utc_now())
        elif not (outcome.reclaimed or outcome.propagated):
            state.durable_with_the_next()  # a claim that changed nothing needs no fsync
        outcome.drained = task is None and is_drained(state, worker.may_run)
        for event in claim_events(outcome, worker):
            state.emit(event)
        return outcome

    return change


def heartbeat_change(task_id: str, worker: WorkerIdentity, lease_seconds: float) -> Change[bool]:
    """The new expiry counts from the moment the lock is held, not from the call: a
    renewal that waited for the lock still grants a whole lease."""

    def change(state: QueueState, now: float) -> bool:
        task = state.find(task_id)
        if task is None or task.lease is None or not owned_by(task, worker):
            return False
        lease = task.lease.model_copy(update={"expires_at": now + lease_seconds})
        state.update(task_id, lease=lease)
        return True

    return change


def finish_change(
    task_id: str, worker: WorkerIdentity, status: Status, **fields: Any
) -> Change[Task]:
    def change(state: QueueState, now: float) -> Task:
        owned(state, task_id, worker)
        task = change_status(state, task_id, status, **fields)
        record_outcome(state, task_id)
        return state.hand_out(task)

    return change


def execution_change(
    task_id: str, worker: WorkerIdentity, execution: ExecutionRecord, **fields: Any
) -> Change[Task]:
    def change(state: QueueState, now: float) -> Task:
        owned(state, task_id, worker)
        task = state.update(
            task_id,
            status=Status.PENDING_REVIEW,
            execution=execution,
            updated_at=utc_now().isoformat(),
            **fields,
        )
        return state.hand_out(task)

    return change


def lease_task(
    state: QueueState, task: Task, worker: WorkerIdentity, now: float, lease_seconds: float
) -> Task:
    """Lease `task` to `worker`; a claim to run it (not to resume its review) is an attempt."""
    lease = Lease(
        worker_id=worker.worker_id,
        pid=worker.pid,
        host=worker.host,
        pid_started=worker.pid_started,
        claimed_at=now,
        expires_at=now + lease_seconds,
    )
    changes: dict[str, Any] = {"lease": lease, "updated_at": utc_now().isoformat()}
    if not awaits_review(task):
        changes |= {"status": Status.IN_PROGRESS, "attempts": task.attempts + 1}
    return state.hand_out(state.update(task.id, **changes))


def new_tasks(records: list[dict[str, Any]]) -> list[Task]:
    """Validated, normalized, pending and stamped: how every task enters the queue."""
    stamp = utc_now().isoformat()
    return [
        Task.model_validate(normalize_task({"created_at": stamp, **r, "status": Status.PENDING}))
        for r in records
    ]


def durable_with_the_next(change: Change[R]) -> Change[R]:
    """`change`, committed without waiting for its fsync (`QueueState.durable_with_the_next`)."""

    def deferred(state: QueueState, now: float) -> R:
        state.durable_with_the_next()
        return change(state, now)

    return deferred


def refuse_taken(state: QueueState, tasks: list[Task]) -> None:
    """Ids are unique across the live queue and the archive's id lists, and within `tasks`."""
    seen: set[str] = set()
    for task in tasks:
        if task.id in seen or state.is_taken(task.id):
            raise DuplicateTaskError(task.id)
        seen.add(task.id)


def owned(state: QueueState, task_id: str, worker: WorkerIdentity) -> Task:
    task = state.find(task_id)
    if task is None:
        raise UnknownTaskError(task_id)
    if not owned_by(task, worker):
        holder = task.lease.worker_id if task.lease else None
        raise LeaseLostError(task_id, worker.worker_id, holder)
    return task
