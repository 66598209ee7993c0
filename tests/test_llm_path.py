"""The LLM path end to end: settings to wrapper to a real HTTP provider, and the limiter."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer

from swarm_runtime.errors import GlobalBudgetExceeded, RateLimited
from swarm_runtime.llm.provider import OpenAICompatibleProvider
from swarm_runtime.llm.rate_limit import TokenBucket
from swarm_runtime.llm.wrapper import LLMCallResult, SecureAPIWrapper, from_settings
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace

API_KEY = "sk-test-path-91c0d7"
FAKE_SERVER = Path(__file__).with_name("fake_llm_server.py")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_its_rate_then_says_when_to_retry() -> None:
    clock = FakeClock()
    bucket = TokenBucket(3, clock=clock)
    for _ in range(3):
        bucket.acquire()
    with pytest.raises(RateLimited) as caught:
        bucket.acquire()
    assert caught.value.retry_after == pytest.approx(20.0)
    clock.now += 10
    with pytest.raises(RateLimited) as caught:
        bucket.acquire()
    assert caught.value.retry_after == pytest.approx(10.0)
    clock.now += 10
    bucket.acquire()


def test_bucket_refills_no_higher_than_its_capacity() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2, clock=clock)
    clock.now += 3600
    bucket.acquire()
    bucket.acquire()
    with pytest.raises(RateLimited):
        bucket.acquire()


def test_bucket_hands_out_each_token_once_across_threads() -> None:
    bucket = TokenBucket(10, clock=FakeClock())
    granted: list[bool] = []
    start = threading.Barrier(40)

    def take() -> None:
        start.wait()
        try:
            bucket.acquire()
            granted.append(True)
        except RateLimited:
            granted.append(False)

    threads = [threading.Thread(target=take) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert granted.count(True) == 10
    assert len(granted) == 40


def ask(wrapper: SecureAPIWrapper) -> LLMCallResult:
    return wrapper.call_llm(
        "hi", model=None, max_tokens=200, temperature=0, task_id=None, max_budget=None
    )


def test_from_settings_runs_the_whole_path(tmp_path: Path) -> None:
    prices_file = tmp_path / "prices.json"
    prices_file.write_text(json.dumps({"house-model": {"input": 1000, "output": 1000}}))
    with FakeLLMServer(usage={"prompt_tokens": 300, "completion_tokens": 200}) as server:
        settings = Settings(
            workspace=tmp_path,
            llm_base_url=server.url + "/",
            llm_api_key=API_KEY,
            llm_model="house-model",
            prices_file=prices_file,
            budget_limit=1.2,
        )
        wrapper = from_settings(settings, Workspace(tmp_path))
        result = ask(wrapper)
        assert (result.model, result.cost) == ("house-model", pytest.approx(0.5))
        assert server.requests[0]["headers"]["Authorization"] == f"Bearer {API_KEY}"

        restarted = from_settings(settings, Workspace(tmp_path))
        assert restarted.budget_snapshot().spent == pytest.approx(0.5), "spend lost on restart"
        ask(restarted)
        with pytest.raises(GlobalBudgetExceeded):
            ask(restarted)
    assert API_KEY not in Workspace(tmp_path).api_audit_path.read_text()


def test_from_settings_without_a_provider_is_offline_and_free(tmp_path: Path) -> None:
    wrapper = from_settings(Settings(workspace=tmp_path, budget_limit=0), Workspace(tmp_path))
    result = ask(wrapper)
    assert (result.model, result.cost) == ("offline", 0)
    assert result.text.startswith("[offline model]")


def test_fake_server_runs_as_a_process_and_stops_cleanly() -> None:
    process = subprocess.Popen(
        [sys.executable, str(FAKE_SERVER), "--port", "0", "--delay", "0.01"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        base_url = line.removeprefix("listening on ")
        provider = OpenAICompatibleProvider(base_url, None, timeout=5, retries=0)
        completion = provider.complete("ping", model="m", max_tokens=5, temperature=0)
        assert completion.text == "fake reply"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
