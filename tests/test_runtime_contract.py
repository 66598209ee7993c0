from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from swarm_runtime import contract
from swarm_runtime.store.events import build_event, cap_text


def test_normalize_task_fills_design_defaults_and_keeps_unknown_keys() -> None:
    task = contract.normalize_task({"id": "t1", "prompt": "hi", "owner": "ops"})
    assert task["type"] == "cycle"
    assert task["depends_on"] == []
    assert task["parallel_safe"] is True
    assert task["status"] == "pending"
    assert task["owner"] == "ops"


def test_normalize_task_keeps_a_present_null_and_infers_local_mode() -> None:
    assert contract.normalize_task({"id": "t", "type": None})["type"] is None
    assert contract.normalize_task({"id": "t", "command": "ls"})["mode"] == "local"
    assert "mode" not in contract.normalize_task({"id": "t", "prompt": "p", "command": "ls"})


def test_normalize_queue_puts_canonical_keys_first_and_keeps_the_rest() -> None:
    queue = contract.normalize_queue({"tasks": [{"id": "a"}, "junk"], "note": "x"})
    assert list(queue)[:5] == ["version", "api_endpoint", "tasks", "completed", "failed"]
    assert queue["version"] == contract.QUEUE_CONTRACT_VERSION
    assert queue["api_endpoint"] == contract.DEFAULT_API_ENDPOINT
    assert [t["id"] for t in queue["tasks"]] == ["a"]
    assert queue["note"] == "x"


@pytest.mark.parametrize(
    ("queue", "expected"),
    [
        ([], ["queue must be a JSON object"]),
        (
            {"tasks": []},
            [
                "missing key: version",
                "missing key: api_endpoint",
                "missing key: completed",
                "missing key: failed",
            ],
        ),
        ({**contract.empty_queue(), "tasks": {}}, ["tasks must be a list"]),
        ({**contract.empty_queue(), "tasks": [3]}, ["tasks[0] must be an object"]),
        (
            {**contract.empty_queue(), "tasks": [{"prompt": "x"}]},
            ["tasks[0] is missing non-empty id"],
        ),
    ],
)
def test_validate_queue_contract_reports_readable_errors(
    queue: object, expected: list[str]
) -> None:
    assert contract.validate_queue_contract(queue) == expected


def test_validation_names_the_task_and_field_at_fault() -> None:
    queue = {
        **contract.empty_queue(),
        "tasks": [
            {"id": "a"},
            {"id": "a"},
            {"id": "../etc"},
            {"id": "b", "depends_on": 5},
            {"id": "c", "max_budget": "lots"},
        ],
    }
    errors = contract.validate_queue_contract(queue)
    assert "tasks[1] duplicates the id 'a' of tasks[0]" in errors
    assert any(e.startswith("tasks[2].id '../etc' must match") for e in errors)
    assert any(e.startswith("tasks[3] (id 'b').depends_on") for e in errors)
    assert any(e.startswith("tasks[4] (id 'c').max_budget") for e in errors)


def test_empty_queue_is_valid() -> None:
    assert contract.validate_queue_contract(contract.empty_queue()) == []


@pytest.mark.parametrize(
    "status",
    [
        "queued",
        "in_progress",
        "completed",
        "failed",
        "pending_review",
        "approved",
        "requeue",
        "needs_qa",
        "needs_integration",
        "needs_e2e",
        "ready_for_merge",
        "subtask_started",
        "subtask_completed",
        "subtask_failed",
        "safety_blocked",
        "cancelled",
        "lease_expired",
    ],
)
def test_known_execution_statuses(status: str) -> None:
    assert contract.is_known_execution_status(status)


@pytest.mark.parametrize("status", ["done", "", None, 3, "APPROVED"])
def test_unknown_statuses_are_rejected(status: object) -> None:
    assert not contract.is_known_execution_status(status)


