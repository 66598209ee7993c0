from __future__ import annotations

import time
from typing import Any

import pytest

from swarm_runtime.contract import Mode, PlanFields, Status, Task, is_valid_task_id
from swarm_runtime.phases.decomposition import (
    NO_RESULT,
    RESULT_CAP_BYTES,
    RESULTS_END,
    RESULTS_HEADING,
    SIGNALS,
    GutCheck,
    break_into_features,
    gut_check,
    parent_prompt_with_results,
    plan_decomposition,
    plan_event_fields,
    should_plan,
)
from swarm_runtime.phases.intent import UserIntent, extract_intent

ISSUE_PROMPT = "Implement auth API, add integration tests, and then update deployment docs."
COMMA_PROMPT = "Implement auth API, add integration tests, update deployment docs."
DESCRIPTIVE_PROMPT = "Implement auth API, with OAuth2 support and refresh tokens."
THREE = ["Implement auth API", "Add integration tests", "Update deployment docs"]


# --- gut check ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signal", "prompt", "fires"),
    [
        ("long_prompt", "x" * 220, True),
        ("long_prompt", "x" * 219, False),
        ("long_prompt", "  " + "x" * 219 + "  ", False),
        ("multi_line", "Build the viewer\nShip it", True),
        ("multi_line", "Build the viewer\n\n   \n", False),
        ("sequencing_connectors", "Build it then ship it", True),
        ("sequencing_connectors", "Build it. Also, ship it", True),
        ("sequencing_connectors", "Build it plus docs", True),
        ("sequencing_connectors", "Build it, AFTER THAT ship", True),
        ("sequencing_connectors", "Next, ship it", True),
        ("sequencing_connectors", "Finally ship it", True),
        ("sequencing_connectors", "Fix the authentication flow", False),
        ("sequencing_connectors", "Handle surplus items", False),
        ("sequencing_connectors", "Deploy thence", False),
        ("sequencing_connectors", "Build the nextgen viewer", False),
        ("sequencing_connectors", "Finalize the aftermath", False),
        ("comma_enumeration", "Add a, b, c", True),
        ("comma_enumeration", "Add a; b, c", True),
        ("comma_enumeration", "Add a, b", False),
        ("compound_clauses", "Create login endpoint and add integration tests", True),
        ("compound_clauses", COMMA_PROMPT, True),
        ("compound_clauses", "- Write the parser\n- Test the parser", True),
        ("compound_clauses", DESCRIPTIVE_PROMPT, False),
        ("compound_clauses", "Add tests and docs for the parser", False),
        ("compound_clauses", "Write the address parser", False),
    ],
)
def test_each_signal_fires_only_on_its_rule(signal: str, prompt: str, fires: bool) -> None:
    assert (signal in gut_check(prompt).signals) is fires


@pytest.mark.parametrize(
    ("prompt", "signals"),
    [
        (ISSUE_PROMPT, ["sequencing_connectors", "comma_enumeration", "compound_clauses"]),
        (COMMA_PROMPT, ["comma_enumeration", "compound_clauses"]),
        (
            "Create login endpoint and add integration tests, then update docs.",
            ["sequencing_connectors", "compound_clauses"],
        ),
        (DESCRIPTIVE_PROMPT, []),
        ("Build the 3D viewer", []),
    ],
)
def test_score_counts_signals_in_fixed_order(prompt: str, signals: list[str]) -> None:
    check = gut_check(prompt)
    assert check.signals == signals and check.score == len(signals)


def test_every_signal_at_once_keeps_the_declared_order() -> None:
    prompt = (ISSUE_PROMPT + "\n") * 4
    assert gut_check(prompt) == GutCheck(score=5, signals=list(SIGNALS))


# --- the decision -------------------------------------------------------------------------


def task(**fields: Any) -> Task:
    return Task.model_validate({"id": "parent", "prompt": ISSUE_PROMPT, **fields})


BUSY = GutCheck(score=3, signals=["sequencing_connectors", "comma_enumeration", "compound_clauses"])
CALM = GutCheck(score=1, signals=["comma_enumeration"])


