from __future__ import annotations

import pytest

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