@pytest.mark.parametrize(
    ("task_id", "valid"),
    [
        ("t1", True),
        ("a.b_c-d", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("a/b", False),
        ("../x", False),
        ("a b", False),
        ("é", False),
    ],
)
def test_task_ids_are_safe_file_names(task_id: str, valid: bool) -> None:
    assert contract.is_valid_task_id(task_id) is valid


def test_review_changes_what_satisfies_a_dependency() -> None:
    assert "completed" in contract.satisfying_statuses(review_enabled=False)
    assert "completed" not in contract.satisfying_statuses(review_enabled=True)
    assert "approved" in contract.satisfying_statuses(review_enabled=True)


def test_events_carry_the_envelope_and_null_keys() -> None:
    event = build_event("t1", "w1", contract.Status.FAILED, errors="boom")
    assert list(event)[:4] == ["task_id", "worker_id", "status", "timestamp"]
    assert event["status"] == "failed"
    assert "+00:00" in event["timestamp"]
    for key in (
        "started_at",
        "completed_at",
        "result_summary",
        "model",
        "budget_used",
        "safety_passed",
        "safety_report",
        "tool_route",
        "tool_name",
        "tool_confidence",
    ):
        assert key in event and event[key] is None
    assert event["errors"] == "boom"


def test_large_event_fields_are_capped_with_a_marker() -> None:
    huge = "é" * 70_000
    event = build_event(
        "t1", "w1", contract.Status.COMPLETED, output=huge, safety_report={"blob": "x" * 70_000}
    )
    assert len(event["output"].encode()) < 66 * 1024
    assert "truncated" in event["output"]
    assert event["safety_report"]["truncated"] is True
    assert cap_text("short") == "short"


def test_cycle_request_rejects_bad_fields() -> None:
    with pytest.raises(ValueError):
        contract.CycleRequest(prompt="x", max_tokens=0)
    with pytest.raises(ValueError):
        contract.CycleRequest(prompt="x", mode="shell")
    assert contract.CycleRequest(task="ls").effective_mode == contract.Mode.LOCAL
    assert contract.CycleRequest(prompt="p", task="ls").effective_mode == contract.Mode.LLM


# --- the reference's spellings ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "prompt", "command", "mode"),
    [
        ({"instruction": "say hi"}, "say hi", None, "llm"),
        ({"description": "say hi"}, "say hi", None, "llm"),
        ({"atomic_instruction": "say hi"}, "say hi", None, "llm"),
        ({"task": "say hi"}, "say hi", None, "llm"),
        ({"prompt": "p", "instruction": "i"}, "p", None, "llm"),
        ({"prompt": "  ", "instruction": "i"}, "i", None, "llm"),
        ({"prompt": None, "instruction": "i"}, "i", None, "llm"),
        ({"instruction": "", "description": "d", "task": "t"}, "d", None, "llm"),
        ({"instruction": 5, "description": "d"}, "d", None, "llm"),
        ({"shell": "echo hi"}, None, "echo hi", "local"),
        ({"command": "ls", "shell": "echo hi"}, None, "ls", "local"),
        ({"instruction": "i", "shell": "echo hi"}, "i", "echo hi", "llm"),
        ({"mode": "local", "task": "ls"}, "ls", None, "local"),
    ],
)
def test_a_blank_prompt_or_command_is_read_from_the_references_other_names(
    raw: dict, prompt: str | None, command: str | None, mode: str
) -> None:
    task = contract.Task.model_validate({"id": "t", **raw})
    assert (task.prompt, task.command, task.effective_mode.value) == (prompt, command, mode)


