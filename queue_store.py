"""The worker's one door to queue.json: add, claim, heartbeat, finish, requeue.

Every operation is a locked read-modify-write through `state_store`, so several
workers, the API and the panel can share the file. The decisions (which task is
next, whose lease is dead, which dependents must fail) are pure functions over a
`QueueDocument` so they can be tested on plain values and reused by another store.

Cost does not grow with history: finished tasks beyond `retain` move to an
append-only archive in `.swarm/`, leaving only their ids in `completed`/`failed`.
"""

from __future__ import annotations

import copy
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from errors import (
    DuplicateTaskError,
    InvalidTransition,
    LeaseLostError,
    QueueFileError,
    StateFileError,
    UnknownTaskError,
)
from process_control import process_exists
from runtime_contract import (
    CLAIMABLE_STATUSES,
    DEFAULT_API_ENDPOINT,
    FAILED_STATUSES,
    ExecutionRecord,
    Lease,
    QueueDocument,
    Status,
    Task,
    describe_validation_error,
    empty_queue,
    final_statuses,
    normalize_queue,
    normalize_task,
    satisfying_statuses,
    utc_now,
    validate_queue_contract,
)
from settings import Settings
from state_store import Workspace, append_lines, atomic_write_bytes, dump_json, parse_json

ARCHIVE_BATCH_FRACTION = 0.1
TASK_LIST = TypeAdapter(list[Task])
HOST = socket.gethostname()


@dataclass(frozen=True)
class WorkerIdentity:
    worker_id: str
    pid: int = field(default_factory=os.getpid)
    host: str = HOST

    @property
    def pid_started(self) -> float | None:
        return process_start_time(self.pid)


@dataclass(frozen=True)
class Reclaim:
    task_id: str
    previous: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class Propagated:
    task_id: str
    status: Status
    reason: str


@dataclass
class ClaimOutcome:
    """What one claim did: the task won (or None), plus what it cleaned up on the way."""

    task: Task | None = None
    reclaimed: list[Reclaim] = field(default_factory=list)
    propagated: list[Propagated] = field(default_factory=list)
    drained: bool = False
    api_endpoint: str = DEFAULT_API_ENDPOINT


# --- process liveness -------------------------------------------------------------------


