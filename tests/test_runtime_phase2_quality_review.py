"""Phases 2 and 5 of the design: every execution is reviewed, and approved work is rewarded.

Review: `pending_review`, then `approved` for accepted output, or `requeue` with the critic's
issues and `failed` at the retry limit, mirrored in quality_gate_queue.json. Unlike the
design's first worker, nothing is approved by default: a critic that cannot judge leaves the
task in `pending_review`. Reward: approved work under its budget pays its identity once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SCRIPTED_MODEL as MODEL
from conftest import read_events, read_queue, run_worker, write_queue
from fake_llm_server import FakeLLMServer

from runtime_contract import KNOWN_EXECUTION_STATUSES
from swarm_enrichment import RewardBook, grant_key
from swarm_runtime.contract import QualityGateStatus, Status, Verdict
from swarm_runtime.phases.critic import FEEDBACK_HEADING, Review, decide
from swarm_runtime.phases.quality_gate import QualityGate
from swarm_runtime.store.state_files import Workspace

CRITIC_MODEL = "gpt-4o"
HAIKU_TASK = "Write a haiku about message queues"
HAIKU = "Messages wait in line, the queue hums softly at night, workers drain the dawn."
APPROVE = Review(verdict=Verdict.APPROVE, confidence=0.95)
MINOR = Review(verdict=Verdict.MINOR_ISSUES, confidence=0.75, issues=["a placeholder is left"])
REJECT = Review(verdict=Verdict.REJECT, confidence=0.9, issues=["output is empty"])


@pytest.fixture
def provider() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(reply_text=HAIKU) as server:
        yield server


def work(workspace: Workspace, **env: str) -> None:
    env = {"SWARM_REQUEUE_BACKOFF": "0.05", "SWARM_POLL_INTERVAL": "0.05", **env}
    result = run_worker(workspace, "--once", **env)
    assert result.returncode == 0, result.stdout + result.stderr


def history(workspace: Workspace, task_id: str) -> list[str]:
    return [e["status"] for e in read_events(workspace) if e["task_id"] == task_id]


def events_of(workspace: Workspace, task_id: str, status: str) -> list[dict[str, Any]]:
    return [e for e in read_events(workspace) if e["task_id"] == task_id and e["status"] == status]


def task_status(workspace: Workspace, task_id: str) -> str:
    return next(t["status"] for t in read_queue(workspace)["tasks"] if t["id"] == task_id)


def gate_change(workspace: Workspace, task_id: str) -> dict[str, Any]:
    gate = json.loads(workspace.quality_gate_path.read_text())
    return dict(gate["changes"][task_id])


def send_back_to_review(workspace: Workspace, task_id: str) -> None:
    """An operator's hand edit: the task is to be reviewed again, its execution kept."""
    queue = read_queue(workspace)
    task = next(t for t in queue["tasks"] if t["id"] == task_id)
    task.update(status="pending_review", review=None)
    queue["completed"].remove(task_id)
    workspace.queue_path.write_text(json.dumps(queue))


def user_prompts(provider: FakeLLMServer, model: str = MODEL) -> list[str]:
    return [
        r["body"]["messages"][-1]["content"]
        for r in provider.requests
        if r["body"]["model"] == model
    ]


# --- phase 2: review ------------------------------------------------------------------------


def test_the_review_statuses_are_in_the_contract_vocabulary() -> None:
    assert {"pending_review", "approved", "requeue", "needs_qa"} <= KNOWN_EXECUTION_STATUSES


@pytest.mark.parametrize(
    ("review", "before", "previous", "outcome", "rejections", "error"),
    [
        (APPROVE, 0, None, Status.APPROVED, 0, None),
        (MINOR, 1, None, Status.APPROVED, 1, None),
        (REJECT, 0, None, Status.REQUEUE, 1, "Quality gate rejected task: output is empty"),
        (REJECT, 1, ["output is off topic"], Status.REQUEUE, 2, "output is empty"),
        (REJECT, 2, ["output is off topic"], Status.FAILED, 3, "after 3 attempt(s)"),
        (REJECT, 1, ["output is empty"], Status.FAILED, 2, "no progress"),
    ],
    ids=[
        "approve",
        "minor-issues",
        "first-reject",
        "second-reject",
        "reject-at-the-limit",
        "same-reject-twice",
    ],
)
def test_what_follows_a_review_with_three_attempts_allowed(
    review: Review,
    before: int,
    previous: list[str] | None,
    outcome: Status,
    rejections: int,
    error: str | None,
) -> None:
    decision = decide(review, rejections_before=before, max_attempts=3, previous_issues=previous)
    assert (decision.outcome, decision.rejections) == (outcome, rejections)
    if error is None:
        assert decision.errors is None
    else:
        assert decision.errors is not None and error in decision.errors


def test_the_quality_gate_mirror_holds_needs_qa_and_rejected(workspace: Workspace) -> None:
    gate = QualityGate(workspace)
    accepted = gate.record("good", HAIKU_TASK, MODEL, APPROVE, 0)
    rejected = gate.record("bad", HAIKU_TASK, MODEL, REJECT, 1)
    assert accepted.quality_gate_status == QualityGateStatus.NEEDS_QA
    assert rejected.quality_gate_status == QualityGateStatus.REJECTED
    assert gate_change(workspace, "good")["status"] == "needs_qa"
    assert gate_change(workspace, "bad")["status"] == "rejected"
    assert gate_change(workspace, "bad")["vote"]["issues"] == ["output is empty"]


