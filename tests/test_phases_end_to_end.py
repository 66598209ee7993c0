"""Phases 2–5 through real processes: worker.py, swarm.py and a scripted provider.

The provider is an OpenAI-compatible server on 127.0.0.1 whose answers each test
controls, so the critic, the router, the planner and the rewards are exercised on
the exact text that crossed the wire.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from conftest import BACKENDS, Backend, RunningProcess, on_both_backends
from fake_llm_server import FakeLLMServer

AUTHOR_MODEL = "gpt-4o-mini"
CRITIC_MODEL = "gpt-4o"
INTENT_HEADING = "## USER INTENT (Do not deviate)"


@dataclass
class Runtime:
    provider: FakeLLMServer
    api: RunningProcess
    backend: Backend
    env: dict[str, str]

    def queue(self, tasks: list[dict[str, Any]]) -> None:
        self.backend.seed(tasks, str(self.api.url))

    def work(self, *args: str, **env: str) -> Any:
        return self.backend.run_worker("--once", *args, **{**self.env, **env})

    def prompts(self, model: str = AUTHOR_MODEL) -> list[str]:
        """The user message of every provider request for `model`, in arrival order."""
        return [
            r["body"]["messages"][-1]["content"]
            for r in self.provider.requests
            if r["body"]["model"] == model
        ]


def user_text(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


def on_topic(body: dict[str, Any]) -> str:
    """An answer that repeats the task's own words, as a diligent model would."""
    return "Done. Summary of the work on: " + " ".join(user_text(body).split())[-400:]


@pytest.fixture
def runtime(spawn: Callable[..., RunningProcess], backend: Backend) -> Iterator[Runtime]:
    with FakeLLMServer(responder=on_topic) as provider:
        env = {
            "SWARM_LLM_BASE_URL": provider.url,
            "SWARM_LLM_MODEL": AUTHOR_MODEL,
            "SWARM_REQUEUE_BACKOFF": "0.05",
        }
        api = spawn(["swarm.py", "--port", "0"], backend.env(**env))
        yield Runtime(provider, api, backend, env)


def history(backend: Backend, task_id: str) -> list[str]:
    return [e["status"] for e in backend.events() if e["task_id"] == task_id]


def events_of(backend: Backend, task_id: str, status: str) -> list[dict[str, Any]]:
    return [e for e in backend.events() if e["task_id"] == task_id and e["status"] == status]


def task_record(backend: Backend, task_id: str) -> dict[str, Any]:
    return next(t for t in backend.queue()["tasks"] if t["id"] == task_id)


def identity_tokens(backend: Backend, identity: str) -> int:
    balances = backend.documents.balances.read(dict)
    entry = balances["identities"][identity]
    return entry["free_time_tokens"] + entry["journal_tokens"]


# --- phase 2: review ------------------------------------------------------------------------


@on_both_backends
def test_good_work_is_reviewed_approved_mirrored_and_rewarded(runtime: Runtime) -> None:
    runtime.queue(
        [{"id": "haiku", "prompt": "Write a haiku about message queues", "max_budget": 0.2}]
    )
    result = runtime.work()
    assert result.returncode == 0, result.stdout + result.stderr
    store = runtime.backend
    assert history(store, "haiku") == ["in_progress", "completed", "pending_review", "approved"]
    review = events_of(store, "haiku", "pending_review")[0]
    assert review["review_verdict"] == "APPROVE" and review["review_issues"] == []
    assert review["review_confidence"] > 0.5 and review["review_attempt"] == 0
    approved = events_of(store, "haiku", "approved")[0]
    assert approved["quality_gate_status"] == "needs_qa"
    assert approved["quality_gate_decision"] == "approved"
    assert approved["quality_gate_change_id"] == "haiku"
    assert approved["phase5_reward_applied"] is True
    assert approved["phase5_reward_reason"] == "worker_approved_under_budget:haiku"
    assert approved["phase5_reward_identity"] == "resident_default"
    assert approved["result_summary"].startswith("Done.")
    gate = store.documents.quality_gate.read(dict)
    assert gate["changes"]["haiku"]["status"] == "needs_qa"
    assert task_record(store, "haiku")["status"] == "approved"
    assert "haiku" in store.queue()["completed"]
    assert (
        identity_tokens(store, "resident_default") == approved["phase5_reward_tokens_awarded"] > 0
    )