def process_start_time(pid: int) -> float | None:
    """The kernel's start time of `pid` (clock ticks), to tell a live holder from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", errors="replace")
    except OSError:
        return None
    try:
        return float(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def holder_is_alive(lease: Lease, host: str = HOST) -> bool:
    """False only when we can prove the holder is gone: same host and no such process."""
    if lease.host != host:
        return True
    if not process_exists(lease.pid):
        return False
    started = process_start_time(lease.pid)
    return not (lease.pid_started and started and started != lease.pid_started)


def lease_is_live(lease: Lease | None, now: float) -> bool:
    return lease is not None and lease.expires_at > now and holder_is_alive(lease)


# --- pure decisions ---------------------------------------------------------------------


def reclaim_dead_leases(
    doc: QueueDocument, now: float, is_live: Callable[[Lease | None, float], bool] = lease_is_live
) -> list[Reclaim]:
    """Put tasks whose holder stopped renewing back in line, keeping their attempt count.

    A task that died while running is run again; one that died while under review keeps
    its recorded execution and is only reviewed again."""
    reclaimed = []
    for task in doc.tasks:
        if not holds_lease(task) or is_live(task.lease, now):
            continue
        previous = task.lease.model_dump(mode="json") if task.lease else {}
        expired = task.lease is None or task.lease.expires_at <= now
        reason = "lease expired" if expired else "lease holder process no longer exists"
        reclaimed.append(Reclaim(task.id, previous, reason))
        if task.status == Status.IN_PROGRESS:
            task.status = Status.PENDING
        task.lease = None
    return reclaimed


def holds_lease(task: Task) -> bool:
    """Running, or being reviewed: a worker is (or was) working on it."""
    return task.status == Status.IN_PROGRESS or (
        task.status == Status.PENDING_REVIEW and task.lease is not None
    )


def awaits_review(task: Task) -> bool:
    """Executed, then orphaned before its review ended; parked reviews wait for an operator."""
    return (
        task.status == Status.PENDING_REVIEW
        and task.lease is None
        and task.execution is not None
        and not is_parked(task)
    )


def propagate_failures(doc: QueueDocument) -> list[Propagated]:
    """Fail every waiting task that can never run, so nothing waits forever."""
    by_id = {task.id: task for task in doc.tasks}
    archived_failed, archived_ok = set(doc.failed) - by_id.keys(), set(doc.completed)
    propagated: list[Propagated] = []

    def fail(task: Task, reason: str) -> None:
        task.status, task.last_error, task.lease = Status.FAILED, reason, None
        propagated.append(Propagated(task.id, Status.FAILED, reason))

    changed = True
    while changed:
        changed = False
        for task in doc.tasks:
            if task.status not in CLAIMABLE_STATUSES:
                continue
            reason = _unmet_reason(task, by_id, archived_failed, archived_ok)
            if reason:
                fail(task, reason)
                changed = True
    for task_id in _tasks_in_cycles(doc):
        fail(by_id[task_id], "dependency cycle: this task waits, directly or through others, "
             "on a task that waits on it")
    return propagated


def _unmet_reason(
    task: Task, by_id: dict[str, Task], archived_failed: set[str], archived_ok: set[str]
) -> str | None:
    for dep in task.depends_on:
        if dep == task.id:
            return f"task depends on itself ({dep!r})"
        if dep in archived_failed:
            return f"dependency {dep!r} ended failed"
        if dep in by_id:
            status = by_id[dep].status
            if status in FAILED_STATUSES:
                return f"dependency {dep!r} ended {status.value}"
        elif dep not in archived_ok:
            return f"unknown dependency {dep!r}: no task with that id exists"
    return None


def _tasks_in_cycles(doc: QueueDocument) -> list[str]:
    """Waiting tasks caught in (or behind) a dependency cycle among waiting tasks (Kahn)."""
    waiting = {t.id: t for t in doc.tasks if t.status in CLAIMABLE_STATUSES}
    # Only a task waiting on another waiting task can be in a cycle; the rest are resolved.
    unresolved = {
        tid: deps for tid, t in waiting.items()
        if t.depends_on and (deps := {d for d in t.depends_on if d in waiting})
    }
    dependents: dict[str, list[str]] = {}
    for tid, deps in unresolved.items():
        deps.intersection_update(unresolved)
        for dep in deps:
            dependents.setdefault(dep, []).append(tid)
    ready = [tid for tid, deps in unresolved.items() if not deps]
    resolved = set(ready)
    while ready:
        done = ready.pop()
        for dependent in dependents.get(done, ()):
            unresolved[dependent].discard(done)
            if not unresolved[dependent] and dependent not in resolved:
                resolved.add(dependent)
                ready.append(dependent)
    return [tid for tid in unresolved if tid not in resolved]


def next_runnable(doc: QueueDocument, now: float, review_enabled: bool) -> Task | None:
    """First task in file order that is due, whose dependencies are satisfied and that
    fits beside what is already running (`parallel_safe: false` runs alone)."""
    running = [t for t in doc.tasks if holds_lease(t)]
    if any(not t.parallel_safe for t in running):
        return None
    statuses = {t.id: t.status for t in doc.tasks}
    satisfied = satisfying_statuses(review_enabled)
    archived_ok = set(doc.completed)

    def met(dep: str) -> bool:
        return statuses[dep] in satisfied if dep in statuses else dep in archived_ok

    for task in doc.tasks:
        if not task.parallel_safe and running:
            continue
        if awaits_review(task):
            return task
        if task.status not in CLAIMABLE_STATUSES or (task.not_before or 0) > now:
            continue
        if all(met(dep) for dep in task.depends_on):
            return task
    return None


def is_drained(doc: QueueDocument) -> bool:
    """Nothing left that a worker could ever run without an operator's help."""
    stuck = waiting_on_operator(doc)
    return not any(
        (t.status in CLAIMABLE_STATUSES and t.id not in stuck) or awaits_review(t)
        for t in doc.tasks
    )


def is_parked(task: Task) -> bool:
    """Executed, but the critic could not judge it: it waits for an operator."""
    return task.status == Status.PENDING_REVIEW and bool(task.review and task.review.error)


