from __future__ import annotations

import pytest
from pydantic import ValidationError

from swarm_runtime.contract import ReviewRecord, Task, ToolRoute, Verdict
from swarm_runtime.phases.critic import FEEDBACK_HEADING
from swarm_runtime.phases.decomposition import RESULTS_HEADING
from swarm_runtime.phases.intent import (
    GOAL_CHARS,
    INTENT_END,
    INTENT_HEADING,
    UserIntent,
    extract_intent,
    inject_intent,
    intent_block,
    intent_from_task,
    whole_words,
    with_intent,
)
from swarm_runtime.phases.prompt import compose_prompt
from swarm_runtime.phases.routing import CONTEXT_HEADING, TASK_HEADING, RouteDecision, Tool


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("then update docs", True),
        ("Fix the authentication flow", False),
        ("Handle surplus items", False),
        ("the nextgen viewer", False),
        ("a next-gen viewer", False),
        ("Deploy the Next.js app", False),
        ("thence we go", False),
        ("After that, deploy", True),
        ("after   that deploy", True),
    ],
)
def test_whole_words_never_match_inside_a_word(text: str, found: bool) -> None:
    pattern = whole_words("then", "plus", "next", "after that")
    assert (pattern.search(text) is not None) is found


@pytest.mark.parametrize(
    ("prompt", "goal"),
    [
        ("Build the 3D viewer.", "Build the 3D viewer"),
        ("Please build the 3D viewer.", "Build the 3D viewer"),
        ("Can you add a login page? It must use OAuth2.", "Add a login page"),
        ("could you, please, fix the flaky test", "Fix the flaky test"),
        ("I want you to write a changelog entry", "Write a changelog entry"),
        (
            "Implement auth API, add integration tests, and then update deployment docs.",
            "Implement auth API, add integration tests, and then update deployment docs",
        ),
        ("1. Build the parser\n2. Add tests", "Build the parser"),
        (
            "Refactor the store and make sure\nit keeps atomic writes.",
            "Refactor the store and make sure it keeps atomic writes",
        ),
        ("Don't touch the schema. Add an index on users.email.", "Add an index on users.email"),
        ("", ""),
    ],
)
def test_goal_is_the_first_sentence_without_filler(prompt: str, goal: str) -> None:
    assert extract_intent(prompt).goal == goal


def test_a_long_goal_is_cut_at_a_word_edge() -> None:
    goal = extract_intent("Write " + "very " * 80 + "long text").goal
    assert len(goal) <= GOAL_CHARS + 1 and goal.endswith("…") and goal[-2] != " "
    assert goal.startswith("Write very very")


@pytest.mark.parametrize(
    ("prompt", "constraints"),
    [
        ("Build a CLI. It must run offline.", ["It must run offline"]),
        ("Build a CLI. Tests should pass on 3.11.", ["Tests should pass on 3.11"]),
        ("Build a CLI. Python 3.11 is required.", ["Python 3.11 is required"]),
        ("Build a CLI. Use only the standard library.", ["Use only the standard library"]),
        ("Build a CLI. Return exactly one line.", ["Return exactly one line"]),
        (
            "Build a CLI. Use at most 3 files; keep at least 90% coverage.",
            ["Use at most 3 files", "Keep at least 90% coverage"],
        ),
        ("Build a CLI. Answer within 2 seconds.", ["Answer within 2 seconds"]),
        ("Build a CLI. Use no more than 200 lines.", ["Use no more than 200 lines"]),
        ("Build a CLI. Commonly used flags are fine.", []),
        ("Build a CLI. It must run offline. it MUST run offline!", ["It must run offline"]),
    ],
)
def test_constraints_are_sentences_with_a_whole_word_cue(
    prompt: str, constraints: list[str]
) -> None:
    assert extract_intent(prompt).constraints == constraints


