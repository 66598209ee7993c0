from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer
from pydantic import SecretStr

from swarm_runtime.errors import (
    GlobalBudgetExceeded,
    ProviderError,
    RateLimited,
    TaskBudgetExceeded,
    UnpricedModelError,
)
from swarm_runtime.llm.budget import BudgetLedger, LedgerDocument, Reservation
from swarm_runtime.llm.pricing import BUILTIN_PRICES, Price
from swarm_runtime.llm.provider import OfflineProvider, OpenAICompatibleProvider, Provider
from swarm_runtime.llm.rate_limit import TokenBucket
from swarm_runtime.llm.wrapper import SecureAPIWrapper, input_token_bound
from swarm_runtime.store.state_files import Workspace

API_KEY = "sk-test-wrapper-4d2b8e"
PROMPT = "Write a haiku about the secret plans"
PRICES = {**BUILTIN_PRICES, "test-model": Price(1.0, 2.0)}


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(usage=(100, 50)) as running:
        yield running


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def http_provider(base_url: str, *, retries: int = 0) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(
        base_url, SecretStr(API_KEY), timeout=5, retries=retries, backoff_base=0.01
    )


def make_wrapper(
    workspace: Workspace,
    provider: Provider,
    *,
    limit: float = 1.0,
    limiter: TokenBucket | None = None,
    audit_prompts: bool = False,
) -> SecureAPIWrapper:
    return SecureAPIWrapper(
        provider=provider,
        ledger=BudgetLedger(workspace, limit),
        limiter=limiter or TokenBucket(1000),
        prices=PRICES,
        workspace=workspace,
        default_model="test-model",
        audit_prompts=audit_prompts,
        secrets=[API_KEY],
    )


def call(wrapper: SecureAPIWrapper, **overrides):
    arguments = {
        "model": None,
        "max_tokens": 100,
        "temperature": 0.2,
        "task_id": "t1",
        "max_budget": None,
    }
    return wrapper.call_llm(PROMPT, **{**arguments, **overrides})


def audit_records(workspace: Workspace) -> list[dict]:
    if not workspace.api_audit_path.exists():
        return []
    return [json.loads(line) for line in workspace.api_audit_path.read_text().splitlines()]


def audit_events(workspace: Workspace) -> list[str]:
    return [record["event"] for record in audit_records(workspace)]


def test_offline_calls_are_free_and_touch_no_budget(workspace: Workspace) -> None:
    wrapper = make_wrapper(workspace, OfflineProvider(), limit=0.0)
    first = call(wrapper, model="gpt-4o")
    assert first == call(wrapper, model="gpt-4o", max_budget=0.0)
    assert (first.model, first.cost) == ("offline", 0.0)
    assert first.text.startswith("[offline model]")
    assert wrapper.budget_snapshot().spent == 0
    assert audit_events(workspace) == ["API_CALL_SUCCESS", "API_CALL_SUCCESS"]
    assert audit_records(workspace)[0]["model"] == "offline"


def test_a_paid_call_is_settled_at_its_real_cost(
    workspace: Workspace, server: FakeLLMServer
) -> None:
    wrapper = make_wrapper(workspace, http_provider(server.url))
    result = call(wrapper)
    assert result.cost == pytest.approx(Price(1.0, 2.0).cost(100, 50))
    assert (result.prompt_tokens, result.completion_tokens, result.model) == (100, 50, "test-model")
    snapshot = wrapper.budget_snapshot()
    assert (snapshot.spent, snapshot.reserved) == (pytest.approx(result.cost), 0)
    [record] = audit_records(workspace)
    assert record["event"] == "API_CALL_SUCCESS"
    assert record["cost"] == pytest.approx(result.cost)
    assert (record["task_id"], record["prompt_tokens"], record["completion_tokens"]) == (
        "t1",
        100,
        50,
    )
    assert record["prompt_sha256"] == hashlib.sha256(PROMPT.encode()).hexdigest()
    assert record["latency_ms"] >= 0
    assert record["timestamp"].endswith("+00:00")
    assert "prompt" not in record
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {API_KEY}"


def test_the_audit_log_holds_neither_the_prompt_nor_the_key(
    workspace: Workspace, server: FakeLLMServer
) -> None:
    wrapper = make_wrapper(workspace, http_provider(server.url))
    call(wrapper)
    server.script.append((401, {"error": f"invalid key Bearer {API_KEY}"}, {}))
    with pytest.raises(ProviderError):
        call(wrapper)
    text = workspace.api_audit_path.read_text()
    assert PROMPT not in text
    assert API_KEY not in text
    assert "HTTP 401" in audit_records(workspace)[-1]["error"]


def test_audit_prompts_records_the_prompt_scrubbed(workspace: Workspace) -> None:
    wrapper = make_wrapper(workspace, OfflineProvider(), audit_prompts=True)
    wrapper.call_llm(
        f"use {API_KEY} now",
        model=None,
        max_tokens=10,
        temperature=0,
        task_id=None,
        max_budget=None,
    )
    [record] = audit_records(workspace)
    assert record["prompt"] == "use *** now"


def test_unpriced_model_on_a_paid_provider_is_refused_before_any_call(
    workspace: Workspace,
) -> None:
    wrapper = make_wrapper(workspace, http_provider("https://llm.example.invalid/v1"))
    with pytest.raises(UnpricedModelError, match="SWARM_PRICES_FILE"):
        call(wrapper, model="mystery-model")
    [record] = audit_records(workspace)
    assert (record["event"], record["model"]) == ("UNPRICED_MODEL", "mystery-model")


