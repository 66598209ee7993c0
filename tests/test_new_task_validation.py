"""The one check of a new task (queue.new_task), and that each front end uses it: the
command line's `add`, the panel's form and `/plan`.

Regression: `worker.py add` took a blank prompt, an empty command and a min_budget above
the max_budget that the panel refused, any length of text, and printed a raw pydantic
dump for a bad id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import read_events, read_queue, run_worker, write_queue
from flask import Flask

from swarm_runtime.api.plan import PlanError, plan_tasks
from swarm_runtime.contract import QueueDocument
from swarm_runtime.errors import TaskInputError
from swarm_runtime.panel.app import create_app
from swarm_runtime.panel.guards import CSRF_HEADER
from swarm_runtime.queue.new_task import (
    MAX_COMMAND_CHARS,
    MAX_MODEL_CHARS,
    MAX_PROMPT_CHARS,
    known_ids,
    validate_new_task,
)
from swarm_runtime.queue.store import QueueStore
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace

UNREACHABLE = "http://127.0.0.1:9"
PYDANTIC_WORDS = ("validation error", "pydantic", "Input should", "Value error")

UNKNOWN_LATER = (
    "depends_on: task 'later' is not in the queue: add it before a worker reaches this task,"
    " or this task fails"
)


def llm(**fields: Any) -> dict[str, Any]:
    return {"id": "t1", "prompt": "write a haiku", **fields}


def local(**fields: Any) -> dict[str, Any]:
    return {"id": "t1", "mode": "local", "command": "echo hi", **fields}


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        (llm(prompt=""), "prompt", "prompt must not be blank"),
        (llm(host="a b"), "host", "host 'a b' is not a name: letters, digits"),
        (llm(host=7), "host", "host 7 is not a name"),
        (llm(worker_labels=["gpu", "-x"]), "worker_labels", "worker_labels '-x' is not a name"),
        (llm(worker_labels={"a": 1}), "worker_labels", "must be a list of label names"),
        (llm(worker_labels=[f"l{i}" for i in range(17)]), "worker_labels", "at most 16"),
        (llm(prompt="  \n\t "), "prompt", "prompt must not be blank"),
        ({"id": "t1"}, "prompt", "prompt must not be blank"),
        (local(command=""), "command", "command must not be blank"),
        (local(command=None), "command", "command must not be blank"),
        (
            llm(min_budget=3.0, max_budget=1.0),
            "min_budget",
            "min_budget (3.0) is above max_budget (1.0)",
        ),
        (
            llm(min_budget=3.0),
            "min_budget",
            "min_budget (3.0) is above the default max_budget (0.1)",
        ),
        (
            llm(max_budget=0.01),
            "min_budget",
            "the default min_budget (0.05) is above max_budget (0.01)",
        ),
        (llm(max_budget=-1), "max_budget", "max_budget must be a finite amount, 0 or more"),
        (llm(max_budget=float("nan")), "max_budget", "finite amount"),
        (llm(max_budget=True), "max_budget", "max_budget must be a number of dollars"),
        (llm(min_budget="cheap"), "min_budget", "min_budget must be a number of dollars"),
        (
            llm(id="a b"),
            "id",
            "id 'a b' may only contain letters, digits, '.', '_' and '-'",
        ),
        (llm(id=".."), "id", "id '..' may only contain"),
        (llm(id="x" * 129), "id", "may only contain"),
        (llm(id="w\x1b[31m"), "id", "id 'w\\x1b[31m'"),
        (llm(id=""), "id", "id must not be empty"),
        (llm(id=None), "id", "id must not be empty"),
        (llm(id=7), "id", "id 7 may only contain"),
        (
            llm(prompt="p" * (MAX_PROMPT_CHARS + 1)),
            "prompt",
            "prompt is 100,001 characters long; at most 100,000 are allowed",
        ),
        (
            local(command="c" * (MAX_COMMAND_CHARS + 1)),
            "command",
            "command is 10,001 characters long; at most 10,000 are allowed",
        ),
        (llm(model="m" * (MAX_MODEL_CHARS + 1)), "model", "at most 200"),
        (llm(prompt=42), "prompt", "prompt must be text"),
        (llm(mode="remote"), "mode", "mode must be llm or local, not 'remote'"),
        (llm(depends_on=["../etc"]), "depends_on.0", "depends_on: '../etc' is not a task id"),
        (llm(depends_on={"a": 1}), "depends_on", "depends_on must be a list of task ids"),
        (llm(depends_on=["t1"]), "depends_on", "task 't1' cannot depend on itself"),
        (llm(intensity="extreme"), "intensity", "intensity must be one of low, medium, high"),
    ],
)
def test_a_bad_new_task_is_refused_naming_the_field(
    record: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(TaskInputError) as refused:
        validate_new_task(record)
    assert refused.value.field == field
    assert message in str(refused.value)
    assert not any(word in str(refused.value) for word in PYDANTIC_WORDS)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (llm(), {"id": "t1", "prompt": "write a haiku", "mode": "llm", "depends_on": []}),
        (
            {"id": "t1", "command": "ls"},
            {"id": "t1", "command": "ls", "mode": "local", "depends_on": []},
        ),
        (
            local(prompt="   ", model=" ", depends_on="a, b,a"),
            {"id": "t1", "mode": "local", "command": "echo hi", "depends_on": ["a", "b"]},
        ),
        (
            llm(host="host-a", worker_labels="gpu, x,gpu"),
            {
                "id": "t1",
                "prompt": "write a haiku",
                "mode": "llm",
                "depends_on": [],
                "host": "host-a",
                "worker_labels": ["gpu", "x"],
            },
        ),
        (
            llm(host="", worker_labels=[]),
            {"id": "t1", "prompt": "write a haiku", "mode": "llm", "depends_on": []},
        ),
        (
            llm(prompt="p" * MAX_PROMPT_CHARS, min_budget=0, max_budget=0),
            {
                "id": "t1",
                "prompt": "p" * MAX_PROMPT_CHARS,
                "mode": "llm",
                "min_budget": 0.0,
                "max_budget": 0.0,
                "depends_on": [],
            },
        ),
        (
            llm(intensity="high", note="kept"),
            {
                "id": "t1",
                "prompt": "write a haiku",
                "mode": "llm",
                "intensity": "high",
                "note": "kept",
                "depends_on": [],
            },
        ),
    ],
)
def test_a_good_new_task_comes_back_as_the_store_takes_it(
    record: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert validate_new_task(record, {"a", "b"}) == (expected, [])


def test_a_dependency_on_an_id_not_queued_yet_is_a_warning() -> None:
    checked = validate_new_task(llm(depends_on=["base", "later"]), {"base"})
    assert checked.record["depends_on"] == ["base", "later"]
    assert checked.warnings == [UNKNOWN_LATER]


def test_archived_tasks_count_as_known() -> None:
    doc = QueueDocument.model_validate(
        {"tasks": [{"id": "live"}], "completed": ["done"], "failed": ["broke"]}
    )
    assert known_ids(doc) == {"live", "done", "broke"}


# --- each front end uses it ----------------------------------------------------------------


def test_the_command_line_refuses_what_the_panel_refuses(workspace: Workspace) -> None:
    refused = [
        run_worker(workspace, "add", "t1", "   "),
        run_worker(workspace, "add", "t1", "", "--mode", "local"),
        run_worker(workspace, "add", "t1", "p", "--command", ""),
        run_worker(workspace, "add", "t1", "p", "--min-budget", "3", "--max-budget", "1"),
        run_worker(workspace, "add", "a b", "p"),
        run_worker(workspace, "add", "t1", "p" * (MAX_PROMPT_CHARS + 1)),
    ]
    assert [r.returncode for r in refused] == [2] * len(refused)
    errors = [r.stderr for r in refused]
    assert all(e.startswith("error: ") and e.count("\n") == 1 for e in errors), errors
    assert "prompt must not be blank" in errors[0]
    assert "command must not be blank" in errors[1] and "command must not be blank" in errors[2]
    assert "min_budget (3.0) is above max_budget (1.0)" in errors[3]
    assert "id 'a b' may only contain letters" in errors[4]
    assert "at most 100,000 are allowed" in errors[5]
    assert not workspace.queue_path.exists() or read_queue(workspace)["tasks"] == []


def test_the_command_line_warns_of_an_unknown_dependency(workspace: Workspace) -> None:
    added = run_worker(workspace, "add", "t1", "p", "--depends-on", "later")
    assert added.returncode == 0
    assert added.stderr == f"warning: {UNKNOWN_LATER}\n"
    assert read_queue(workspace)["tasks"][0]["depends_on"] == ["later"]


@pytest.fixture
def panel(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    yield app
    app.extensions["panel"].close()


def post_task(app: Flask, body: dict[str, Any]) -> Any:
    token = app.extensions["panel"].csrf_token
    return app.test_client().post(
        "/api/tasks", base_url="http://127.0.0.1:8421", json=body, headers={CSRF_HEADER: token}
    )


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (llm(min_budget=3.0, max_budget=1.0), "min_budget", "min_budget (3.0) is above"),
        (llm(id="a b"), "id", "id 'a b' may only contain"),
        (llm(prompt="p" * (MAX_PROMPT_CHARS + 1)), "prompt", "at most 100,000 are allowed"),
        (local(command=" "), "command", "command must not be blank"),
    ],
)
def test_the_panel_answers_400_with_the_validators_words(
    panel: Flask, workspace: Workspace, body: dict[str, Any], field: str, message: str
) -> None:
    reply = post_task(panel, body)
    assert reply.status_code == 400
    assert reply.get_json()["field"] == field and message in reply.get_json()["error"]
    assert not workspace.queue_path.exists()


def test_the_panel_returns_the_unknown_dependency_warning(
    panel: Flask, workspace: Workspace
) -> None:
    write_queue(workspace, [{"id": "base", "prompt": "p"}], UNREACHABLE)
    reply = post_task(panel, llm(depends_on=["base", "later"]))
    assert reply.status_code == 201
    assert reply.get_json()["warnings"] == [UNKNOWN_LATER]
    assert [e["operator_action"] for e in read_events(workspace)] == ["add"]


def planner(*descriptions: str) -> SimpleNamespace:
    reply = json.dumps([{"description": text, "priority": "low"} for text in descriptions])
    call = SimpleNamespace(text=reply, model="offline")
    return SimpleNamespace(call_llm=lambda *args, **kwargs: call)


def test_plan_queues_nothing_when_a_proposal_fails_the_validator(
    workspace: Workspace, settings: Settings
) -> None:
    store = QueueStore.for_settings(workspace, settings)
    with pytest.raises(PlanError, match="prompt must not be blank"):
        plan_tasks(planner("Add tests", " \t\n ", "Add docs"), store, workspace)
    assert store.load().tasks == []


def test_plan_queues_proposals_that_pass_it(workspace: Workspace, settings: Settings) -> None:
    store = QueueStore.for_settings(workspace, settings)
    planned = plan_tasks(planner("Add tests", "Add docs", "Add types"), store, workspace)
    tasks = store.load().tasks
    assert planned["task_ids"] == [task.id for task in tasks]
    assert [(t.prompt, t.min_budget, t.max_budget) for t in tasks][0] == ("Add tests", 0.02, 0.05)
