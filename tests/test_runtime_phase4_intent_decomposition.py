"""Phase 4 of the design: complex prompts become dependent subtasks, and intent is never lost.

A deterministic gut check scores a prompt; at 2 or more it is split into one subtask per
action, each depending on the one before, and the parent waits for all of them. The user's
intent is persisted and sent, as a `## USER INTENT (Do not deviate)` block, at the head of
every llm prompt: the subtasks', the parent's, and a plain task's.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import read_events, read_queue, run_worker, write_queue
from fake_llm_server import FakeLLMServer

from swarm_runtime.contract import Task
from swarm_runtime.phases.decomposition import (
    RESULTS_HEADING,
    break_into_features,
    gut_check,
    plan_decomposition,
    should_plan,
)
from swarm_runtime.phases.intent import INTENT_HEADING, extract_intent
from swarm_runtime.store.state_files import Workspace

ISSUE_PROMPT = "Implement auth API, add integration tests, and then update deployment docs."
COMMA_PROMPT = "Implement auth API, add integration tests, update deployment docs."
DESCRIPTIVE_PROMPT = "Implement auth API, with OAuth2 support and refresh tokens."
LOGIN_PROMPT = "Create login endpoint and add integration tests, then update docs."
PLAIN_PROMPT = "Write a haiku about message queues"
THREE = ["Implement auth API", "Add integration tests", "Update deployment docs"]


def decomposes(task_id: str, prompt: str) -> bool:
    task = Task(id=task_id, prompt=prompt)
    return should_plan(task, gut_check(prompt), break_into_features(prompt))[0]


def prompts_sent(provider: FakeLLMServer) -> list[str]:
    return [request["body"]["messages"][-1]["content"] for request in provider.requests]


def tasks_by_id(workspace: Workspace) -> dict[str, dict[str, Any]]:
    return {task["id"]: task for task in read_queue(workspace)["tasks"]}


# --- the gut check and the feature breakdown ------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "signals"),
    [
        (ISSUE_PROMPT, {"sequencing_connectors", "compound_clauses"}),
        (COMMA_PROMPT, {"comma_enumeration"}),
    ],
    ids=["multi-clause", "comma-enumeration"],
)
def test_the_gut_check_flags_a_prompt_with_several_actions(prompt: str, signals: set[str]) -> None:
    check = gut_check(prompt)
    assert check.score >= 2
    assert signals <= set(check.signals)
    assert decomposes("auth", prompt)


@pytest.mark.parametrize("prompt", [ISSUE_PROMPT, COMMA_PROMPT], ids=["connector", "commas"])
def test_the_feature_breakdown_finds_each_action_exactly(prompt: str) -> None:
    assert break_into_features(prompt) == THREE


def test_a_descriptive_comma_clause_stays_with_its_action() -> None:
    features = break_into_features(DESCRIPTIVE_PROMPT)
    assert features == ["Implement auth API, with OAuth2 support and refresh tokens"]
    assert not any(feature.lower().startswith("with oauth2 support") for feature in features)
    assert not decomposes("auth", DESCRIPTIVE_PROMPT)


# --- the plan -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "features"),
    [
        (LOGIN_PROMPT, ["Create login endpoint and add integration tests", "Update docs"]),
        (COMMA_PROMPT, THREE),
    ],
    ids=["connector", "commas"],
)
def test_a_plan_chains_its_subtasks_and_the_parent_waits_for_all(
    prompt: str, features: list[str]
) -> None:
    parent = Task(id="feature", prompt=prompt, depends_on=["setup"])
    plan = plan_decomposition(parent, extract_intent(prompt), gut_check(prompt), features)
    ids = [f"feature__phase4_{n:02d}" for n in range(1, len(features) + 1)]
    assert plan.subtask_ids == ids and plan.features == features
    assert [sub["depends_on"] for sub in plan.subtasks] == [["setup"], *([i] for i in ids[:-1])]
    for subtask, feature in zip(plan.subtasks, features, strict=True):
        assert subtask["phase4_generated"] is True and subtask["phase4_parent_task"] == "feature"
        assert subtask["prompt"].startswith(feature)
        assert subtask["phase4_intent"]["goal"] == extract_intent(prompt).goal
    updates = plan.parent_updates
    assert updates["depends_on"] == ["setup", *ids]
    assert updates["phase4_planned"] is True
    assert updates["phase4_intent"]["goal"] == extract_intent(prompt).goal
    assert updates["phase4_plan"]["subtasks"] == ids


# --- through real processes -----------------------------------------------------------------


def test_a_complex_prompt_runs_as_a_chain_of_subtasks(
    api_url: str, workspace: Workspace, provider: FakeLLMServer
) -> None:
    write_queue(workspace, [{"id": "auth", "prompt": ISSUE_PROMPT}], api_url)
    result = run_worker(workspace, "--once")
    assert result.returncode == 0, result.stdout + result.stderr
    subtasks = ["auth__phase4_01", "auth__phase4_02", "auth__phase4_03"]
    planned = next(e for e in read_events(workspace) if e["status"] == "queued")
    assert planned["task_id"] == "auth" and planned["phase4_plan_generated"] is True
    assert planned["phase4_subtasks"] == subtasks and planned["phase4_subtasks_added"] == 3
    assert planned["phase4_features"] == THREE
    assert planned["phase4_complexity_score"] >= 2

    tasks = tasks_by_id(workspace)
    assert set(tasks) == {"auth", *subtasks}
    assert [tasks[sub]["depends_on"] for sub in subtasks] == [[], [subtasks[0]], [subtasks[1]]]
    assert set(subtasks) <= set(tasks["auth"]["depends_on"])
    assert tasks["auth"]["phase4_planned"] is True
    assert tasks["auth"]["phase4_intent"]["goal"] == extract_intent(ISSUE_PROMPT).goal
    assert all(tasks[sub]["phase4_parent_task"] == "auth" for sub in subtasks)
    assert {task["status"] for task in tasks.values()} == {"approved"}
    approvals = [e["task_id"] for e in read_events(workspace) if e["status"] == "approved"]
    assert approvals == [*subtasks, "auth"]

    prompts = prompts_sent(provider)
    assert len(prompts) == 4
    for prompt in prompts:
        assert prompt.startswith(INTENT_HEADING)
        assert f"Goal: {extract_intent(ISSUE_PROMPT).goal}" in prompt
    assert RESULTS_HEADING in prompts[-1]


def test_a_plain_llm_task_also_carries_the_intent_block(
    api_url: str, workspace: Workspace, provider: FakeLLMServer
) -> None:
    """Regression: only decomposed tasks carried the intent; the design wants it on every
    llm task, so a simple prompt keeps its goal in front of everything added to it."""
    write_queue(workspace, [{"id": "haiku", "prompt": PLAIN_PROMPT}], api_url)
    result = run_worker(workspace, "--once")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "queued" not in {e["status"] for e in read_events(workspace)}
    [prompt] = prompts_sent(provider)
    assert prompt.startswith(INTENT_HEADING)
    assert f"Goal: {PLAIN_PROMPT}" in prompt
    assert prompt.rstrip().endswith(PLAIN_PROMPT)