@on_both_backends
def test_rejected_work_is_retried_with_feedback_then_fails_at_the_limit(runtime: Runtime) -> None:
    bad_answers = iter(
        [
            "I'm sorry, but I can't help with that.",
            "Bananas are an excellent source of potassium and ripen quickly.",
            "",
        ]
    )
    runtime.provider.responder = lambda body: next(bad_answers)
    runtime.queue([{"id": "parser", "prompt": "Write a tokenizer for arithmetic expressions"}])
    result = runtime.work()
    assert result.returncode == 0, result.stdout + result.stderr
    store = runtime.backend
    assert len(runtime.prompts()) == 3
    run = ["in_progress", "completed", "pending_review"]
    assert history(store, "parser") == [*run, "requeue", *run, "requeue", *run, "failed"]
    requeues = events_of(store, "parser", "requeue")
    assert [e["review_attempt"] for e in requeues] == [1, 2]
    assert all(e["review_verdict"] == "REJECT" and e["review_issues"] for e in requeues)
    assert all(e["quality_gate_status"] == "rejected" for e in requeues)
    assert all(e["phase5_reward_reason"] == "review_not_approved" for e in requeues)
    second_prompt = runtime.prompts()[1]
    assert "## CRITIC FEEDBACK FROM THE PREVIOUS ATTEMPT" in second_prompt
    assert second_prompt.startswith(INTENT_HEADING) and second_prompt.count(INTENT_HEADING) == 1
    assert second_prompt.index("Write a tokenizer") < second_prompt.index("## CRITIC FEEDBACK")
    goal = task_record(store, "parser")["phase4_intent"]["goal"]
    assert goal == "Write a tokenizer for arithmetic expressions"
    assert requeues[0]["review_issues"][0] in second_prompt
    failed = events_of(store, "parser", "failed")[-1]
    assert "rejected task after 3 attempt(s)" in failed["errors"]
    assert task_record(store, "parser")["review"]["attempt"] == 3
    assert "parser" in store.queue()["failed"]


def test_the_same_rejection_twice_stops_early(runtime: Runtime) -> None:
    runtime.provider.responder = lambda body: "I'm sorry, but I can't help with that."
    runtime.queue([{"id": "stuck", "prompt": "Write a tokenizer for arithmetic expressions"}])
    assert runtime.work().returncode == 0
    assert len(runtime.prompts()) == 2
    failed = events_of(runtime.backend, "stuck", "failed")[-1]
    assert "no progress" in failed["errors"]
    assert "after 2 attempt(s)" in failed["errors"]


def test_a_requeued_task_waits_out_its_backoff(runtime: Runtime) -> None:
    answers = iter(["I'm sorry, but I can't help with that.", None])
    runtime.provider.responder = lambda body: next(answers) or on_topic(body)
    runtime.queue([{"id": "later", "prompt": "Write a tokenizer for arithmetic expressions"}])
    assert runtime.work(SWARM_REQUEUE_BACKOFF="0.6").returncode == 0
    requeue = events_of(runtime.backend, "later", "requeue")[0]
    starts = events_of(runtime.backend, "later", "in_progress")
    gap = (
        datetime.fromisoformat(starts[1]["timestamp"])
        - datetime.fromisoformat(requeue["timestamp"])
    ).total_seconds()
    assert gap >= 0.55
    assert history(runtime.backend, "later")[-1] == "approved"


def test_a_critic_that_cannot_run_leaves_the_task_pending_review(runtime: Runtime) -> None:
    def answer(body: dict[str, Any]) -> str:
        return "this is not a verdict" if body["model"] == CRITIC_MODEL else on_topic(body)

    runtime.provider.responder = answer
    runtime.queue([{"id": "unjudged", "prompt": "Write a haiku about message queues"}])
    result = runtime.work(SWARM_CRITIC_MODEL=CRITIC_MODEL)
    assert result.returncode == 0, result.stdout + result.stderr
    store = runtime.backend
    assert history(store, "unjudged") == ["in_progress", "completed", "pending_review"]
    parked = events_of(store, "unjudged", "pending_review")[0]
    assert parked["review_error"] and parked["review_verdict"] is None
    task = task_record(store, "unjudged")
    assert task["status"] == "pending_review" and task["lease"] is None
    assert task["review"]["error"] == parked["review_error"]
    assert len(runtime.prompts(CRITIC_MODEL)) == 1


