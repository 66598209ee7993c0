"""The budget is never overshot by an honest provider, and a dishonest or unseen one is
charged in full, audited, and stops further spending.

Each test names the overshoot it guards against: a hold smaller than what a chat template
bills, an uncapped max_tokens, a per-task max_budget checked call by call, an over-report
that let calls through, and a killed API whose in-flight call was refunded on restart.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from conftest import Backend, RunningProcess, on_both_backends, wait_until
from fake_llm_server import FakeLLMServer
from pydantic import SecretStr

from swarm_runtime.api.app import create_app
from swarm_runtime.contract import TOKEN_HEADER
from swarm_runtime.errors import GlobalBudgetExceeded, TaskBudgetExceeded
from swarm_runtime.llm.bounds import admits, input_token_bound, output_token_bound
from swarm_runtime.llm.budget import BudgetLedger, LedgerDocument
from swarm_runtime.llm.pricing import Price
from swarm_runtime.llm.provider import OpenAICompatibleProvider
from swarm_runtime.llm.rate_limit import TokenBucket
from swarm_runtime.llm.wrapper import SecureAPIWrapper
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace

MODEL = "bounds-model"
PRICE = Price(1.0, 2.0)
PROMPT = "Write a haiku about the secret plans"
SYSTEM = "You are terse."
BURST = 20


def llama31_tokens(prompt: str, system: str | None) -> int:
    """Prompt tokens Llama 3.1's template bills when every byte is its own token (the worst
    a byte-level tokenizer can do): begin-of-text, a system turn that always carries the
    ~19-token date preamble, the user turn, and the assistant's opening header."""
    system_turn = 4 + 19 + len((system or "").encode()) + 1
    return 1 + system_turn + 4 + len(prompt.encode()) + 1 + 4


def openai_tokens(prompt: str, system: str | None) -> int:
    """OpenAI's documented count: 3 per message, 1 per role name, 3 to prime the reply."""
    messages = [prompt] if system is None else [system, prompt]
    return sum(4 + len(text.encode()) for text in messages) + 3


@pytest.mark.parametrize("template", [llama31_tokens, openai_tokens])
@pytest.mark.parametrize("system", [None, SYSTEM, "€" * 40])
@pytest.mark.parametrize("prompt", ["", "x", PROMPT, "naïve café 東京 🙂" * 10])
def test_the_input_bound_covers_what_a_chat_template_bills(
    template: Callable[[str, str | None], int], system: str | None, prompt: str
) -> None:
    """The old bound (bytes + 32) was below Llama 3.1's template on a short prompt."""
    assert template(prompt, system) <= input_token_bound(prompt, system)


@pytest.mark.parametrize(
    ("requested", "cap", "sent"), [(1, 4096, 1), (4096, 4096, 4096), (65536, 256, 256)]
)
def test_output_bound_never_passes_the_cap(requested: int, cap: int, sent: int) -> None:
    assert output_token_bound(requested, cap) == sent


@pytest.mark.parametrize(
    ("spent", "held", "amount", "limit", "admitted"),
    [
        (0.0, 0.0, 1.0, 1.0, True),  # exactly reaching the limit
        (0.5, 0.25, 0.5, 1.0, False),  # would cross it
        (1.5, 0.0, 0.0, 1.0, False),  # an over-report put spend past it: nothing more
        (0.9, 0.1, 0.0, 1.0, False),  # spend plus holds at the limit
        (0.5, 0.0, 0.25, 1.0, True),
    ],
)
def test_admission_needs_spend_plus_holds_under_the_limit(
    spent: float, held: float, amount: float, limit: float, admitted: bool
) -> None:
    assert admits(spent, held, amount, limit) is admitted


def make_wrapper(workspace: Workspace, url: str, limit: float, **options: int) -> SecureAPIWrapper:
    provider = OpenAICompatibleProvider(url, SecretStr("sk-bounds"), timeout=10, retries=0)
    return SecureAPIWrapper(
        provider=provider,
        ledger=BudgetLedger(workspace, limit),
        limiter=TokenBucket(100_000),
        prices={MODEL: PRICE},
        workspace=workspace,
        default_model=MODEL,
        **options,
    )


def audit(workspace: Workspace) -> list[dict]:
    if not workspace.api_audit_path.exists():
        return []
    return [json.loads(line) for line in workspace.api_audit_path.read_text().splitlines()]


def events(workspace: Workspace) -> list[str]:
    return [record["event"] for record in audit(workspace)]