@pytest.mark.parametrize(
    ("fields", "check", "features", "reason"),
    [
        ({"mode": "local", "command": "echo hi"}, BUSY, THREE, "local"),
        ({"prompt": None, "command": "echo a, b; then c"}, BUSY, THREE, "local"),
        ({"prompt": "   "}, BUSY, THREE, "no prompt"),
        ({"phase4_planned": True}, BUSY, THREE, "phase4_planned"),
        ({"phase4_generated": True}, BUSY, THREE, "phase4_generated"),
        ({"phase4_skip": True}, BUSY, THREE, "phase4_skip"),
        ({"phase4_skip": True, "decompose": True}, BUSY, THREE, "phase4_skip"),
        ({"decompose": False}, BUSY, THREE, "decompose is false"),
        ({}, BUSY, ["Implement auth API"], "fewer than two"),
        ({"decompose": True}, BUSY, ["Implement auth API"], "fewer than two"),
        ({}, CALM, THREE, "below 2"),
    ],
)
def test_plans_are_refused(
    fields: dict[str, Any], check: GutCheck, features: list[str], reason: str
) -> None:
    wanted, why = should_plan(task(**fields), check, features)
    assert wanted is False and reason in why


@pytest.mark.parametrize(
    ("fields", "check", "reason"),
    [
        ({"decompose": True}, CALM, "requested"),
        ({}, BUSY, "complexity score 3"),
        ({"mode": "llm", "command": "echo hi"}, BUSY, "complexity score 3"),
    ],
)
def test_plans_are_made(fields: dict[str, Any], check: GutCheck, reason: str) -> None:
    wanted, why = should_plan(task(**fields), check, THREE)
    assert wanted is True and reason in why


# --- the feature breakdown ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "features"),
    [
        (ISSUE_PROMPT, THREE),
        (COMMA_PROMPT, THREE),
        (DESCRIPTIVE_PROMPT, ["Implement auth API, with OAuth2 support and refresh tokens"]),
        (
            "Create login endpoint and add integration tests, then update docs.",
            ["Create login endpoint and add integration tests", "Update docs"],
        ),
        ("Build the 3D viewer", ["Build the 3D viewer"]),
        ("Implement v2 API", ["Implement v2 API"]),
        ("Build the 3D viewer, then add 2 presets.", ["Build the 3D viewer", "Add 2 presets"]),
        ("Fix the authentication flow", ["Fix the authentication flow"]),
        ("Handle surplus items", ["Handle surplus items"]),
        ("Build the next version of the API", ["Build the next version of the API"]),
        (
            "Deploy the Next.js app and also add a health check",
            ["Deploy the Next.js app", "Add a health check"],
        ),
        ("Add logging, metrics, and alerts.", ["Add logging, metrics, and alerts"]),
        ("Add build, test, and deploy steps.", ["Add build, test, and deploy steps"]),
        (
            "Refactor the store, using atomic writes, for crash safety.",
            ["Refactor the store, using atomic writes, for crash safety"],
        ),
        (
            "Please build a parser. It must be fast. Then add tests. Finally, write docs.",
            ["Build a parser. It must be fast", "Add tests", "Write docs"],
        ),
        ("Write the parser; test the parser", ["Write the parser", "Test the parser"]),
        (
            "Build the API then add tests after that deploy it",
            ["Build the API", "Add tests", "Deploy it"],
        ),
        (
            "1. Build the 3D viewer\n2. Write tests for it\n3) Deploy to staging",
            ["Build the 3D viewer", "Write tests for it", "Deploy to staging"],
        ),
        (
            "Release plan:\n- Login page\n* Signup page\n- [ ] Password reset",
            ["Login page", "Signup page", "Password reset"],
        ),
        (
            "create the schema\nwrite the migration\nadd a rollback",
            ["Create the schema", "Write the migration", "Add a rollback"],
        ),
        (
            "Refactor the store and make sure\nit keeps atomic writes.\n\nThen add tests.",
            ["Refactor the store and make sure it keeps atomic writes", "Add tests"],
        ),
        ("Add tests. add tests!", ["Add tests"]),
        ("Steps:", ["Steps"]),
        ("", []),
    ],
)
def test_features_split_only_at_new_actions(prompt: str, features: list[str]) -> None:
    assert break_into_features(prompt) == features


def test_a_descriptive_clause_is_never_a_feature_of_its_own() -> None:
    features = break_into_features(DESCRIPTIVE_PROMPT)
    assert features[0].startswith("Implement auth API")
    assert not any(f.lower().startswith("with oauth2") for f in features)
    assert "with OAuth2 support and refresh tokens" in features[0]