def test_a_second_model_can_reject_what_the_checks_passed(runtime: Runtime) -> None:
    verdict = {
        "verdict": "REJECT",
        "confidence": 0.8,
        "issues": ["the haiku has 4 lines"],
        "suggestions": ["use three lines"],
    }

    def answer(body: dict[str, Any]) -> str:
        return json.dumps(verdict) if body["model"] == CRITIC_MODEL else on_topic(body)

    runtime.provider.responder = answer
    runtime.queue([{"id": "strict", "prompt": "Write a haiku about message queues"}])
    assert (
        runtime.work(SWARM_CRITIC_MODEL=CRITIC_MODEL, SWARM_MAX_REQUEUE_ATTEMPTS="1").returncode
        == 0
    )
    review = events_of(runtime.backend, "strict", "pending_review")[0]
    assert review["review_verdict"] == "REJECT"
    assert "the haiku has 4 lines" in review["review_issues"]
    critic_prompt = runtime.prompts(CRITIC_MODEL)[0]
    assert "Done. Summary of the work on" in critic_prompt
    assert history(runtime.backend, "strict")[-1] == "failed"


def test_the_critic_must_not_be_the_author(runtime: Runtime) -> None:
    runtime.queue([{"id": "self", "prompt": "Write a haiku about message queues"}])
    assert runtime.work(SWARM_CRITIC_MODEL=AUTHOR_MODEL).returncode == 0
    parked = events_of(runtime.backend, "self", "pending_review")[0]
    assert "different model" in parked["review_error"]


# --- phase 3: routing -------------------------------------------------------------------------


def test_a_tool_routed_task_sends_the_tool_context(runtime: Runtime) -> None:
    runtime.queue(
        [
            {"id": "tooled", "prompt": "Use read_json_safe to load config.json and print the port"},
            {"id": "plain", "prompt": "Update the README with install steps"},
        ]
    )
    assert runtime.work().returncode == 0
    tooled, plain = runtime.prompts()
    intent, tool_context = tooled.split("\n\n", 1)
    assert intent.splitlines() == [
        INTENT_HEADING,
        "Goal: Use read_json_safe to load config.json and print the port",
        "## END USER INTENT",
    ]
    assert tool_context.startswith("RELEVANT TOOL CONTEXT (reuse before new generation)\n")
    assert "TOOL_NAME: read_json_safe" in tooled and "TOOL_ROUTE: exact" in tooled
    assert tooled.rstrip().endswith(
        "TASK:\nUse read_json_safe to load config.json and print the port"
    )
    assert "RELEVANT TOOL CONTEXT" not in plain
    assert plain == (
        f"{INTENT_HEADING}\nGoal: Update the README with install steps\n## END USER INTENT\n\n"
        "Update the README with install steps"
    )
    done = events_of(runtime.backend, "tooled", "completed")[0]
    assert (done["tool_route"], done["tool_name"], done["tool_confidence"]) == (
        "exact",
        "read_json_safe",
        1.0,
    )
    assert events_of(runtime.backend, "plain", "completed")[0]["tool_route"] == "generate"


def test_a_broken_tool_store_fails_the_task_with_its_location(runtime: Runtime) -> None:
    runtime.backend.workspace.tool_store_path.write_text('{"my_tool": {"description": 3}}')
    runtime.queue([{"id": "t", "prompt": "Write a haiku about message queues"}])
    assert runtime.work().returncode == 0
    failed = events_of(runtime.backend, "t", "failed")[0]
    assert "tool_store.json" in failed["errors"] and "my_tool" in failed["errors"]
    assert runtime.prompts() == []


# --- phase 4: decomposition ------------------------------------------------------------------


