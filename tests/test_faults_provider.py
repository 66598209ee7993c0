"""Fault injection on the LLM path, through a real swarm.py and a real HTTP provider.

The provider's own retry rules are tested in test_llm_provider.py against the wrapper's
parts. Here each misbehaviour goes through the whole execution API, and the checks are
what an operator relies on: the attempts the provider saw are bounded, the answer says
what failed, and the budget ledger is left with no open reservation and exactly the
spend that was really charged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import (
    Backend,
    RunningProcess,
    child_env,
    on_both_backends,
    run_worker,
    start_process,
    write_queue,
)
from fake_llm_server import FakeLLMServer, ScriptedResponse

from swarm_runtime.contract import TOKEN_HEADER
from swarm_runtime.llm.budget import LedgerDocument
from swarm_runtime.llm.pricing import Price
from swarm_runtime.llm.provider import estimate_tokens
from swarm_runtime.llm.wrapper import input_token_bound
from swarm_runtime.store.state_files import Workspace

MODEL = "fault-model"
PRICE = Price(1000.0, 2000.0)
PROMPT = "Write a haiku about unreliable servers"
MAX_TOKENS = 64
LLM_TIMEOUT = 0.3


@dataclass
class LlmPath:
    workspace: Workspace
    provider: FakeLLMServer
    api: RunningProcess
    token: str

    def cycle(self, **overrides: Any) -> requests.Response:
        body = {"prompt": PROMPT, "model": MODEL, "max_tokens": MAX_TOKENS, "task_id": "t"}
        return requests.post(
            self.api.url + "/cycle",
            json=body | overrides,
            headers={TOKEN_HEADER: self.token},
            timeout=60,
        )

    def ledger(self) -> LedgerDocument:
        return LedgerDocument.model_validate_json(self.workspace.budget_ledger_path.read_bytes())


def prices_file(folder: Path) -> Path:
    path = folder / "prices.json"
    path.write_text(
        json.dumps({MODEL: {"input": PRICE.input_per_million, "output": PRICE.output_per_million}})
    )
    return path


def api_env(workspace: Workspace, provider: FakeLLMServer, folder: Path, **extra: str) -> dict:
    return child_env(
        workspace,
        SWARM_LLM_BASE_URL=provider.url,
        SWARM_LLM_MODEL=MODEL,
        SWARM_PRICES_FILE=str(prices_file(folder)),
        SWARM_RATE_LIMIT="100000",
        **extra,
    )


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlmPath]:
    """One swarm.py for every case: a provider timeout of 0.3 s and one retry."""
    folder = tmp_path_factory.mktemp("provider-faults")
    workspace = Workspace(folder / "ws")
    workspace.ensure_layout()
    with FakeLLMServer() as provider:
        env = api_env(
            workspace,
            provider,
            folder,
            SWARM_LLM_TIMEOUT=str(LLM_TIMEOUT),
            SWARM_LLM_RETRIES="1",
            SWARM_BUDGET_LIMIT="100",
        )
        api = start_process(["swarm.py", "--port", "0"], env)
        try:
            yield LlmPath(workspace, provider, api, workspace.token_path.read_text().strip())
        finally:
            assert api.stop() == 0, api.output


@pytest.fixture
def llm(path: LlmPath) -> LlmPath:
    """The shared path with a well-behaved provider and an empty request log."""
    provider = path.provider
    with provider._lock:
        provider._received.clear()
        provider.script.clear()
    provider.delay, provider.usage = 0.0, (12, 8)
    return path


@dataclass(frozen=True)
class Fault:
    name: str
    script: list[ScriptedResponse] = field(default_factory=list)
    delay: float = 0.0
    usage: tuple[int, int] | None = (12, 8)
    attempts: int = 1
    status: int = 200
    says: tuple[str, ...] = ()
    # What a failed call costs: nothing when it never reached the provider, the whole
    # hold when it may have been billed and its real cost is unknown.
    charged: str = "nothing"


FAULTS = [
    Fault(
        "slow past the timeout",
        delay=LLM_TIMEOUT + 0.5,
        attempts=1,  # not retried: the first request may have been billed
        status=502,
        says=("no answer within", "may have been billed"),
        charged="the hold",
    ),
    Fault(
        "429 with Retry-After, then an answer",
        script=[(429, {"error": "slow down"}, {"Retry-After": "0.2"})],
        attempts=2,
    ),
    Fault(
        "429 until the retries run out",
        status=502,
        attempts=2,
        script=[(429, {"error": "slow down"}, {"Retry-After": "0.1"})] * 2,
        says=("HTTP 429", "after 2 attempt(s)"),
    ),
    Fault(
        "500 every time",
        script=[(500, "upstream broke", {})] * 2,
        attempts=2,
        status=502,
        says=("HTTP 500", "upstream broke", "after 2 attempt(s)"),
    ),
    Fault(
        "malformed JSON",
        script=[(200, "{'choices': [", {})],
        status=502,
        says=("malformed JSON",),
        charged="the hold",
    ),
    Fault("missing usage", usage=None),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_a_misbehaving_provider_ends_bounded_and_the_budget_holds_only_real_spend(
    llm: LlmPath, fault: Fault
) -> None:
    llm.provider.script.extend(fault.script)
    llm.provider.delay, llm.provider.usage = fault.delay, fault.usage
    spent_before = llm.ledger().spent if llm.workspace.budget_ledger_path.exists() else 0.0

    response = llm.cycle()

    assert response.status_code == fault.status, response.text
    assert len(llm.provider.requests) == fault.attempts
    ledger = llm.ledger()
    assert ledger.reservations == {}, "a reservation was left open"
    charged = ledger.spent - spent_before
    if fault.status != 200:
        body = response.json()
        assert body["error"].startswith("LLM provider failed")
        assert all(words in body["error"] for words in fault.says), body["error"]
        assert body["retryable"] is False, "the worker would multiply the attempts"
        hold = PRICE.cost(input_token_bound(PROMPT), MAX_TOKENS)
        assert charged == pytest.approx(hold if fault.charged == "the hold" else 0.0)
        return
    reply = response.json()
    if fault.usage is None:
        reply_text = reply["result"]
        tokens = (estimate_tokens("\n" + PROMPT), estimate_tokens(reply_text))
    else:
        tokens = fault.usage
    assert charged == pytest.approx(PRICE.cost(*tokens))
    assert reply["budget_used"] == pytest.approx(charged, abs=1e-6)
    assert charged <= PRICE.cost(input_token_bound(PROMPT), MAX_TOKENS), "charged past the hold"


def test_a_task_whose_provider_sends_garbage_fails_once_with_the_reason(
    llm: LlmPath,
) -> None:
    """The worker does not re-send a call the API marked as not retryable."""
    llm.provider.script.append((200, "<html>gateway</html>", {}))
    write_queue(
        llm.workspace,
        [{"id": "garbled", "prompt": "Write a haiku about HTML", "max_budget": 10.0}],
        llm.api.url,
    )
    result = run_worker(llm.workspace, "--once", SWARM_POLL_INTERVAL="0.05")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(llm.provider.requests) == 1, result.stdout + llm.workspace.log_path.read_text()
    events = [json.loads(line) for line in llm.workspace.log_path.read_text().splitlines()]
    final = [e for e in events if e["task_id"] == "garbled"][-1]
    assert final["status"] == "failed"
    assert "malformed JSON" in final["errors"] and "502" in final["errors"]
    assert llm.ledger().reservations == {}


# --- the global budget under a burst --------------------------------------------------

BURST = 50
AFFORDABLE = 12


def budget_ledger(backend: Backend) -> LedgerDocument | None:
    """The ledger as it stands, wherever the runtime keeps it; None before its first write."""
    raw = backend.documents.budget.read(lambda: None)
    return None if raw is None else LedgerDocument.model_validate(raw)


def budgeted_burst(
    targets: list[tuple[str | None, str]], ledger: Callable[[], LedgerDocument | None]
) -> tuple[list[requests.Response], list[float]]:
    """BURST calls to /cycle at once, spread over `targets` (an API's url and token),
    while a reader watches the ledger: the answers, and every spent-plus-held it saw."""
    start, done = threading.Barrier(BURST + 1), threading.Event()
    answers: list[requests.Response] = []
    peaks: list[float] = []

    def call(n: int) -> None:
        url, token = targets[n % len(targets)]
        body = {"prompt": PROMPT, "model": MODEL, "max_tokens": MAX_TOKENS}
        start.wait()
        answers.append(
            requests.post(f"{url}/cycle", json=body, headers={TOKEN_HEADER: token}, timeout=60)
        )

    def watch() -> None:
        start.wait()
        while not done.is_set():
            seen = ledger()
            if seen is not None:
                peaks.append(seen.spent + seen.reserved)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(BURST)]
    watcher = threading.Thread(target=watch)
    for thread in [*threads, watcher]:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    done.set()
    watcher.join(timeout=10)
    return answers, peaks


@on_both_backends
def test_fifty_concurrent_calls_near_the_limit_never_spend_past_it(
    tmp_path: Path, spawn: Callable[..., RunningProcess], backend: Backend
) -> None:
    """Two swarm.py processes share one ledger (on files in their one workspace; in the
    database from a workspace each, as on two hosts); every call costs exactly its hold,
    and the limit fits 12.5 of them. A reader checks the ledger all along: spent plus the
    open holds never pass the limit, and in the end exactly 12 calls were served and paid."""
    estimate = PRICE.cost(input_token_bound(PROMPT), MAX_TOKENS)
    limit = (AFFORDABLE + 0.5) * estimate
    with FakeLLMServer(usage=(input_token_bound(PROMPT), MAX_TOKENS), delay=0.1) as provider:
        hosts = backend.workspaces(2)
        limited = {"SWARM_BUDGET_LIMIT": repr(limit), **backend.variables()}
        apis = [
            spawn(["swarm.py", "--port", "0"], api_env(host, provider, tmp_path, **limited))
            for host in hosts
        ]
        tokens = [host.token_path.read_text().strip() for host in hosts]
        targets = [(api.url, token) for api, token in zip(apis, tokens, strict=True)]
        answers, peaks = budgeted_burst(targets, lambda: budget_ledger(backend))
        served = len(provider.requests)

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * AFFORDABLE + [403] * (BURST - AFFORDABLE)
    assert all(
        "global budget exceeded" in a.json()["error"] for a in answers if a.status_code == 403
    )
    assert served == AFFORDABLE
    assert peaks and max(peaks) <= limit
    final = budget_ledger(backend)
    assert final is not None and final.reservations == {}
    assert final.spent == pytest.approx(AFFORDABLE * estimate) and final.spent <= limit