@pytest.mark.parametrize(
    ("limit", "features"),
    [
        (
            None,
            [
                "Add step 1",
                "Add step 2",
                "Add step 3",
                "Add step 4",
                "Add step 5",
                "Add step 6; Add step 7",
            ],
        ),
        (
            3,
            [
                "Add step 1",
                "Add step 2",
                "Add step 3; Add step 4; Add step 5; Add step 6; Add step 7",
            ],
        ),
        (1, ["Add step 1; Add step 2; Add step 3; Add step 4; Add step 5; Add step 6; Add step 7"]),
        (7, [f"Add step {i}" for i in range(1, 8)]),
        (
            0,
            [
                "Add step 1",
                "Add step 2",
                "Add step 3",
                "Add step 4",
                "Add step 5",
                "Add step 6; Add step 7",
            ],
        ),
    ],
)
def test_surplus_features_merge_into_the_last(limit: int | None, features: list[str]) -> None:
    prompt = "\n".join(f"- Add step {i}" for i in range(1, 8))
    assert break_into_features(prompt, limit) == features


# --- the plan -----------------------------------------------------------------------------


def planned(**fields: Any) -> tuple[Task, Any]:
    parent = task(**fields)
    check = gut_check(parent.prompt or "")
    features = break_into_features(parent.prompt or "")
    return parent, plan_decomposition(parent, extract_intent(parent.prompt or ""), check, features)


def test_subtasks_are_numbered_after_the_parent() -> None:
    _, plan = planned()
    ids = ["parent__phase4_01", "parent__phase4_02", "parent__phase4_03"]
    assert plan.subtask_ids == ids and [s["id"] for s in plan.subtasks] == ids
    assert plan.features == THREE


def test_subtasks_form_a_chain_from_the_parents_own_dependencies() -> None:
    _, plan = planned(depends_on=["setup", "schema", "setup"])
    assert [s["depends_on"] for s in plan.subtasks] == [
        ["setup", "schema"],
        ["parent__phase4_01"],
        ["parent__phase4_02"],
    ]


def test_the_first_subtask_of_an_independent_parent_is_free_to_run() -> None:
    _, plan = planned()
    assert plan.subtasks[0]["depends_on"] == []


def test_the_parent_waits_for_every_subtask_and_records_the_plan() -> None:
    parent, plan = planned(depends_on=["setup"])
    updates = plan.parent_updates
    assert updates["depends_on"] == ["setup", *plan.subtask_ids]
    assert updates["phase4_planned"] is True
    assert updates["phase4_intent"] == extract_intent(ISSUE_PROMPT).model_dump(mode="json")
    assert updates["phase4_plan"] == {
        "gut_check": gut_check(ISSUE_PROMPT).model_dump(),
        "features": THREE,
        "subtasks": plan.subtask_ids,
    }
    assert set(updates) == {"depends_on", "phase4_planned", "phase4_intent", "phase4_plan"}


# Regression: an unset parent budget used to leave each subtask the full default,
# so splitting a task tripled what it could spend.
@pytest.mark.parametrize(
    ("budgets", "shares"),
    [
        ({"min_budget": 0.03, "max_budget": 0.3}, (0.01, 0.1)),
        ({"max_budget": 0.3}, (0.05 / 3, 0.1)),
        ({}, (0.05 / 3, 0.1 / 3)),
        ({"min_budget": 0.6, "max_budget": 0.3}, (0.1, 0.1)),
        ({"min_budget": 0.0, "max_budget": 0.0}, (0.0, 0.0)),
    ],
)
def test_budgets_are_split_evenly(
    budgets: dict[str, float], shares: tuple[float | None, float | None]
) -> None:
    _, plan = planned(**budgets)
    for subtask in plan.subtasks:
        assert subtask.get("min_budget") == pytest.approx(shares[0])
        assert subtask.get("max_budget") == pytest.approx(shares[1])


def test_subtasks_inherit_the_parents_settings_and_intent() -> None:
    parent, plan = planned(model="m-1", intensity="high", identity_id="ada", mode="llm")
    intent = extract_intent(ISSUE_PROMPT)
    for feature, subtask in zip(THREE, plan.subtasks, strict=True):
        assert subtask["prompt"].startswith(feature + "\n\n")
        assert intent.goal in subtask["prompt"] and "USER INTENT" not in subtask["prompt"]
        assert (subtask["mode"], subtask["model"]) == (Mode.LLM, "m-1")
        assert (subtask["intensity"], subtask["identity_id"]) == ("high", "ada")
        assert subtask["phase4_generated"] is True
        assert subtask["phase4_parent_task"] == parent.id
        assert subtask["phase4_intent"] == {**intent.model_dump(), "source": "inherited"}
        assert subtask["status"] == Status.PENDING
        assert Task.model_validate(subtask).id == subtask["id"]


def test_subtasks_run_where_their_parent_must() -> None:
    """Steps of a task pinned to a host's sandbox need that sandbox too."""
    _, plan = planned(host="host-a", worker_labels=["gpu"])
    assert {(s["host"], tuple(s["worker_labels"])) for s in plan.subtasks} == {("host-a", ("gpu",))}
    _, anywhere = planned()
    assert all("host" not in s and not s["worker_labels"] for s in anywhere.subtasks)


