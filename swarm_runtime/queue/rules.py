"""The queue's decisions: whose lease is dead, which waiting task can never run, which
task is next, when the queue is drained, what retention archives, what an operator's
action does (where the contract's table allows it).

Pure functions over a `QueueState`: no file, no clock, no process table (the liveness
check is passed in). Each looks only at the tasks its answer depends on, through the
state's indexes, so a claim costs the same with 100 tasks or 10,000 in the queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal

from swarm_runtime.contract import (
    CLAIMABLE_STATUSES,
    FAILED_STATUSES,
    OPERATOR_ACTIONS,
    Lease,
    OperatorAction,
    Outcome,
    Status,
    Task,
    describe_statuses,
    final_statuses,
    is_parked,
    satisfying_statuses,
    task_allows,
    utc_now,
)
from swarm_runtime.errors import InvalidTransition
from swarm_runtime.queue.state import QueueState

ARCHIVE_BATCH_FRACTION = 0.1
CYCLE_REASON = (
    "dependency cycle: this task waits, directly or through others, on a task that waits on it"
)
# What an operator's action resets besides the status, by the status it leads to.
OPERATOR_EFFECTS: dict[Status, dict[str, Any]] = {
    Status.REQUEUE: {"not_before": None, "review": None, "last_error": None},
    Status.CANCELLED: {"last_error": "cancelled by the operator"},
}


Lane = Literal["fast", "alone", "full"]


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


def reclaim_dead_leases(
    state: QueueState, now: float, is_live: Callable[[Lease | None, float], bool]
) -> list[Reclaim]:
    """Put tasks whose holder stopped renewing back in line, keeping their attempt count.

    A task that died while running is run again; one that died while under review keeps
    its recorded execution and is only reviewed again."""
    reclaimed = []
    for task in state.leased_tasks():
        if is_live(task.lease, now):
            continue
        previous = task.lease.model_dump(mode="json") if task.lease else {}
        expired = task.lease is None or task.lease.expires_at <= now
        reason = "lease expired" if expired else "lease holder process no longer exists"
        reclaimed.append(Reclaim(task.id, previous, reason))
        status = Status.PENDING if task.status == Status.IN_PROGRESS else task.status
        state.update(task.id, status=status, lease=None)
    return reclaimed


def awaits_review(task: Task) -> bool:
    """Executed, then orphaned before its review ended; parked reviews wait for an operator."""
    return (
        task.status == Status.PENDING_REVIEW
        and task.lease is None
        and task.execution is not None
        and not is_parked(task)
    )


def propagate_failures(state: QueueState) -> list[Propagated]:
    """Fail every waiting task that can never run, so nothing waits forever.

    Only tasks in `state.unchecked` are judged (new, changed, or behind a dependency that
    failed since), in file order; a task failed here makes its dependents unchecked."""
    propagated: list[Propagated] = []

    def fail(task_id: str, reason: str) -> None:
        state.update(task_id, status=Status.FAILED, last_error=reason, lease=None)
        record_outcome(state, task_id)
        propagated.append(Propagated(task_id, Status.FAILED, reason))

    waiting: list[str] = []
    while state.unchecked:
        batch = sorted((i for i in state.unchecked if state.find(i)), key=state.rank)
        state.unchecked.clear()
        for task_id in batch:
            task = state.find(task_id)
            if task is None or task.status not in CLAIMABLE_STATUSES:
                continue
            reason = _unmet_reason(task, state)
            if reason:
                fail(task_id, reason)
            elif task.depends_on:
                waiting.append(task_id)
        if not state.unchecked:
            for task_id in _in_cycles(state, waiting):
                fail(task_id, CYCLE_REASON)
            waiting = []
    return propagated


def _unmet_reason(task: Task, state: QueueState) -> str | None:
    for dep in task.depends_on:
        if dep == task.id:
            return f"task depends on itself ({dep!r})"
        found = state.find(dep)
        if found is not None:
            if found.status in FAILED_STATUSES:
                return f"dependency {dep!r} ended {found.status.value}"
        elif dep in state.failed_ids:
            return f"dependency {dep!r} ended failed"
        elif dep not in state.completed_ids:
            return f"unknown dependency {dep!r}: no task with that id exists"
    return None


def _in_cycles(state: QueueState, candidates: list[str]) -> list[str]:
    """Waiting tasks among (or reachable through waiting dependencies from) `candidates`
    that are caught in, or behind, a cycle of waiting tasks (Kahn's algorithm).

    Only a change can close a cycle, and the changed tasks are the candidates, so the
    rest of the queue needs no look."""

    def waiting(task_id: str) -> bool:
        task = state.find(task_id)
        return task is not None and task.status in CLAIMABLE_STATUSES

    def waiting_deps(task_id: str) -> set[str]:
        task = state.find(task_id)
        return {dep for dep in task.depends_on if waiting(dep)} if task else set()

    unresolved: dict[str, set[str]] = {}
    frontier = [task_id for task_id in candidates if waiting(task_id)]
    while frontier:
        task_id = frontier.pop()
        if task_id not in unresolved:
            unresolved[task_id] = waiting_deps(task_id)
            frontier.extend(unresolved[task_id])
    dependents: dict[str, list[str]] = {}
    for task_id, deps in unresolved.items():
        for dep in deps:
            dependents.setdefault(dep, []).append(task_id)
    ready = [task_id for task_id, deps in unresolved.items() if not deps]
    resolved = set(ready)
    while ready:
        done = ready.pop()
        for dependent in dependents.get(done, ()):
            unresolved[dependent].discard(done)
            if not unresolved[dependent] and dependent not in resolved:
                resolved.add(dependent)
                ready.append(dependent)
    return sorted((t for t in unresolved if t not in resolved), key=state.rank)


def anywhere(task: Task) -> bool:
    """A worker that may run every task: the check of one that serves no host in particular."""
    return True


def next_runnable(
    state: QueueState, now: float, may_run: Callable[[Task], bool] = anywhere
) -> Task | None:
    """First task in file order that is due, whose dependencies are satisfied, that
    fits beside what is already running (`parallel_safe: false` runs alone) and that
    this worker `may_run` (its host and labels)."""
    return next(runnable_tasks(state, now, may_run), None)


def runnable_tasks(
    state: QueueState, now: float, may_run: Callable[[Task], bool] = anywhere
) -> Iterator[Task]:
    """Every task `next_runnable` could hand out, in the order it would."""
    running = state.leased_tasks()
    if any(not t.parallel_safe for t in running):
        return
    for task in state.live_tasks():
        if (not task.parallel_safe and running) or not may_run(task):
            continue
        if awaits_review(task):
            yield task
        elif task.status in CLAIMABLE_STATUSES and (task.not_before or 0) <= now:
            if dependencies_met(state, task):
                yield task


def spare_task(
    state: QueueState, now: float, worker_id: str, may_run: Callable[[Task], bool] = anywhere
) -> Task | None:
    """The task a worker with one in flight may claim beside it: the next runnable, only
    while the queue holds one for each other worker at work too, so that a task claimed
    ahead is never one another worker would have run at once."""
    others = {t.lease.worker_id for t in state.leased_tasks() if t.lease is not None}
    others.discard(worker_id)
    wanted = len(others) + 1
    found = list(islice(runnable_tasks(state, now, may_run), wanted))
    return found[0] if len(found) == wanted else None


def dependencies_met(state: QueueState, task: Task) -> bool:
    """Every dependency finished in a status that lets a dependent run."""
    satisfied = satisfying_statuses(state.review_enabled)

    def met(dep: str) -> bool:
        found = state.find(dep)
        return found.status in satisfied if found is not None else dep in state.completed_ids

    return all(met(dep) for dep in task.depends_on)


def claim_lane(state: QueueState, task: Task) -> Lane | None:
    """How a claim in the database may take `task`, due time aside (`queue.postgres`).

    "fast": by locking its row alone, since its turn in queue order is all that decides;
    "alone": it must run alone, so only under the whole queue's lock, and only when
    nothing runs (until then a fast task behind it may go first, as `next_runnable`
    lets it); "full": only under the whole queue's lock, because it resumes a review or
    waits on a dependency nobody has judged yet (it may never run, and only the full
    claim fails it); None: it cannot run now (running, finished, or waiting on a
    dependency)."""
    if awaits_review(task):
        return "full"
    if task.status not in CLAIMABLE_STATUSES:
        return None
    if not dependencies_met(state, task):
        return "full" if task.id in state.unchecked else None
    return "fast" if task.parallel_safe else "alone"


def is_drained(state: QueueState, may_run: Callable[[Task], bool] = anywhere) -> bool:
    """Nothing left that this worker could ever run without an operator's help (tasks
    pinned elsewhere are other workers' to run)."""
    stuck = waiting_on_operator(state)
    return not any(
        ((t.status in CLAIMABLE_STATUSES and t.id not in stuck) or awaits_review(t)) and may_run(t)
        for t in state.live_tasks()
    )


def waiting_on_operator(state: QueueState) -> set[str]:
    """Parked tasks and every waiting task that depends on one, directly or not."""
    live = list(state.live_tasks())
    stuck = {t.id for t in live if is_parked(t)}
    waiting = [t for t in live if t.status in CLAIMABLE_STATUSES]
    grew = bool(stuck)
    while grew:
        grew = False
        for task in waiting:
            if task.id not in stuck and any(dep in stuck for dep in task.depends_on):
                stuck.add(task.id)
                grew = True
    return stuck


def outcome_of(task: Task, review_enabled: bool) -> Outcome | None:
    if task.status in FAILED_STATUSES:
        return "failed"
    if task.status in final_statuses(review_enabled):
        return "completed"
    return None


def record_outcome(state: QueueState, task_id: str) -> None:
    """Keep `completed`/`failed` in step with the task's final status."""
    task = state.find(task_id)
    outcome = outcome_of(task, state.review_enabled) if task else None
    in_lists = task_id in state.completed_ids or task_id in state.failed_ids
    if outcome is not None or in_lists:
        state.set_outcome(task_id, outcome)


def archivable_ids(state: QueueState, retain: int) -> list[str]:
    """Oldest finished tasks past the retention threshold.

    Archiving waits until the surplus reaches a batch (a tenth of `retain`), so the
    archive grows in chunks instead of on every state change, and the scan this takes
    is paid once per batch."""
    surplus = state.settled_count - retain
    if surplus < max(1, int(retain * ARCHIVE_BATCH_FRACTION)):
        return []
    live = {t.id for t in state.live_tasks()}
    finished = [t.id for t in state.doc.tasks if t.id not in live]
    return finished[:surplus]


def change_status(state: QueueState, task_id: str, status: Status, **fields: Any) -> Task:
    """A new status, the lease released, the change stamped; `fields` may override."""
    changes = {"status": status, "lease": None, "updated_at": utc_now().isoformat()}
    return state.update(task_id, **(changes | fields))


def operate(state: QueueState, task: Task, action: OperatorAction) -> Task:
    """An operator's action on one task: a requeue starts afresh (no backoff, no review
    count, no error), a cancel says who cancelled."""
    rule = OPERATOR_ACTIONS[action]
    if not task_allows(task, action):
        allowed = describe_statuses(rule.allowed_from, parked=True)
        raise InvalidTransition(task.id, task.status, action.value, allowed)
    return change_status(state, task.id, rule.leads_to, **OPERATOR_EFFECTS[rule.leads_to])