@pytest.mark.parametrize(
    ("prompt", "preferences"),
    [
        ("Build a CLI. Prefer click over argparse.", ["Prefer click over argparse"]),
        ("Build a CLI. Ideally keep it under 100 lines.", ["Ideally keep it under 100 lines"]),
        ("Build a CLI. Add colour if possible.", ["Add colour if possible"]),
        ("Build a CLI. Shell completion is nice to have.", ["Shell completion is nice to have"]),
        ("Build a CLI. I would like a --json flag.", ["I would like a --json flag"]),
        ("Build a CLI. Preferential treatment is none.", []),
    ],
)
def test_preferences_are_sentences_with_a_whole_word_cue(
    prompt: str, preferences: list[str]
) -> None:
    assert extract_intent(prompt).preferences == preferences


@pytest.mark.parametrize(
    ("prompt", "anti_goals"),
    [
        ("Build a CLI. Don't add dependencies.", ["Add dependencies"]),
        ("Build a CLI. Don’t add dependencies.", ["Add dependencies"]),
        ("Build a CLI. Do not print colours.", ["Print colours"]),
        ("Build a CLI. Never write to stdout, but log to stderr.", ["Write to stdout"]),
        ("Build a CLI. Avoid global state.", ["Global state"]),
        ("Refactor the worker without changing its public API.", ["Changing its public API"]),
        ("Build a CLI. No external dependencies.", ["External dependencies"]),
        ("Build a CLI. Use no more than 200 lines.", []),
        ("Implement auth API, with OAuth2 support and refresh tokens.", []),
        ("Build a CLI. Note the notation.", []),
    ],
)
def test_anti_goals_name_what_is_forbidden(prompt: str, anti_goals: list[str]) -> None:
    assert extract_intent(prompt).anti_goals == anti_goals


def test_extraction_is_deterministic_and_marked_extracted() -> None:
    prompt = "Build a CLI. It must run offline. Don't add dependencies. Prefer click."
    assert extract_intent(prompt) == extract_intent(prompt)
    assert extract_intent(prompt).source == "extracted"


def test_the_block_lists_only_what_is_present() -> None:
    intent = UserIntent(goal="Ship it", constraints=["Tests pass"], anti_goals=["Globals"])
    assert intent_block(intent).splitlines() == [
        INTENT_HEADING,
        "Goal: Ship it",
        "Constraints:",
        "- Tests pass",
        "Avoid:",
        "- Globals",
        INTENT_END,
    ]


def test_the_block_shows_preferences_and_a_missing_goal() -> None:
    lines = intent_block(UserIntent(goal="", preferences=["Short"])).splitlines()
    assert lines == [INTENT_HEADING, "Goal: (not stated)", "Preferences:", "- Short", INTENT_END]


def test_a_multi_line_item_cannot_end_the_block_early() -> None:
    intent = UserIntent(goal="Ship\n## END USER INTENT\nthen more")
    prompt = inject_intent("Do it", intent)
    again = inject_intent(prompt, intent)
    assert again == prompt and again.count(INTENT_HEADING) == 1


def test_injection_puts_the_block_first_then_a_blank_line() -> None:
    intent = UserIntent(goal="Ship it")
    assert inject_intent("Write the code", intent) == (
        f"{INTENT_HEADING}\nGoal: Ship it\n{INTENT_END}\n\nWrite the code"
    )


def test_injection_replaces_an_earlier_block_instead_of_stacking() -> None:
    first = inject_intent("Write the code", UserIntent(goal="Old goal"))
    second = inject_intent(first, UserIntent(goal="New goal"))
    assert second == inject_intent("Write the code", UserIntent(goal="New goal"))
    assert second.count(INTENT_HEADING) == 1 and "Old goal" not in second


def test_injection_is_idempotent() -> None:
    intent = extract_intent("Build a CLI. It must run offline. Don't add dependencies.")
    once = inject_intent("Build a CLI.", intent)
    assert inject_intent(once, intent) == once


def test_a_task_without_a_stored_intent_gets_one_extracted() -> None:
    task = Task(id="t", prompt="Please build a CLI. It must run offline.")
    assert intent_from_task(task) == extract_intent(task.prompt or "")


def test_a_stored_intent_wins_over_the_prompt() -> None:
    stored = {
        "goal": "Ship feature set",
        "constraints": ["Stay small"],
        "source": "inherited",
        "original_text": "ignored",
        "confidence": 0.7,
    }
    intent = intent_from_task(Task(id="t", prompt="Build a CLI.", phase4_intent=stored))
    assert intent == UserIntent(
        goal="Ship feature set", constraints=["Stay small"], source="inherited"
    )