def waiting_on_operator(doc: QueueDocument) -> set[str]:
    """Parked tasks and every waiting task that depends on one, directly or not."""
    stuck = {t.id for t in doc.tasks if is_parked(t)}
    waiting = [t for t in doc.tasks if t.status in CLAIMABLE_STATUSES]
    grew = bool(stuck)
    while grew:
        grew = False
        for task in waiting:
            if task.id not in stuck and any(dep in stuck for dep in task.depends_on):
                stuck.add(task.id)
                grew = True
    return stuck


def record_outcome(doc: QueueDocument, task: Task, review_enabled: bool) -> None:
    """Keep `completed`/`failed` in step with the task's final status."""
    for ids in (doc.completed, doc.failed):
        if task.id in ids:
            ids.remove(task.id)
    if task.status in FAILED_STATUSES:
        doc.failed.append(task.id)
    elif task.status in final_statuses(review_enabled):
        doc.completed.append(task.id)


def split_archivable(doc: QueueDocument, retain: int, review_enabled: bool) -> list[Task]:
    """Oldest finished tasks past the retention threshold, removed from `doc.tasks`.

    Archiving waits until the surplus reaches a batch (a tenth of `retain`), so the
    archive grows in chunks instead of on every state change."""
    final = final_statuses(review_enabled)
    finished = [t for t in doc.tasks if t.status in final]
    batch = max(1, int(retain * ARCHIVE_BATCH_FRACTION))
    if len(finished) - retain < batch:
        return []
    moving = {t.id for t in finished[: len(finished) - retain]}
    archived = [t for t in doc.tasks if t.id in moving]
    doc.tasks = [t for t in doc.tasks if t.id not in moving]
    return archived


# --- the store --------------------------------------------------------------------------