@pytest.mark.parametrize(
    ("raw", "filled"),
    [
        ({"id": "t", "instruction": "say hi"}, {}),
        ({"id": "t", "shell": "echo hi", "owner": "ops"}, {}),
        ({"id": "t", "prompt": "p", "instruction": "kept as a note"}, {}),
        # A blank canonical field the file did have is written with the text it took.
        ({"id": "t", "prompt": None, "instruction": "say hi"}, {"prompt": "say hi"}),
        ({"id": "t", "prompt": "", "description": "d", "task": "t"}, {"prompt": "d"}),
    ],
)
def test_a_spelled_task_is_written_back_as_the_user_wrote_it(raw: dict, filled: dict) -> None:
    task = contract.Task.model_validate(raw)
    assert json.loads(task.model_dump_json(exclude_unset=True)) == {**raw, **filled}
    changed = task.model_copy(deep=True)  # copies keep the spelling too
    changed.status = contract.Status.IN_PROGRESS
    assert json.loads(changed.model_dump_json(exclude_unset=True)) == {
        **raw,
        **filled,
        "status": "in_progress",
    }


def test_a_canonical_field_of_the_wrong_type_is_not_hidden_by_another_spelling() -> None:
    with pytest.raises(ValidationError, match="prompt"):
        contract.Task.model_validate({"id": "t", "prompt": 5, "instruction": "i"})


def test_normalize_task_infers_local_mode_from_shell_without_adding_keys() -> None:
    task = contract.normalize_task({"id": "t", "shell": "ls"})
    assert task["mode"] == "local" and "command" not in task
    assert "mode" not in contract.normalize_task({"id": "t", "instruction": "i", "shell": "ls"})


# --- normalising, not refusing ----------------------------------------------------------

REFERENCE_EMPTY_QUEUE = {"version": "1.0", "api_endpoint": "http://127.0.0.1:8420", "tasks": []}


@pytest.mark.parametrize(
    "queue",
    [
        REFERENCE_EMPTY_QUEUE,
        {},
        {"tasks": [{"id": "t1", "instruction": "say hi"}]},
        {"version": 1.0, "tasks": None, "completed": None, "failed": None},
    ],
)
def test_a_queue_missing_keys_is_usable_once_normalized(queue: dict) -> None:
    assert contract.queue_problems(queue) == []
    normalized = contract.normalize_queue(queue)
    assert contract.validate_queue_contract(normalized) == []
    contract.QueueDocument.model_validate(normalized)


@pytest.mark.parametrize(
    ("queue", "expected"),
    [
        ([], "queue must be a JSON object"),
        ({"tasks": {}}, "tasks must be a list"),
        ({"completed": "a"}, "completed must be a list of task ids"),
        ({"version": {"major": 1}}, "version must be a string or a number"),
        ({"tasks": [{"id": "a"}, {"id": "a"}]}, "tasks[1] duplicates the id 'a' of tasks[0]"),
    ],
)
def test_queue_problems_are_wrong_types_and_duplicate_ids(queue: object, expected: str) -> None:
    assert expected in contract.queue_problems(queue)


# --- the transition table ---------------------------------------------------------------

S = contract.Status


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        (S.PENDING, S.IN_PROGRESS, True),
        (S.REQUEUE, S.IN_PROGRESS, True),
        (S.QUEUED, S.FAILED, True),
        (S.PENDING, S.CANCELLED, True),
        (S.IN_PROGRESS, S.COMPLETED, True),
        (S.IN_PROGRESS, S.PENDING_REVIEW, True),
        (S.IN_PROGRESS, S.SAFETY_BLOCKED, True),
        (S.IN_PROGRESS, S.QUEUED, True),
        (S.IN_PROGRESS, S.PENDING, True),
        (S.PENDING_REVIEW, S.APPROVED, True),
        (S.PENDING_REVIEW, S.REQUEUE, True),
        (S.PENDING_REVIEW, S.PENDING_REVIEW, True),
        (S.FAILED, S.REQUEUE, True),
        (S.CANCELLED, S.REQUEUE, True),
        (S.PENDING, S.APPROVED, False),
        (S.PENDING, S.COMPLETED, False),
        (S.IN_PROGRESS, S.APPROVED, False),
        (S.IN_PROGRESS, S.CANCELLED, False),
        (S.PENDING_REVIEW, S.COMPLETED, False),
        (S.FAILED, S.PENDING, False),
        (S.FAILED, S.IN_PROGRESS, False),
        (S.COMPLETED, S.REQUEUE, False),
        (S.APPROVED, S.FAILED, False),
        (S.NEEDS_QA, S.IN_PROGRESS, False),
    ],
)
def test_which_status_may_follow_which(
    old: contract.Status, new: contract.Status, allowed: bool
) -> None:
    assert contract.can_transition(old, new) is allowed