@on_both_backends
def test_a_complex_prompt_is_split_and_its_whole_chain_is_approved(runtime: Runtime) -> None:
    prompt = "Implement auth API, add integration tests, and then update deployment docs."
    runtime.queue([{"id": "auth", "prompt": prompt, "max_budget": 0.3}])
    result = runtime.work()
    assert result.returncode == 0, result.stdout + result.stderr
    store = runtime.backend
    subtasks = ["auth__phase4_01", "auth__phase4_02", "auth__phase4_03"]
    planned = events_of(store, "auth", "queued")[0]
    assert planned["phase4_plan_generated"] is True
    assert planned["phase4_subtasks"] == subtasks and planned["phase4_subtasks_added"] == 3
    assert planned["phase4_features"] == [
        "Implement auth API",
        "Add integration tests",
        "Update deployment docs",
    ]
    assert planned["phase4_complexity_score"] >= 2
    statuses = {t["id"]: t["status"] for t in store.queue()["tasks"]}
    assert statuses == dict.fromkeys(["auth", *subtasks], "approved")
    approvals = [e["task_id"] for e in store.events() if e["status"] == "approved"]
    assert approvals == [*subtasks, "auth"]
    prompts = runtime.prompts()
    assert len(prompts) == 4
    assert all(p.splitlines().count(INTENT_HEADING) == 1 for p in prompts)
    assert all(p.startswith(INTENT_HEADING) for p in prompts)
    goal = "Goal: Implement auth API, add integration tests, and then update deployment docs"
    assert all(p.splitlines()[1] == goal for p in prompts), "a subtask sent its own goal"
    assert "## RESULTS OF SUBTASKS" in prompts[-1]
    assert all(sub in prompts[-1] for sub in subtasks)
    parent = task_record(store, "auth")
    assert parent["phase4_planned"] is True and parent["phase4_intent"]["goal"]
    assert set(subtasks) <= set(parent["depends_on"])
    assert task_record(store, "auth__phase4_02")["depends_on"] == ["auth__phase4_01"]
    assert sum(task_record(store, sub)["max_budget"] for sub in subtasks) == pytest.approx(0.3)


def test_a_plain_llm_task_sends_its_intent_block_and_keeps_the_intent(runtime: Runtime) -> None:
    """Regression: only decomposed tasks carried the intent block, so a plain task's
    constraints and anti-goals never reached the model as the user's intent."""
    prompt = "Write a haiku about message queues. It must mention retries. Don't use rhymes."
    runtime.queue([{"id": "plain", "prompt": prompt}])
    assert runtime.work().returncode == 0
    assert runtime.prompts() == [
        "\n".join(
            [
                INTENT_HEADING,
                "Goal: Write a haiku about message queues",
                "Constraints:",
                "- It must mention retries",
                "Avoid:",
                "- Use rhymes",
                "## END USER INTENT",
                "",
                prompt,
            ]
        )
    ]
    stored = task_record(runtime.backend, "plain")
    assert stored["phase4_intent"]["goal"] == "Write a haiku about message queues"
    assert stored["phase4_intent"]["anti_goals"] == ["Use rhymes"]
    assert not stored.get("phase4_planned") and len(runtime.backend.queue()["tasks"]) == 1
    assert history(runtime.backend, "plain")[-1] == "approved"


def test_subtasks_are_routed_on_their_own_feature(runtime: Runtime) -> None:
    """Regression: every subtask inherited the parent's tool because its prompt quotes
    the parent's goal; a documentation step got JSON-loading code."""
    runtime.queue(
        [
            {
                "id": "cfg",
                "prompt": "Write a config loader that uses read_json_safe, "
                "then add unit tests for the loader, and finally document the config "
                "file format in the README.",
            }
        ]
    )
    assert runtime.work().returncode == 0
    routes = {
        e["task_id"]: e["tool_name"] for e in runtime.backend.events() if e["status"] == "completed"
    }
    assert routes == {
        "cfg__phase4_01": "read_json_safe",
        "cfg__phase4_02": None,
        "cfg__phase4_03": None,
        "cfg": "read_json_safe",
    }