def test_unpriced_model_on_a_loopback_provider_is_free(
    workspace: Workspace, server: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Free, and said once: a local gateway to a paid API must be given prices."""
    wrapper = make_wrapper(workspace, http_provider(server.url), limit=0.0)
    result = call(wrapper, model="llama3:8b")
    call(wrapper, model="llama3:8b")
    assert result.cost == 0
    assert wrapper.budget_snapshot().spent == 0
    warnings = [r.getMessage() for r in caplog.records if "treated as free" in r.getMessage()]
    assert len(warnings) == 1 and "llama3:8b" in warnings[0]
    assert "SWARM_PRICES_FILE" in warnings[0]


def test_a_priced_model_on_a_loopback_provider_is_charged(
    workspace: Workspace, server: FakeLLMServer
) -> None:
    wrapper = make_wrapper(workspace, http_provider(server.url))
    assert http_provider(server.url).is_local
    result = call(wrapper, model="gpt-4o-mini")
    assert result.cost == pytest.approx(BUILTIN_PRICES["gpt-4o-mini"].cost(100, 50))
    assert wrapper.budget_snapshot().spent == pytest.approx(result.cost)


def test_task_budget_refuses_before_the_provider_is_called(
    workspace: Workspace, server: FakeLLMServer
) -> None:
    wrapper = make_wrapper(workspace, http_provider(server.url))
    estimate = Price(1.0, 2.0).cost(input_token_bound(PROMPT), 100)
    with pytest.raises(TaskBudgetExceeded) as caught:
        call(wrapper, max_budget=estimate / 2)
    assert caught.value.estimate == pytest.approx(estimate)
    assert "'t1'" in str(caught.value)
    assert server.requests == []
    assert audit_events(workspace) == ["TASK_BUDGET_EXCEEDED"]
    assert wrapper.budget_snapshot().reserved == 0


def test_global_budget_refuses_a_call_that_would_cross_it(
    workspace: Workspace, server: FakeLLMServer
) -> None:
    estimate = Price(1.0, 2.0).cost(input_token_bound(PROMPT), 100)
    wrapper = make_wrapper(workspace, http_provider(server.url), limit=estimate / 2)
    with pytest.raises(GlobalBudgetExceeded) as caught:
        call(wrapper)
    assert all(word in str(caught.value) for word in ("limit", "spent", "reserved"))
    assert server.requests == []
    assert audit_events(workspace) == ["BUDGET_EXCEEDED"]


def test_no_overshoot_under_twenty_concurrent_requests(workspace: Workspace) -> None:
    """In-flight calls hold their worst case, so a burst cannot spend past the limit."""
    bound, max_tokens = input_token_bound(PROMPT), 63
    estimate = Price(1.0, 2.0).cost(bound, max_tokens)
    limit = 7.5 * estimate
    start = threading.Barrier(20)
    outcomes: list[object] = []
    with FakeLLMServer(usage=(bound, max_tokens), delay=0.05) as server:
        wrapper = make_wrapper(workspace, http_provider(server.url), limit=limit)

        def one_call() -> None:
            start.wait()
            try:
                outcomes.append(call(wrapper, max_tokens=max_tokens))
            except GlobalBudgetExceeded as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=one_call) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        served = len(server.requests)
    successes = [o for o in outcomes if not isinstance(o, GlobalBudgetExceeded)]
    snapshot = wrapper.budget_snapshot()
    assert len(outcomes) == 20
    assert len(successes) == served == 7
    assert snapshot.spent <= limit
    assert snapshot.spent == pytest.approx(7 * estimate)
    assert snapshot.reserved == 0
    assert audit_events(workspace).count("BUDGET_EXCEEDED") == 13


def test_a_failed_call_is_refunded(workspace: Workspace, server: FakeLLMServer) -> None:
    wrapper = make_wrapper(workspace, http_provider(server.url, retries=1))
    server.script.extend([(500, None, {}), (500, None, {})])
    with pytest.raises(ProviderError):
        call(wrapper)
    snapshot = wrapper.budget_snapshot()
    assert (snapshot.spent, snapshot.reserved) == (0, 0)
    [record] = audit_records(workspace)
    assert record["event"] == "API_CALL_FAILURE"
    assert "after 2 attempt(s)" in record["error"]


def test_rate_limit_refuses_and_is_audited(workspace: Workspace) -> None:
    limiter = TokenBucket(1, clock=lambda: 100.0)
    wrapper = make_wrapper(workspace, OfflineProvider(), limiter=limiter)
    call(wrapper)
    with pytest.raises(RateLimited) as caught:
        call(wrapper)
    assert caught.value.retry_after == pytest.approx(60.0)
    assert audit_events(workspace) == ["API_CALL_SUCCESS", "RATE_LIMITED"]


def test_a_dead_process_call_is_charged_and_audited_even_when_the_next_is_refused(
    workspace: Workspace, server: FakeLLMServer
) -> None:
    """The hold of a process that died mid-call is charged in full (the provider may have
    billed it) and leaves an UNSETTLED_CHARGED line, whatever happens to the call that found it."""
    wrapper = make_wrapper(workspace, http_provider(server.url), limit=0.001)
    dead_hold = Reservation(
        amount=0.001, task_id="gone", pid=2**22 + 1, created_at="2026-01-01T00:00:00", sent=True
    )
    workspace.budget_ledger_path.write_text(
        LedgerDocument(reservations={"r1": dead_hold}).model_dump_json()
    )
    with pytest.raises(GlobalBudgetExceeded):
        call(wrapper)
    assert server.requests == []
    assert audit_events(workspace) == ["UNSETTLED_CHARGED", "BUDGET_EXCEEDED"]
    charged = audit_records(workspace)[0]
    assert (charged["task_id"], charged["cost"], charged["reservation"]) == ("gone", 0.001, "r1")
    assert charged["prompt_sha256"] is None
    assert wrapper.budget_snapshot().spent == 0.001