def burst(wrapper: SecureAPIWrapper, calls: int = BURST, **arguments: object) -> list[object]:
    """`calls` concurrent calls started together; each outcome is a result or the refusal."""
    start, outcomes = threading.Barrier(calls), []

    def one_call() -> None:
        start.wait()
        try:
            outcomes.append(wrapper.call_llm(PROMPT, temperature=0.0, **arguments))
        except (GlobalBudgetExceeded, TaskBudgetExceeded) as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=one_call) for _ in range(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def test_twenty_calls_to_an_honest_provider_never_pass_the_limit(workspace: Workspace) -> None:
    """max_tokens 1 against Llama 3.1's real template: each call billed a little more than
    the old hold, so a limit that fitted 7 holds was overshot by 7 small overruns."""
    billed = (llama31_tokens(PROMPT, None), 1)
    hold = PRICE.cost(input_token_bound(PROMPT), 1)
    with FakeLLMServer(usage=billed, delay=0.05) as server:
        wrapper = make_wrapper(workspace, server.url, limit=7 * hold)
        outcomes = burst(wrapper, max_tokens=1, task_id="t")
        served = len(server.requests)
    snapshot = wrapper.budget_snapshot()
    # 7 holds fit at once; a call starting after others settled (below their holds) may fit too.
    assert served >= 7 and len(outcomes) == BURST
    assert snapshot.spent == pytest.approx(served * PRICE.cost(*billed))
    assert snapshot.spent <= snapshot.limit and snapshot.reserved == 0
    assert "OVER_RESERVATION" not in events(workspace)


def test_an_over_report_is_charged_audited_and_stops_admission(workspace: Workspace) -> None:
    """A provider that bills 1,000 tokens for max_tokens 1 is charged what it reported,
    and while that spend is past the limit nothing more is admitted, however small."""
    hold = PRICE.cost(input_token_bound(PROMPT), 1)
    with FakeLLMServer(usage=(10, 1000)) as server:
        wrapper = make_wrapper(workspace, server.url, limit=10 * hold)
        result = wrapper.call_llm(PROMPT, max_tokens=1, temperature=0.0, task_id="t")
        with pytest.raises(GlobalBudgetExceeded):
            wrapper.call_llm("x", max_tokens=1, temperature=0.0, task_id="u")
        assert len(server.requests) == 1
    assert result.cost == pytest.approx(PRICE.cost(10, 1000))
    assert wrapper.budget_snapshot().spent == pytest.approx(result.cost)
    over = [record for record in audit(workspace) if record["event"] == "OVER_RESERVATION"]
    assert len(over) == 1
    assert over[0]["reserved"] == pytest.approx(hold)
    assert (over[0]["cost"], over[0]["task_id"]) == (pytest.approx(result.cost), "t")
    assert events(workspace)[-1] == "BUDGET_EXCEEDED"


def test_a_burst_against_an_over_reporting_provider_is_all_recorded(
    workspace: Workspace,
) -> None:
    """The calls admitted together are each charged and audited; after them, none more."""
    hold = PRICE.cost(input_token_bound(PROMPT), 1)
    with FakeLLMServer(usage=(10, 1000), delay=0.05) as server:
        wrapper = make_wrapper(workspace, server.url, limit=20 * hold)
        burst(wrapper, max_tokens=1)
        served = len(server.requests)
        with pytest.raises(GlobalBudgetExceeded):
            wrapper.call_llm(PROMPT, max_tokens=1, temperature=0.0)
        assert len(server.requests) == served
    snapshot = wrapper.budget_snapshot()
    assert snapshot.spent == pytest.approx(served * PRICE.cost(10, 1000))
    assert events(workspace).count("OVER_RESERVATION") == served


def test_a_task_max_budget_bounds_its_concurrent_calls_together(workspace: Workspace) -> None:
    """Each call used to be checked alone, so twenty calls of one task spent 20 holds."""
    hold = PRICE.cost(input_token_bound(PROMPT), 1)
    with FakeLLMServer(usage=(input_token_bound(PROMPT), 1), delay=0.05) as server:
        wrapper = make_wrapper(workspace, server.url, limit=100 * hold)
        outcomes = burst(wrapper, max_tokens=1, task_id="t", max_budget=3.5 * hold)
        assert len(server.requests) == 3
    refused = [o for o in outcomes if isinstance(o, TaskBudgetExceeded)]
    assert len(refused) == BURST - 3
    assert wrapper.budget_snapshot().spent == pytest.approx(3 * hold)
    assert events(workspace).count("TASK_BUDGET_EXCEEDED") == BURST - 3


def test_a_task_that_overran_its_max_budget_gets_no_more_calls(workspace: Workspace) -> None:
    hold = PRICE.cost(input_token_bound(PROMPT), 1)
    with FakeLLMServer(usage=(10, 1000)) as server:
        wrapper = make_wrapper(workspace, server.url, limit=1.0)
        wrapper.call_llm(PROMPT, max_tokens=1, temperature=0.0, task_id="t", max_budget=2 * hold)
        server.usage = (10, 1)
        with pytest.raises(TaskBudgetExceeded):
            wrapper.call_llm(
                PROMPT, max_tokens=1, temperature=0.0, task_id="t", max_budget=2 * hold
            )
        other = wrapper.call_llm(
            PROMPT, max_tokens=1, temperature=0.0, task_id="other", max_budget=2 * hold
        )
        assert len(server.requests) == 2
    assert other.cost == pytest.approx(PRICE.cost(10, 1))


def test_the_wrapper_caps_max_tokens_for_every_caller(workspace: Workspace) -> None:
    with FakeLLMServer(usage=(10, 1)) as server:
        wrapper = make_wrapper(workspace, server.url, limit=1.0, max_output_tokens=256)
        wrapper.call_llm(PROMPT, max_tokens=60_000, temperature=0.0)
        [sent] = server.requests
    assert sent["body"]["max_tokens"] == 256


def test_a_guessed_output_count_stays_within_max_tokens(workspace: Workspace) -> None:
    """No usage reported: the guess from the reply's length once ran past max_tokens."""
    with FakeLLMServer(usage=None, reply_text="supercalifragilistic " * 20) as server:
        wrapper = make_wrapper(workspace, server.url, limit=1.0)
        result = wrapper.call_llm(PROMPT, max_tokens=4, temperature=0.0)
    assert result.completion_tokens == 4
    assert "OVER_RESERVATION" not in events(workspace)


def api_settings(workspace: Workspace, server: FakeLLMServer, folder: Path) -> Settings:
    prices = folder / "prices.json"
    prices.write_text(json.dumps({MODEL: {"input": 1.0, "output": 2.0}}))
    return Settings(
        workspace=workspace.root,
        llm_base_url=server.url,
        llm_model=MODEL,
        prices_file=prices,
        max_output_tokens=256,
    )


@pytest.mark.parametrize(
    ("asked", "status", "sent"), [(None, 200, 256), (200, 200, 200), (257, 400, None)]
)
def test_the_api_defaults_max_tokens_within_its_cap_and_refuses_above_it(
    workspace: Workspace, tmp_path: Path, asked: int | None, status: int, sent: int | None
) -> None:
    with FakeLLMServer(usage=(10, 1)) as server:
        settings = api_settings(workspace, server, tmp_path)
        client = create_app(settings).test_client()
        body = {"prompt": PROMPT, "mode": "llm"} | ({} if asked is None else {"max_tokens": asked})
        reply = client.post(
            "/cycle",
            json=body,
            headers={TOKEN_HEADER: workspace.token_path.read_text().strip()},
            base_url=f"http://127.0.0.1:{settings.api_port}",
        )
        received = [request["body"]["max_tokens"] for request in server.requests]
    assert reply.status_code == status, reply.get_json()
    assert received == ([] if sent is None else [sent])
    if status == 400:
        assert reply.get_json()["field"] == "max_tokens"
        assert "SWARM_MAX_OUTPUT_TOKENS (256)" in reply.get_json()["error"]


@on_both_backends
def test_an_api_killed_mid_call_is_charged_the_hold_not_refunded(
    tmp_path: Path, spawn: Callable[..., RunningProcess], backend: Backend, workspace: Workspace
) -> None:
    """kill -9 after the request reached the provider: the restarted API used to release
    the hold, the retry was paid again, and the ledger ended one paid call short."""
    body = {"prompt": PROMPT, "mode": "llm", "max_tokens": 16, "task_id": "crashed"}
    with FakeLLMServer(usage=(10, 4)) as server:
        settings = api_settings(workspace, server, tmp_path)
        env = backend.env(
            SWARM_LLM_BASE_URL=server.url,
            SWARM_LLM_MODEL=MODEL,
            SWARM_PRICES_FILE=str(settings.prices_file),
            SWARM_LLM_RETRIES="0",
        )
        first = spawn(["swarm.py", "--port", "0"], env)
        token = {TOKEN_HEADER: workspace.token_path.read_text().strip()}
        server.gate = threading.Event()

        def doomed_call() -> None:
            try:
                requests.post(first.url + "/cycle", json=body, headers=token, timeout=30)
            except requests.ConnectionError:
                pass

        caller = threading.Thread(target=doomed_call)
        caller.start()
        wait_until(lambda: len(server.requests) == 1)
        first.proc.kill()
        first.proc.wait(timeout=10)
        server.gate.set()
        caller.join(timeout=30)
        [held] = ledger_of(backend).reservations.values()

        second = spawn(["swarm.py", "--port", "0"], env)
        retried = requests.post(second.url + "/cycle", json=body, headers=token, timeout=30)
        assert retried.status_code == 200, retried.text
    final = ledger_of(backend)
    assert final.reservations == {}
    assert final.spent == pytest.approx(held.amount + PRICE.cost(10, 4))
    assert final.tasks.spent["crashed"] == pytest.approx(final.spent)
    [charged] = [r for r in audit(workspace) if r["event"] == "UNSETTLED_CHARGED"]
    assert (charged["task_id"], charged["model"]) == ("crashed", MODEL)
    assert charged["cost"] == pytest.approx(held.amount)
    assert "died" in charged["error"]
    assert held.sent, "the hold was not marked as possibly billed"


def ledger_of(backend: Backend) -> LedgerDocument:
    return LedgerDocument.model_validate(backend.documents.budget.read(dict))