@pytest.mark.parametrize("status", list(contract.Status))
def test_every_status_may_stay_as_it_is(status: contract.Status) -> None:
    assert contract.can_transition(status, status)


@pytest.mark.parametrize("status", sorted(contract.APPROVED_STATUSES | {S.COMPLETED}))
def test_a_task_that_ended_well_never_moves_again(status: contract.Status) -> None:
    assert not [
        new for new in contract.Status if new != status and contract.can_transition(status, new)
    ]


@pytest.mark.parametrize(
    ("action", "status", "allowed"),
    [
        (contract.OperatorAction.REQUEUE, S.FAILED, True),
        (contract.OperatorAction.REQUEUE, S.SAFETY_BLOCKED, True),
        (contract.OperatorAction.REQUEUE, S.CANCELLED, True),
        (contract.OperatorAction.REQUEUE, S.PENDING_REVIEW, True),
        (contract.OperatorAction.REQUEUE, S.PENDING, False),
        (contract.OperatorAction.REQUEUE, S.APPROVED, False),
        (contract.OperatorAction.REQUEUE, S.IN_PROGRESS, False),
        (contract.OperatorAction.CANCEL, S.PENDING, True),
        (contract.OperatorAction.CANCEL, S.QUEUED, True),
        (contract.OperatorAction.CANCEL, S.REQUEUE, True),
        (contract.OperatorAction.CANCEL, S.IN_PROGRESS, False),
        (contract.OperatorAction.CANCEL, S.FAILED, False),
        (contract.OperatorAction.REQUEUE_FAILED, S.FAILED, True),
        (contract.OperatorAction.REQUEUE_FAILED, S.SAFETY_BLOCKED, False),
        (contract.OperatorAction.REQUEUE_FAILED, S.CANCELLED, False),
        (contract.OperatorAction.ADD, S.PENDING, False),
    ],
)
def test_which_operator_action_applies_from_which_status(
    action: contract.OperatorAction, status: contract.Status, allowed: bool
) -> None:
    assert contract.action_allowed(action, status) is allowed


@pytest.mark.parametrize(
    ("action", "rule"), list(contract.OPERATOR_ACTIONS.items()), ids=lambda v: str(v)
)
def test_every_operator_action_is_a_transition_the_table_allows(
    action: contract.OperatorAction, rule: contract.ActionRule
) -> None:
    assert rule.allowed_from
    for status in rule.allowed_from:
        assert contract.can_transition(status, rule.leads_to), (action, status)


@pytest.mark.parametrize(
    ("task", "actions"),
    [
        ({"status": "failed"}, ["requeue"]),
        ({"status": "cancelled"}, ["requeue"]),
        ({"status": "pending"}, ["cancel"]),
        ({"status": "approved"}, []),
        ({"status": "pending_review", "review": {"error": "critic down"}}, ["requeue"]),
        ({"status": "pending_review"}, []),
        ({"status": "pending_review", "review": {"attempt": 1}}, []),
    ],
)
def test_a_tasks_own_actions_leave_out_the_whole_queue_ones(task: dict, actions: list[str]) -> None:
    allowed = contract.allowed_actions(contract.Task.model_validate({"id": "t", **task}))
    assert [a.value for a in allowed] == actions


# --- our own writes are checked ---------------------------------------------------------


def test_a_misspelt_field_name_is_an_error_with_a_hint() -> None:
    contract.check_task_fields("t", ["lease", "status", "phase4_intent"])
    with pytest.raises(TypeError, match="task 't' has no field 'leese'; did you mean 'lease'"):
        contract.check_task_fields("t", ["status", "leese"])
