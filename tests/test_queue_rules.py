"""The queue's pure decisions, as tables over queues built in memory (no files)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from swarm_runtime.contract import (
    ExecutionRecord,
    Lease,
    OperatorAction,
    QueueDocument,
    ReviewRecord,
    Status,
    Task,
    can_transition,
    task_allows,
)
from swarm_runtime.errors import InvalidTransition
from swarm_runtime.queue.rules import (
    CYCLE_REASON,
    archivable_ids,
    is_drained,
    next_runnable,
    operate,
    outcome_of,
    propagate_failures,
    reclaim_dead_leases,
    runnable_tasks,
    spare_task,
    waiting_on_operator,
)
from swarm_runtime.queue.state import QueueState

NOW = 1_000.0
LEASE = Lease(worker_id="w", pid=1, host="h", claimed_at=NOW - 10, expires_at=NOW + 30)
EXPIRED = LEASE.model_copy(update={"expires_at": NOW - 1})
EXECUTED = ExecutionRecord(attempt=1, status=Status.COMPLETED)
PARKED = ReviewRecord(error="critic down")


def task(task_id: str, status: str = "pending", *deps: str, **fields: Any) -> Task:
    return Task(id=task_id, status=Status(status), depends_on=list(deps), **fields)


def running(task_id: str, **fields: Any) -> Task:
    return task(task_id, "in_progress", **{"lease": LEASE, **fields})


def state_of(
    *tasks: Task,
    completed: tuple[str, ...] = (),
    failed: tuple[str, ...] = (),
    review: bool = False,
) -> QueueState:
    doc = QueueDocument(tasks=list(tasks), completed=list(completed), failed=list(failed))
    return QueueState(doc, review_enabled=review)


# --- dead leases --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "live", "status", "reason"),
    [
        (running("a", lease=EXPIRED), False, Status.PENDING, "lease expired"),
        (running("a"), False, Status.PENDING, "lease holder process no longer exists"),
        (running("a"), True, Status.IN_PROGRESS, None),
        (
            task("a", "pending_review", lease=EXPIRED, execution=EXECUTED),
            False,
            Status.PENDING_REVIEW,
            "lease expired",
        ),
    ],
    ids=["expired", "holder-gone", "live", "orphaned-review"],
)
def test_a_dead_lease_puts_the_task_back_keeping_its_attempts(
    held: Task, live: bool, status: Status, reason: str | None
) -> None:
    state = state_of(held.model_copy(update={"attempts": 2}))
    reclaimed = reclaim_dead_leases(state, NOW, lambda lease, now: live)
    after = state.find("a")
    assert after is not None
    assert (after.status, after.attempts) == (status, 2)
    assert [r.reason for r in reclaimed] == ([reason] if reason else [])
    assert (after.lease is None) is (reason is not None)
    if reason:
        assert reclaimed[0].previous["worker_id"] == "w"


# --- waiting tasks that can never run -----------------------------------------------------


@pytest.mark.parametrize(
    ("tasks", "archived", "expected"),
    [
        (
            [task("a", "failed"), task("b", "pending", "a"), task("c", "pending", "b")],
            {},
            {"b": "dependency 'a' ended failed", "c": "dependency 'b' ended failed"},
        ),
        (
            [task("a", "cancelled"), task("b", "queued", "a")],
            {},
            {"b": "dependency 'a' ended cancelled"},
        ),
        (
            [task("a", "safety_blocked"), task("b", "requeue", "a")],
            {},
            {"b": "dependency 'a' ended safety_blocked"},
        ),
        (
            [task("b", "pending", "gone")],
            {"failed": ("gone",)},
            {"b": "dependency 'gone' ended failed"},
        ),
        ([task("b", "pending", "done")], {"completed": ("done",)}, {}),
        (
            [task("b", "pending", "ghost")],
            {},
            {"b": "unknown dependency 'ghost': no task with that id exists"},
        ),
        ([task("a", "pending", "a")], {}, {"a": "task depends on itself ('a')"}),
        (
            [task("x", "pending", "y"), task("y", "pending", "x"), task("free")],
            {},
            {"x": CYCLE_REASON, "y": CYCLE_REASON},
        ),
        (
            [task("z", "pending", "x"), task("x", "pending", "y"), task("y", "pending", "x")],
            {},
            {"z": CYCLE_REASON, "x": CYCLE_REASON, "y": CYCLE_REASON},
        ),
        (
            [task("a", "pending", "c"), task("b", "pending", "a"), task("c", "pending", "b")],
            {},
            {"a": CYCLE_REASON, "b": CYCLE_REASON, "c": CYCLE_REASON},
        ),
        ([task("a"), task("b", "pending", "a"), task("c", "pending", "a", "b")], {}, {}),
        ([running("a"), task("b", "pending", "a")], {}, {}),
        ([task("a", "failed"), task("b", "approved", "a")], {}, {}),
    ],
    ids=[
        "chain",
        "cancelled",
        "blocked",
        "archived-failed",
        "archived-completed",
        "unknown",
        "itself",
        "cycle",
        "behind-a-cycle",
        "long-cycle",
        "waiting-is-fine",
        "running-dependency",
        "not-waiting",
    ],
)
def test_failures_propagate_down_the_chain_in_file_order(
    tasks: list[Task], archived: dict[str, tuple[str, ...]], expected: dict[str, str]
) -> None:
    state = state_of(*tasks, **archived)
    propagated = propagate_failures(state)
    assert {p.task_id: p.reason for p in propagated} == expected
    order = [t.id for t in tasks]
    assert [p.task_id for p in propagated] == sorted(expected, key=order.index)
    for task_id in expected:
        failed = state.find(task_id)
        assert failed is not None and failed.status == Status.FAILED
        assert failed.last_error == expected[task_id] and task_id in state.failed_ids
    assert not state.unchecked


def test_a_failure_is_judged_only_once() -> None:
    state = state_of(task("a", "failed"), task("b", "pending", "a"))
    assert len(propagate_failures(state)) == 1
    assert propagate_failures(state) == []


# --- the next task ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tasks", "extra", "expected"),
    [
        ([task("b"), task("a")], {}, "b"),
        ([task("b", "pending", "a"), task("a")], {}, "a"),
        ([task("a", "approved"), task("b", "pending", "a")], {"review": True}, "b"),
        ([task("a", "completed"), task("b", "pending", "a")], {}, "b"),
        ([task("a", "completed"), task("b", "pending", "a")], {"review": True}, None),
        ([task("b", "pending", "old")], {"completed": ("old",)}, "b"),
        ([task("a", not_before=NOW + 5), task("b")], {}, "b"),
        ([task("a", not_before=NOW - 5), task("b")], {}, "a"),
        ([task("a", "requeue", not_before=NOW + 5)], {}, None),
        ([task("q", "queued"), task("r", "requeue")], {}, "q"),
        ([running("r"), task("solo", parallel_safe=False), task("c")], {}, "c"),
        ([running("solo", parallel_safe=False), task("c")], {}, None),
        ([task("solo", parallel_safe=False), task("c")], {}, "solo"),
        ([task("a", "pending_review", execution=EXECUTED), task("b")], {}, "a"),
        ([task("a", "pending_review", execution=EXECUTED, review=PARKED), task("b")], {}, "b"),
        ([task("a", "failed"), task("b", "cancelled"), task("c", "approved")], {}, None),
    ],
    ids=[
        "file-order",
        "dependency-first",
        "approved-satisfies",
        "completed-satisfies-without-review",
        "completed-waits-for-review",
        "archived-dependency",
        "not-due-yet",
        "due",
        "backing-off",
        "queued-and-requeue",
        "unsafe-waits-beside-others",
        "unsafe-runs-alone",
        "unsafe-alone-runs",
        "orphaned-review-resumes",
        "parked-review-waits",
        "nothing-left",
    ],
)
def test_the_next_task_is_the_first_ready_one_in_file_order(
    tasks: list[Task], extra: dict[str, Any], expected: str | None
) -> None:
    found = next_runnable(state_of(*tasks, **extra), NOW)
    assert (found.id if found else None) == expected


def held_by(worker_id: str, task_id: str) -> Task:
    return running(task_id, lease=LEASE.model_copy(update={"worker_id": worker_id}))


@pytest.mark.parametrize(
    ("tasks", "spare"),
    [
        ([held_by("me", "a"), task("b")], True),
        ([held_by("me", "a"), held_by("me", "b"), task("c")], True),
        ([held_by("me", "a"), held_by("x", "b"), task("c")], False),
        ([held_by("me", "a"), held_by("x", "b"), task("c"), task("d")], True),
        ([held_by("x", "a"), held_by("y", "b"), task("c"), task("d")], False),
        ([held_by("x", "a"), held_by("y", "b"), *(task(i) for i in "cde")], True),
        ([held_by("me", "a"), held_by("x", "b"), task("c"), task("d", "pending", "c")], False),
        ([held_by("me", "a"), held_by("x", "b"), task("c"), task("d", not_before=NOW + 9)], False),
        ([held_by("me", "a")], False),
    ],
    ids=[
        "alone",
        "alone-with-two",
        "one-other-one-task",
        "one-other-two-tasks",
        "two-others-two-tasks",
        "two-others-three-tasks",
        "a-dependent-is-not-runnable",
        "a-task-not-due-is-not-runnable",
        "nothing-runnable",
    ],
)
def test_a_task_is_claimed_ahead_only_with_one_to_spare_for_each_other_worker(
    tasks: list[Task], spare: bool
) -> None:
    """A worker with a task in flight claims one more only if, after it, every other
    worker at work could still claim one at once."""
    state = state_of(*tasks)
    found = spare_task(state, NOW, "me")
    assert (found is not None) is spare
    assert found is None or found == next_runnable(state, NOW)


def test_the_runnable_tasks_begin_with_the_next_one() -> None:
    state = state_of(task("a"), running("b"), task("c", "pending", "a"), task("d"))
    assert [t.id for t in runnable_tasks(state, NOW)] == ["a", "d"]
    assert next_runnable(state, NOW) == state.find("a")


@pytest.mark.parametrize(
    ("tasks", "drained", "stuck"),
    [
        ([task("a", "approved"), task("b", "failed")], True, set()),
        ([task("a", "approved"), task("b")], False, set()),
        ([task("a", not_before=NOW + 60)], False, set()),
        ([task("a", "pending_review", execution=EXECUTED)], False, set()),
        (
            [
                task("a", "pending_review", execution=EXECUTED, review=PARKED),
                task("b", "pending", "a"),
                task("c", "pending", "b"),
            ],
            True,
            {"a", "b", "c"},
        ),
    ],
    ids=["all-final", "one-waiting", "backing-off", "orphaned-review", "parked-chain"],
)
def test_drained_means_nothing_a_worker_could_run_without_an_operator(
    tasks: list[Task], drained: bool, stuck: set[str]
) -> None:
    state = state_of(*tasks)
    assert is_drained(state) is drained
    assert waiting_on_operator(state) == stuck


# --- retention ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finished", "retain", "archived"),
    [
        (10, 10, 0),
        (11, 10, 1),
        (105, 100, 0),
        (110, 100, 10),
        (3, 0, 3),
    ],
)
def test_retention_archives_the_oldest_finished_tasks_a_batch_at_a_time(
    finished: int, retain: int, archived: int
) -> None:
    tasks = [task(f"f{n}", "approved") for n in range(finished)]
    tasks.insert(0, task("live"))
    tasks.insert(2, running("busy"))
    chosen = archivable_ids(state_of(*tasks), retain)
    assert chosen == [f"f{n}" for n in range(archived)]


@pytest.mark.parametrize(
    ("status", "review", "outcome"),
    [
        (Status.FAILED, False, "failed"),
        (Status.CANCELLED, True, "failed"),
        (Status.SAFETY_BLOCKED, False, "failed"),
        (Status.APPROVED, True, "completed"),
        (Status.READY_FOR_MERGE, True, "completed"),
        (Status.COMPLETED, False, "completed"),
        (Status.COMPLETED, True, None),
        (Status.PENDING, False, None),
        (Status.PENDING_REVIEW, True, None),
    ],
)
def test_which_list_a_task_ends_in(status: Status, review: bool, outcome: str | None) -> None:
    assert outcome_of(task("a", status.value), review) == outcome


# --- operator actions ask the contract's table --------------------------------------------


@pytest.mark.parametrize("action", [OperatorAction.REQUEUE, OperatorAction.CANCEL])
@pytest.mark.parametrize(
    "subject",
    [task("a", status.value) for status in Status]
    + [task("a", "pending_review", execution=EXECUTED, review=PARKED)],
    ids=lambda t: t.status.value + ("-parked" if t.review else ""),
)
def test_an_operator_action_does_exactly_what_the_table_allows(
    subject: Task, action: OperatorAction
) -> None:
    state = state_of(subject.model_copy(update={"last_error": "boom", "not_before": NOW}))
    before = state.find("a")
    assert before is not None
    if not task_allows(before, action):
        with pytest.raises(InvalidTransition, match=f"cannot {action.value} task 'a'"):
            operate(state, before, action)
        assert state.find("a") is before
        return
    after = operate(state, before, action)
    if action == OperatorAction.REQUEUE:
        assert (after.status, after.review, after.last_error, after.not_before) == (
            Status.REQUEUE,
            None,
            None,
            None,
        )
    else:
        assert (after.status, after.last_error) == (Status.CANCELLED, "cancelled by the operator")


# --- every change goes through the contract ------------------------------------------------


@pytest.mark.parametrize("new", list(Status))
@pytest.mark.parametrize("old", list(Status))
def test_a_status_changes_only_as_the_contracts_table_allows(old: Status, new: Status) -> None:
    state = state_of(task("a", old.value))
    before = state.find("a")
    if can_transition(old, new):
        assert state.update("a", status=new).status == new
    else:
        with pytest.raises(InvalidTransition, match=f"set status {new} on task 'a': it is {old}"):
            state.update("a", status=new)
        assert state.find("a") is before and not state.changed


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"leese": None}, TypeError),
        ({"status": "in_progress", "last_eror": "x"}, TypeError),
        ({"attempts": -1}, ValidationError),
        ({"lease": {"worker_id": "w"}}, ValidationError),
        ({"status": "sleeping"}, ValidationError),
    ],
)
def test_a_change_to_an_unknown_field_or_of_the_wrong_type_changes_nothing(
    changes: dict[str, Any], error: type[Exception]
) -> None:
    state = state_of(task("a"))
    before = state.find("a")
    with pytest.raises(error):
        state.update("a", **changes)
    assert state.find("a") is before and not state.changed
    assert before is not None and before.model_extra == {}