def test_accepted_output_goes_pending_review_then_approved(
    api_url: str, workspace: Workspace
) -> None:
    write_queue(workspace, [{"id": "haiku", "prompt": HAIKU_TASK}], api_url)
    work(workspace)
    assert history(workspace, "haiku") == ["in_progress", "completed", "pending_review", "approved"]
    review = events_of(workspace, "haiku", "pending_review")[0]
    assert review["review_verdict"] == "APPROVE" and review["review_issues"] == []
    approved = events_of(workspace, "haiku", "approved")[0]
    assert approved["quality_gate_status"] == "needs_qa"
    assert approved["quality_gate_decision"] == "approved"
    assert approved["result_summary"] == HAIKU
    assert gate_change(workspace, "haiku")["status"] == "needs_qa"
    assert task_status(workspace, "haiku") == "approved"
    assert "haiku" in read_queue(workspace)["completed"]


def test_rejected_output_is_requeued_with_the_issues_then_fails_at_the_limit(
    api_url: str, workspace: Workspace, provider: FakeLLMServer
) -> None:
    answers = iter(
        [
            "I'm sorry, but I can't help with that.",
            "Bananas ripen quickly and make a fine breakfast for hungry athletes.",
        ]
    )
    provider.responder = lambda body: next(answers)
    write_queue(
        workspace, [{"id": "tokenizer", "prompt": "Write a tokenizer for arithmetic"}], api_url
    )
    work(workspace, SWARM_MAX_REQUEUE_ATTEMPTS="2")
    attempt = ["in_progress", "completed", "pending_review"]
    assert history(workspace, "tokenizer") == [*attempt, "requeue", *attempt, "failed"]
    requeue = events_of(workspace, "tokenizer", "requeue")[0]
    assert requeue["review_verdict"] == "REJECT" and requeue["review_attempt"] == 1
    assert requeue["quality_gate_status"] == "rejected"
    assert requeue["phase5_reward_applied"] is False
    first_issue = requeue["review_issues"][0]
    assert "refusal" in first_issue
    retry = user_prompts(provider)[1]
    assert FEEDBACK_HEADING in retry and first_issue in retry
    failed = events_of(workspace, "tokenizer", "failed")[0]
    assert "after 2 attempt(s)" in failed["errors"] and "off topic" in failed["errors"]
    assert gate_change(workspace, "tokenizer")["status"] == "rejected"
    assert task_status(workspace, "tokenizer") == "failed"
    assert "tokenizer" in read_queue(workspace)["failed"]


def test_a_critic_that_cannot_judge_never_approves_by_default(
    api_url: str, workspace: Workspace, provider: FakeLLMServer
) -> None:
    """Regression: the design's first worker approved whenever its verifier failed."""
    provider.responder = lambda body: "no verdict" if body["model"] == CRITIC_MODEL else HAIKU
    write_queue(workspace, [{"id": "unjudged", "prompt": HAIKU_TASK}], api_url)
    work(workspace, SWARM_CRITIC_MODEL=CRITIC_MODEL)
    assert history(workspace, "unjudged") == ["in_progress", "completed", "pending_review"]
    parked = events_of(workspace, "unjudged", "pending_review")[-1]
    assert parked["review_error"] and parked["review_verdict"] is None
    assert task_status(workspace, "unjudged") == "pending_review"
    assert "unjudged" not in read_queue(workspace)["completed"]
    assert not workspace.reward_ledger_path.exists()


# --- phase 5: rewards -----------------------------------------------------------------------


def test_approved_work_under_budget_is_rewarded_once_across_a_second_review(
    api_url: str, workspace: Workspace, provider: FakeLLMServer
) -> None:
    task = {
        "id": "task_phase5_reward",
        "prompt": HAIKU_TASK,
        "max_budget": 0.2,
        "identity_id": "identity_phase5",
    }
    write_queue(workspace, [task], api_url)
    work(workspace)
    first = events_of(workspace, "task_phase5_reward", "approved")[0]
    assert first["phase5_reward_applied"] is True
    awarded = first["phase5_reward_tokens_awarded"]
    assert first["phase5_reward_tokens_requested"] == awarded > 0
    assert first["phase5_reward_identity"] == "identity_phase5"
    assert first["phase5_reward_reason"].startswith(
        "worker_approved_under_budget:task_phase5_reward"
    )
    assert first["phase5_reward_ledger_recorded"] is True and first["phase5_reward_granted_at"]

    send_back_to_review(workspace, "task_phase5_reward")
    work(workspace)
    second = events_of(workspace, "task_phase5_reward", "approved")[1]
    assert second["phase5_reward_applied"] is False
    assert second["phase5_reward_reason"] == "already_granted"
    assert second["phase5_reward_ledger_recorded"] is True
    assert second["phase5_reward_tokens_awarded"] == awarded
    assert len(provider.requests) == 1, "the execution on record is reviewed, not run again"
    ledger = json.loads(workspace.reward_ledger_path.read_text())
    assert ledger["version"] == 1
    assert list(ledger["grants"]) == [grant_key("task_phase5_reward", "identity_phase5")]
    balance = json.loads(workspace.balances_path.read_text())["identities"]["identity_phase5"]
    assert balance["free_time_tokens"] + balance["journal_tokens"] == awarded


def test_work_not_under_budget_is_not_rewarded(workspace: Workspace) -> None:
    outcome = RewardBook(workspace).grant(
        "task_over", "identity_phase5", max_budget=0.10, budget_used=0.12, review_confidence=0.9
    )
    fields = outcome.event_fields()
    assert fields["phase5_reward_applied"] is False
    assert fields["phase5_reward_reason"] == "not_under_budget"
    assert fields["phase5_reward_tokens_awarded"] is None
    assert not workspace.reward_ledger_path.exists() and not workspace.balances_path.exists()