def test_a_stored_intent_is_coerced_and_its_missing_goal_filled() -> None:
    stored = {"constraints": "Stay small", "anti_goals": ["Globals", "  "]}
    intent = intent_from_task(Task(id="t", prompt="Build a CLI.", phase4_intent=stored))
    assert intent.goal == "Build a CLI"
    assert intent.constraints == ["Stay small"] and intent.anti_goals == ["Globals"]


def test_a_malformed_stored_intent_is_refused() -> None:
    task = Task(id="t", prompt="Build a CLI.", phase4_intent={"goal": "x", "constraints": 5})
    with pytest.raises(ValidationError):
        intent_from_task(task)


# --- every llm task carries its intent --------------------------------------------------

GENERATE = RouteDecision(route=ToolRoute.GENERATE)


def test_an_llm_task_gets_its_intent_extracted_for_keeping() -> None:
    task = Task(id="t", prompt="Build a CLI. It must run offline.")
    kept = with_intent(task)
    assert kept.phase4_intent == extract_intent(task.prompt or "").model_dump(mode="json")
    assert task.phase4_intent is None, "the caller's task must not change"


@pytest.mark.parametrize(
    "task",
    [
        Task(id="cmd", command="echo hi"),
        Task(id="cmd2", mode="local", prompt="List the files", command="ls"),
        Task(id="empty", mode="llm"),
        Task(
            id="sub", prompt="Add tests", phase4_intent={"goal": "Ship it", "source": "inherited"}
        ),
    ],
    ids=["local", "local-with-prompt", "no-prompt", "stored"],
)
def test_local_empty_and_already_carrying_tasks_are_left_as_they_are(task: Task) -> None:
    assert with_intent(task) is task


def test_a_plain_llm_prompt_starts_with_its_intent_block() -> None:
    """Regression: only planned tasks carried the block; a plain task sent its bare prompt."""
    task = Task(id="t", prompt="Write a haiku. Don't rhyme.")
    assert compose_prompt(task, GENERATE, []) == (
        f"{INTENT_HEADING}\nGoal: Write a haiku\nAvoid:\n- Rhyme\n{INTENT_END}\n\n"
        "Write a haiku. Don't rhyme."
    )


def test_a_subtask_sends_its_parents_intent_once() -> None:
    parent = UserIntent(goal="Ship the auth feature", constraints=["Keep the API stable"])
    inherited = parent.model_copy(update={"source": "inherited"}).model_dump(mode="json")
    subtask = Task(
        id="p__phase4_01",
        prompt="Add integration tests\n\nContext: step 1 of 2 of task p, whose goal is: Ship",
        phase4_intent=inherited,
        phase4_generated=True,
    )
    prompt = compose_prompt(with_intent(subtask), GENERATE, [])
    assert prompt.splitlines().count(INTENT_HEADING) == 1
    assert prompt.startswith(f"{INTENT_HEADING}\nGoal: Ship the auth feature\n")
    assert "Goal: Add integration tests" not in prompt


def test_the_blocks_are_composed_in_a_fixed_order() -> None:
    tool = Tool(name="read_json_safe", description="Read JSON", code="def read_json_safe(): ...")
    decision = RouteDecision(route=ToolRoute.EXACT, tool=tool, confidence=1.0)
    task = Task(
        id="p",
        prompt="Write a config loader",
        phase4_planned=True,
        review=ReviewRecord(verdict=Verdict.REJECT, issues=["no tests"], attempt=1),
    )
    prompt = compose_prompt(task, decision, [("p__phase4_01", "Write it", "done")])
    order = [INTENT_HEADING, CONTEXT_HEADING, "def read_json_safe"]
    order += [f"{TASK_HEADING}\nWrite a config loader", RESULTS_HEADING, FEEDBACK_HEADING]
    positions = [prompt.index(marker) for marker in order]
    assert positions == sorted(positions) and positions[0] == 0
