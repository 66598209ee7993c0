"""Phase 3 of the design: prompt tasks are routed to a known tool before they reach the model.

A matching skill's code is injected under RELEVANT TOOL CONTEXT, in front of `TASK:` and the
task's own text, and the route is recorded in the events (`tool_route`, `tool_name`,
`tool_confidence`). The prompt is checked here as the provider received it, through a real
worker.py and swarm.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import read_events, run_worker, write_queue
from fake_llm_server import FakeLLMServer

from swarm_runtime.contract import ToolRoute
from swarm_runtime.phases.routing import BUILTIN_TOOLS, Tool, compose, load_router
from swarm_runtime.store.state_files import Workspace

SKILL = "phase3_exact_skill"
SKILL_CODE = "def phase3_exact_skill(title: str) -> str:\n    return title.strip().upper()\n"
STORE = {
    SKILL: {
        "description": "Upper-case a title for the phase 3 regression suite.",
        "keywords": ["phase3"],
        "code": SKILL_CODE,
    }
}
EXACT_TASK = f"Please run {SKILL} on this task."
SEMANTIC_TASK = "Retry the flaky network call with exponential backoff and jitter"
PLAIN_TASK = "Write a haiku about message queues"
TWO_PART_TASK = (
    "Load the settings JSON with a clear error for malformed files, "
    "and save json atomically so a crash never corrupts it"
)


def builtin(name: str) -> Tool:
    return next(tool for tool in BUILTIN_TOOLS if tool.name == name)


def route_fields(event: dict[str, Any]) -> tuple[Any, Any, Any]:
    return event["tool_route"], event["tool_name"], event["tool_confidence"]


@pytest.mark.parametrize(
    ("store", "prompt", "name"),
    [
        ({}, "Please run read_json_safe on this task.", "read_json_safe"),
        (STORE, EXACT_TASK, SKILL),
    ],
    ids=["builtin-skill-empty-store", "operator-skill"],
)
def test_a_named_skill_routes_exact(
    workspace: Workspace, store: dict[str, Any], prompt: str, name: str
) -> None:
    workspace.tool_store_path.write_text(json.dumps(store))
    decision = load_router(workspace).route(prompt)
    assert decision.route == ToolRoute.EXACT
    assert decision.tool is not None and decision.tool.name == name
    assert decision.confidence == 1.0


def test_two_skills_compose_in_the_order_given() -> None:
    first, second = builtin("retry_with_backoff"), builtin("http_get_json")
    composed = compose([first, second])
    assert composed.name == "composed_retry_with_backoff_http_get_json"
    header_one = composed.code.index("Skill: retry_with_backoff")
    assert 0 <= header_one < composed.code.index("Skill: http_get_json")


def test_a_task_with_two_parts_routes_to_a_composed_skill(workspace: Workspace) -> None:
    decision = load_router(workspace).route(TWO_PART_TASK)
    assert decision.route == ToolRoute.COMPOSED
    assert decision.components == ("read_json_safe", "write_json_atomic")
    assert decision.tool is not None and decision.tool.name.startswith("composed_")
    assert "Skill: read_json_safe" in decision.tool.code
    assert "Skill: write_json_atomic" in decision.tool.code


def test_the_dispatched_prompt_carries_the_tool_context(
    api_url: str, workspace: Workspace, provider: FakeLLMServer
) -> None:
    workspace.tool_store_path.write_text(json.dumps(STORE))
    write_queue(
        workspace,
        [
            {"id": "exact", "prompt": EXACT_TASK},
            {"id": "semantic", "prompt": SEMANTIC_TASK},
            {"id": "plain", "prompt": PLAIN_TASK},
        ],
        api_url,
    )
    result = run_worker(workspace, "--once")
    assert result.returncode == 0, result.stdout + result.stderr
    exact, semantic, plain = (r["body"]["messages"][-1]["content"] for r in provider.requests)
    for prompt, name, route, task in [
        (exact, SKILL, "exact", EXACT_TASK),
        (semantic, "retry_with_backoff", "semantic", SEMANTIC_TASK),
    ]:
        assert "RELEVANT TOOL CONTEXT" in prompt and f"TASK:\n{task}" in prompt
        assert f"TOOL_NAME: {name}" in prompt and f"TOOL_ROUTE: {route}" in prompt
        assert prompt.index("RELEVANT TOOL CONTEXT") < prompt.index(f"TASK:\n{task}")
    assert SKILL_CODE.strip() in exact
    assert "RELEVANT TOOL CONTEXT" not in plain and PLAIN_TASK in plain

    executed = {e["task_id"]: e for e in read_events(workspace) if e["status"] == "completed"}
    assert route_fields(executed["exact"]) == ("exact", SKILL, 1.0)
    assert route_fields(executed["semantic"])[:2] == ("semantic", "retry_with_backoff")
    assert 0.6 <= executed["semantic"]["tool_confidence"] < 1.0
    assert route_fields(executed["plain"]) == ("generate", None, None)
    approved = {e["task_id"]: e for e in read_events(workspace) if e["status"] == "approved"}
    assert {task: route_fields(e) for task, e in approved.items()} == {
        task: route_fields(e) for task, e in executed.items()
    }