class QueueStore:
    def __init__(
        self,
        workspace: Workspace,
        *,
        retain: int = 1000,
        review_enabled: bool = False,
        clock: Callable[[], float] | None = None,
    ):
        self._workspace = workspace
        self.path = workspace.queue_path
        self.retain = retain
        self.review_enabled = review_enabled
        self._clock = clock or time.time
        self._last: tuple[bytes, QueueDocument] | None = None

    @classmethod
    def for_settings(cls, workspace: Workspace, settings: Settings) -> QueueStore:
        """Every process must agree on retention and on whether review applies."""
        return cls(workspace, retain=settings.queue_retain, review_enabled=settings.review)

    # reading

    def load(self) -> QueueDocument:
        """A validated snapshot; a malformed file raises QueueFileError and is left as it is."""
        return self._parse(self._read_bytes())

    def _read_bytes(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def _parse(self, raw: bytes | None) -> QueueDocument:
        try:
            document = empty_queue() if raw is None else parse_json(self.path, raw)
        except StateFileError as exc:
            raise QueueFileError(exc.path, exc.problems) from None
        problems = validate_queue_contract(document)
        if problems:
            raise QueueFileError(self.path, problems)
        try:
            return QueueDocument.model_validate(normalize_queue(document))
        except ValidationError as exc:
            raise QueueFileError(
                self.path, [describe_validation_error(e) for e in exc.errors()]
            ) from None

    def _transaction(self, change: Callable[[QueueDocument], Any]) -> Any:
        """Run `change` on a fresh copy under the lock; write only if it returned normally
        and changed something.

        The document this store wrote last is kept with its bytes: when the file still
        holds exactly those bytes, no other process has written since, and parsing and
        validating every task again would only rebuild the same document. A failed change
        drops it, since it may have half-changed it."""
        with self._workspace.lock(self.path):
            raw = self._read_bytes()
            cached, self._last = self._last, None
            doc = cached[1] if cached is not None and cached[0] == raw else self._parse(raw)
            result = change(doc)
            archived = split_archivable(doc, self.retain, self.review_enabled)
            if archived:
                append_lines(
                    self._workspace,
                    self._workspace.queue_archive_path,
                    [t.model_dump(mode="json", exclude_unset=True) for t in archived],
                )
            data = encode_queue(doc)
            if data != raw:
                atomic_write_bytes(self.path, data)
            self._last = (data, doc)
            return result

    # operations

    def add(self, record: dict[str, Any]) -> Task:
        """Append one task; a duplicate id is refused (also one already archived)."""
        return self.add_many([record])[0]

    def add_many(self, records: list[dict[str, Any]]) -> list[Task]:
        """Append tasks all together or not at all."""
        tasks = new_tasks(records)

        def change(doc: QueueDocument) -> list[Task]:
            _refuse_taken(doc, tasks)
            doc.tasks.extend(t.model_copy(deep=True) for t in tasks)
            return tasks

        return self._transaction(change)

    def set_api_endpoint(self, endpoint: str) -> None:
        def change(doc: QueueDocument) -> None:
            doc.api_endpoint = endpoint

        self._transaction(change)

    def claim(self, worker: WorkerIdentity, lease_seconds: float) -> ClaimOutcome:
        now = self._clock()

        def change(doc: QueueDocument) -> ClaimOutcome:
            outcome = ClaimOutcome(
                reclaimed=reclaim_dead_leases(doc, now), api_endpoint=doc.api_endpoint
            )
            outcome.propagated = propagate_failures(doc)
            for item in outcome.propagated:
                record_outcome(doc, doc.find(item.task_id), self.review_enabled)
            task = next_runnable(doc, now, self.review_enabled)
            if task is not None:
                if not awaits_review(task):
                    task.status = Status.IN_PROGRESS
                    task.attempts += 1
                task.lease = Lease(
                    worker_id=worker.worker_id, pid=worker.pid, host=worker.host,
                    pid_started=worker.pid_started, claimed_at=now,
                    expires_at=now + lease_seconds,
                )
                task.updated_at = utc_now().isoformat()
                outcome.task = task.model_copy(deep=True)
            outcome.drained = task is None and is_drained(doc)
            return outcome

        return self._transaction(change)

    def heartbeat(self, task_id: str, worker: WorkerIdentity, lease_seconds: float) -> bool:
        """Extend our lease; False means another worker has reclaimed the task."""
        now = self._clock()

        def change(doc: QueueDocument) -> bool:
            task = doc.find(task_id)
            if task is None or not _owned_by(task, worker):
                return False
            task.lease.expires_at = now + lease_seconds
            return True

        return self._transaction(change)

    def finish(
        self, task_id: str, worker: WorkerIdentity, status: Status, **fields: Any
    ) -> Task:
        """Record the task's new status and release its lease; only the holder may."""

        def change(doc: QueueDocument) -> Task:
            task = self._owned(doc, task_id, worker)
            _apply(task, status, fields)
            record_outcome(doc, task, self.review_enabled)
            return task.model_copy(deep=True)

        return self._transaction(change)

    def record_execution(
        self, task_id: str, worker: WorkerIdentity, execution: ExecutionRecord, **fields: Any
    ) -> Task:
        """Executed, now under review by the same worker: the lease stays, the result is kept."""

        def change(doc: QueueDocument) -> Task:
            task = self._owned(doc, task_id, worker)
            task.status = Status.PENDING_REVIEW
            task.execution = execution.model_copy(deep=True)
            task.updated_at = utc_now().isoformat()
            for name, value in fields.items():
                setattr(task, name, copy.deepcopy(value))
            return task.model_copy(deep=True)

        return self._transaction(change)

    def plan(
        self,
        parent_id: str,
        worker: WorkerIdentity,
        subtasks: list[dict[str, Any]],
        parent_updates: dict[str, Any],
    ) -> list[Task]:
        """Append a parent's subtasks and make it wait for them, in one write.

        The parent goes back to `queued` without counting the claim as an attempt,
        since planning ran nothing."""
        subtask_records = new_tasks(subtasks)

        def change(doc: QueueDocument) -> list[Task]:
            parent = self._owned(doc, parent_id, worker)
            _refuse_taken(doc, subtask_records)
            _apply(parent, Status.QUEUED, parent_updates)
            parent.attempts = max(0, parent.attempts - 1)
            position = doc.tasks.index(parent)
            doc.tasks[position:position] = [t.model_copy(deep=True) for t in subtask_records]
            return subtask_records

        return self._transaction(change)

    @staticmethod
    def _owned(doc: QueueDocument, task_id: str, worker: WorkerIdentity) -> Task:
        task = doc.find(task_id)
        if task is None:
            raise UnknownTaskError(task_id)
        if not _owned_by(task, worker):
            holder = task.lease.worker_id if task.lease else None
            raise LeaseLostError(task_id, worker.worker_id, holder)
        return task

    def requeue(self, task_id: str) -> Task:
        """An operator sends a finished-badly task back to the line, with a fresh review count."""
        return self._operate(task_id, requeue_by_operator)

    def cancel(self, task_id: str) -> Task:
        """An operator withdraws a task that has not started; its dependents then fail."""
        return self._operate(task_id, cancel_by_operator)

    def requeue_failed(self) -> list[Task]:
        """Every task that ended failed (not cancelled or safety-blocked) goes back to the line."""

        def change(doc: QueueDocument) -> list[Task]:
            chosen = [t for t in doc.tasks if t.status == Status.FAILED]
            for task in chosen:
                requeue_by_operator(task)
                record_outcome(doc, task, self.review_enabled)
            return [t.model_copy(deep=True) for t in chosen]

        return self._transaction(change)

    def _operate(self, task_id: str, action: Callable[[Task], None]) -> Task:
        def change(doc: QueueDocument) -> Task:
            task = doc.find(task_id)
            if task is None:
                raise UnknownTaskError(task_id)
            action(task)
            record_outcome(doc, task, self.review_enabled)
            return task.model_copy(deep=True)

        return self._transaction(change)


def encode_queue(doc: QueueDocument) -> bytes:
    """queue.json's bytes, one task per line, the task list encoded by pydantic's serializer
    in one call: a dict per task first, then json, cost most of a write at 10,000 tasks."""
    header = doc.model_dump(mode="json", exclude_unset=True, exclude={"tasks"}) | {
        "version": doc.version,
        "api_endpoint": doc.api_endpoint,
        "completed": doc.completed,
        "failed": doc.failed,
    }
    # Compact JSON escapes every quote inside a string, so `},{"id":` only ever occurs
    # between objects, and whitespace may go there.
    tasks = TASK_LIST.dump_json(doc.tasks, exclude_unset=True)[1:-1]
    one_per_line = tasks.replace(b'},{"id":', b'},\n    {"id":')
    listed = b"[\n    " + one_per_line + b"\n  ]" if tasks else b"[]"
    # dump_json opens with "{\n"; the task list goes first, the other keys follow it.
    return b'{\n  "tasks": ' + listed + b",\n" + dump_json(header)[2:]


def requeue_by_operator(task: Task) -> None:
    if not (task.status in FAILED_STATUSES or is_parked(task)):
        raise InvalidTransition(task.id, task.status, "requeue", "failed, blocked, cancelled "
                                "or parked in pending_review")
    _apply(task, Status.REQUEUE, {"not_before": None, "review": None, "last_error": None})


def cancel_by_operator(task: Task) -> None:
    if task.status not in CLAIMABLE_STATUSES:
        raise InvalidTransition(task.id, task.status, "cancel", "pending, queued or requeue")
    _apply(task, Status.CANCELLED, {"last_error": "cancelled by the operator"})


def new_tasks(records: list[dict[str, Any]]) -> list[Task]:
    """Validated, normalized, pending and stamped: how every task enters the queue."""
    stamp = utc_now().isoformat()
    return [
        Task.model_validate(normalize_task({"created_at": stamp, **r, "status": Status.PENDING}))
        for r in records
    ]


def _refuse_taken(doc: QueueDocument, tasks: list[Task]) -> None:
    """Ids are unique across the live queue and the archive's id lists, and within `tasks`."""
    taken = {t.id for t in doc.tasks} | set(doc.completed) | set(doc.failed)
    for task in tasks:
        if task.id in taken:
            raise DuplicateTaskError(task.id)
        taken.add(task.id)


def _owned_by(task: Task, worker: WorkerIdentity) -> bool:
    lease = task.lease
    return (
        holds_lease(task)
        and lease is not None
        and (lease.worker_id, lease.pid, lease.host) == (worker.worker_id, worker.pid, worker.host)
    )


def _apply(task: Task, status: Status, fields: dict[str, Any]) -> None:
    """The caller's values are copied: the store keeps its document between transactions,
    so nothing outside it may hold a piece of it."""
    task.status = status
    task.lease = None
    task.updated_at = utc_now().isoformat()
    for name, value in fields.items():
        setattr(task, name, copy.deepcopy(value))