def test_unset_fields_are_left_to_the_store() -> None:
    """A `created_at: None` in a record would override the store's own timestamp."""
    _, plan = planned()
    for subtask in plan.subtasks:
        assert None not in subtask.values() and "created_at" not in subtask


def test_a_long_parent_id_still_gives_valid_distinct_ids() -> None:
    first = Task(id="a" * 128, prompt=ISSUE_PROMPT)
    second = Task(id="a" * 127 + "b", prompt=ISSUE_PROMPT)
    plans = [
        plan_decomposition(t, extract_intent(ISSUE_PROMPT), gut_check(ISSUE_PROMPT), THREE)
        for t in (first, second)
    ]
    ids = [i for plan in plans for i in plan.subtask_ids]
    assert all(is_valid_task_id(i) and len(i) <= 128 for i in ids)
    assert len(set(ids)) == 6
    assert all(i.endswith(f"__phase4_0{n}") for n, i in enumerate(plans[0].subtask_ids, 1))


def test_a_plan_needs_a_feature() -> None:
    with pytest.raises(ValueError, match="parent"):
        plan_decomposition(task(), UserIntent(goal="x"), CALM, [])


def test_event_fields_are_exactly_the_contracts() -> None:
    _, plan = planned()
    fields = plan_event_fields(plan)
    assert set(fields) == set(PlanFields.model_fields)
    assert fields == {
        "phase4_plan_generated": True,
        "phase4_complexity_score": 3,
        "phase4_features": THREE,
        "phase4_subtasks": plan.subtask_ids,
        "phase4_subtasks_added": 3,
    }


# --- the parent's final prompt ------------------------------------------------------------

RESULTS = [
    ("p__phase4_01", "Implement auth API", "Done: /login added."),
    ("p__phase4_02", "Add integration tests", None),
]


def test_results_follow_the_prompt_with_a_closing_instruction() -> None:
    text = parent_prompt_with_results(ISSUE_PROMPT, RESULTS)
    head, _, section = text.partition(RESULTS_HEADING)
    assert head == ISSUE_PROMPT + "\n\n"
    assert "### p__phase4_01: Implement auth API\nDone: /login added." in section
    assert f"### p__phase4_02: Add integration tests\n{NO_RESULT}" in section
    assert "Integrate these results" in section and section.endswith(RESULTS_END)


def test_results_are_replaced_not_stacked() -> None:
    once = parent_prompt_with_results(ISSUE_PROMPT, RESULTS)
    assert parent_prompt_with_results(once, RESULTS) == once
    newer = [(RESULTS[0][0], RESULTS[0][1], "Second run.")]
    replaced = parent_prompt_with_results(once, newer)
    assert replaced == parent_prompt_with_results(ISSUE_PROMPT, newer)
    assert replaced.count(RESULTS_HEADING) == 1 and "Done: /login" not in replaced


def test_text_after_the_section_survives_a_replacement() -> None:
    once = parent_prompt_with_results(ISSUE_PROMPT, RESULTS) + "\n\n## FEEDBACK\nbe brief"
    again = parent_prompt_with_results(once, RESULTS)
    assert again.count(RESULTS_HEADING) == 1 and again.endswith(RESULTS_END)
    assert "## FEEDBACK\nbe brief" in again


def test_a_long_result_is_truncated_with_a_marker() -> None:
    text = parent_prompt_with_results("Go", [("p__phase4_01", "Big", "x" * 10_000)])
    assert "x" * RESULT_CAP_BYTES in text and "x" * (RESULT_CAP_BYTES + 1) not in text
    assert "[truncated 6000 bytes]" in text


def test_no_results_leave_the_prompt_alone() -> None:
    assert parent_prompt_with_results(ISSUE_PROMPT, []) == ISSUE_PROMPT
    with_section = parent_prompt_with_results(ISSUE_PROMPT, RESULTS)
    assert parent_prompt_with_results(with_section, []) == ISSUE_PROMPT


# --- hostile input ------------------------------------------------------------------------


def test_a_pathological_prompt_stays_linear() -> None:
    """Guards against quadratic cuts: 1,000 trailing "please" once took 26 s to strip."""
    prompt = "a," * 5000 + " and" * 5000 + " " * 50_000 + "please " * 5000 + "\n" * 5000
    started = time.monotonic()
    gut_check(prompt)
    break_into_features(prompt)
    extract_intent(prompt)
    parent_prompt_with_results(prompt, RESULTS)
    assert time.monotonic() - started < 5.0