def test_local_commands_are_never_decomposed(runtime: Runtime) -> None:
    runtime.queue([{"id": "cmd", "command": "echo one, two, three; then four"}])
    assert runtime.work().returncode == 0
    assert "queued" not in history(runtime.backend, "cmd")


# --- phase 5: exactly-once rewards across crashes ------------------------------------------


# The worker dies before or after the grant on either store, inside the verdict's
# transaction. On files it pays the grant later, in the journal's fold (on its way out
# here): it dies there too, between the balances' file and the reward ledger's.
GRANT_CRASHES = list(itertools.product(["worker.before_reward", "worker.after_reward"], BACKENDS))
FOLD_CRASHES = [
    "write:free_time_balances.json:before_rename",
    "reward.after_balances",
    "write:phase5_reward_ledger.json:before_rename",
]


@pytest.mark.parametrize(("crash_at", "backend"), GRANT_CRASHES, indirect=["backend"])
def test_a_worker_killed_around_the_grant_pays_exactly_once(
    runtime: Runtime, crash_at: str
) -> None:
    runtime.queue(
        [{"id": "paid", "prompt": "Write a haiku about message queues", "identity_id": "ada"}]
    )
    crashed = runtime.work(SWARM_FAILPOINTS=crash_at)
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    assert task_record(runtime.backend, "paid")["status"] == "pending_review"
    resumed = runtime.work()
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    store = runtime.backend
    assert len(runtime.prompts()) == 1, "the task ran again after its execution was recorded"
    assert history(store, "paid")[-1] == "approved"
    assert "lease_expired" in history(store, "paid")
    ledger = store.documents.reward_ledger.read(dict)
    assert list(ledger["grants"]) == ["paid::ada"]
    grant = ledger["grants"]["paid::ada"]
    assert identity_tokens(store, "ada") == grant["tokens_awarded"] > 0
    final = events_of(store, "paid", "approved")[-1]
    assert final["phase5_reward_ledger_recorded"] is True


@pytest.mark.parametrize("backend", ["files"], indirect=True)
@pytest.mark.parametrize("crash_at", FOLD_CRASHES)
def test_a_worker_killed_paying_in_the_fold_leaves_the_next_to_pay_exactly_once(
    runtime: Runtime, crash_at: str
) -> None:
    """The verdict committed, with its grant in the journal record: the next worker's
    fold pays what the killed one's did not, and nothing twice."""
    runtime.queue(
        [{"id": "paid", "prompt": "Write a haiku about message queues", "identity_id": "ada"}]
    )
    crashed = runtime.work(SWARM_FAILPOINTS=crash_at)
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    store = runtime.backend
    final = events_of(store, "paid", "approved")[-1]
    assert final["phase5_reward_applied"] is True
    resumed = runtime.work()
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len(runtime.prompts()) == 1
    assert history(store, "paid") == ["in_progress", "completed", "pending_review", "approved"]
    ledger = store.documents.reward_ledger.read(dict)
    assert list(ledger["grants"]) == ["paid::ada"]
    grant = ledger["grants"]["paid::ada"]
    assert grant["state"] == "applied"
    awarded = final["phase5_reward_tokens_awarded"]
    assert identity_tokens(store, "ada") == grant["tokens_awarded"] == awarded > 0


def test_a_second_review_of_a_rewarded_task_reports_already_granted(runtime: Runtime) -> None:
    runtime.queue([{"id": "twice", "prompt": "Write a haiku about message queues"}])
    assert runtime.work().returncode == 0
    store = runtime.backend
    paid = identity_tokens(store, "resident_default")
    queue = store.queue()
    task = next(t for t in queue["tasks"] if t["id"] == "twice")
    task.update(status="pending_review", review=None)
    queue["completed"].remove("twice")
    store.workspace.queue_path.write_text(json.dumps(queue))
    assert runtime.work().returncode == 0
    again = events_of(store, "twice", "approved")[-1]
    assert again["phase5_reward_reason"] == "already_granted"
    assert again["phase5_reward_applied"] is False
    assert identity_tokens(store, "resident_default") == paid
    assert len(runtime.prompts()) == 1
