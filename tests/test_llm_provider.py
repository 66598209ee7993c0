from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from fake_llm_server import FakeLLMServer
from pydantic import SecretStr

from swarm_runtime.contract import OFFLINE_MODEL
from swarm_runtime.errors import ProviderError
from swarm_runtime.llm.provider import (
    OfflineProvider,
    OpenAICompatibleProvider,
    build_provider,
    estimate_tokens,
)
from swarm_runtime.settings import Settings

API_KEY = "sk-test-7f3a9c1e5b"


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as running:
        yield running


def provider_for(
    server: FakeLLMServer, *, retries: int = 0, timeout: float = 5.0, sleep=time.sleep
) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(
        server.url,
        SecretStr(API_KEY),
        timeout=timeout,
        retries=retries,
        sleep=sleep,
        backoff_base=0.01,
    )


def ask(provider: OpenAICompatibleProvider, prompt: str = "hello"):
    return provider.complete(prompt, model="test-model", max_tokens=64, temperature=0.2)


def echo_key(status: int) -> tuple[int, dict, dict]:
    """A server that echoes the request, Authorization header included, into its error."""
    return status, {"error": {"message": f"bad request with Bearer {API_KEY}"}}, {}


def test_offline_provider_is_deterministic_and_says_so() -> None:
    provider = OfflineProvider()
    first = provider.complete("Summarise the plan", model="gpt-4o", max_tokens=50, temperature=1)
    again = provider.complete("Summarise the plan", model="gpt-4o", max_tokens=50, temperature=0)
    other = provider.complete("Another prompt", model="gpt-4o", max_tokens=50, temperature=0)
    assert first == again
    assert first.text != other.text
    assert first.text.startswith("[offline model] deterministic response to: Summarise the plan")
    assert first.model == OFFLINE_MODEL
    assert first.prompt_tokens > 0 and first.completion_tokens > 0
    assert provider.model_for("gpt-4o") == OFFLINE_MODEL
    assert provider.is_local


def test_offline_answer_is_never_empty_and_echoes_a_bounded_prefix() -> None:
    provider = OfflineProvider()
    assert provider.complete("", model="x", max_tokens=1, temperature=0).text
    long_prompt = "word " * 1000
    text = provider.complete(long_prompt, model="x", max_tokens=1, temperature=0).text
    assert len(text) < 300


def test_request_shape_and_usage(server: FakeLLMServer) -> None:
    completion = provider_for(server).complete(
        "hello", model="test-model", max_tokens=64, temperature=0.3, system="be brief"
    )
    assert (completion.text, completion.model) == ("fake reply", "test-model")
    assert (completion.prompt_tokens, completion.completion_tokens) == (12, 8)
    assert completion.usage_reported
    [received] = server.requests
    assert received["body"] == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"},
        ],
        "max_tokens": 64,
        "temperature": 0.3,
    }
    assert received["headers"]["Authorization"] == f"Bearer {API_KEY}"


def test_no_authorization_header_without_a_key(server: FakeLLMServer) -> None:
    provider = OpenAICompatibleProvider(server.url, None, timeout=5, retries=0)
    ask(provider)
    [received] = server.requests
    assert "Authorization" not in received["headers"]
    assert received["body"]["messages"] == [{"role": "user", "content": "hello"}]


def test_429_waits_for_retry_after_then_succeeds(server: FakeLLMServer) -> None:
    server.script.append((429, {"error": "slow down"}, {"Retry-After": "0.2"}))
    started = time.monotonic()
    completion = ask(provider_for(server, retries=2))
    assert time.monotonic() - started >= 0.2
    assert completion.text == "fake reply"
    assert len(server.requests) == 2


def test_retry_after_is_capped(server: FakeLLMServer) -> None:
    waits: list[float] = []
    server.script.append((429, None, {"Retry-After": "3600"}))
    ask(provider_for(server, retries=1, sleep=waits.append))
    assert waits == [30.0]


def test_server_errors_are_retried(server: FakeLLMServer) -> None:
    server.script.extend([(500, None, {}), (502, "bad gateway", {})])
    assert ask(provider_for(server, retries=3)).text == "fake reply"
    assert len(server.requests) == 3


def test_client_errors_are_not_retried_and_never_show_the_key(server: FakeLLMServer) -> None:
    server.script.append(echo_key(400))
    with pytest.raises(ProviderError) as caught:
        ask(provider_for(server, retries=3))
    assert len(server.requests) == 1
    assert (caught.value.status_code, caught.value.retryable) == (400, False)
    assert "HTTP 400" in str(caught.value)
    assert API_KEY not in str(caught.value)
    assert "Bearer ***" in str(caught.value)


def test_redirects_are_not_followed_so_the_key_stays_put(server: FakeLLMServer) -> None:
    server.script.append((307, None, {"Location": "http://127.0.0.1:9/elsewhere"}))
    with pytest.raises(ProviderError, match="HTTP 307"):
        ask(provider_for(server, retries=2))
    assert len(server.requests) == 1


def test_exhausted_retries_name_the_attempts_and_the_last_cause(server: FakeLLMServer) -> None:
    server.script.extend([(503, None, {}), (503, None, {}), echo_key(503)])
    with pytest.raises(ProviderError) as caught:
        ask(provider_for(server, retries=2))
    assert len(server.requests) == 3
    message = str(caught.value)
    assert "after 3 attempt(s)" in message
    assert "HTTP 503" in message
    assert API_KEY not in message
    assert (caught.value.status_code, caught.value.retryable) == (503, False)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("this is not json", "malformed JSON"),
        ({"choices": []}, "unexpected shape"),
        ({"choices": [{"message": {"content": None}}]}, "choices.0.message.content"),
        ({"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "many"}}, "usage"),
    ],
)
def test_unreadable_replies_fail_without_retry(server: FakeLLMServer, body, expected) -> None:
    server.script.append((200, body, {}))
    with pytest.raises(ProviderError, match=expected):
        ask(provider_for(server, retries=3))
    assert len(server.requests) == 1


def test_missing_usage_is_estimated(server: FakeLLMServer) -> None:
    server.usage = None
    completion = ask(provider_for(server), "count these five words please")
    assert not completion.usage_reported
    assert completion.prompt_tokens == estimate_tokens("\ncount these five words please")
    assert completion.completion_tokens == estimate_tokens("fake reply")


def test_a_read_timeout_is_not_retried_and_may_have_been_billed(server: FakeLLMServer) -> None:
    """The request reached the provider, which may run and bill it: a second request could
    be billed again, so the failure is final and says the first may have cost money."""
    server.delay = 5.0
    started = time.monotonic()
    with pytest.raises(ProviderError, match="no answer within 0.2s") as caught:
        ask(provider_for(server, retries=3, timeout=0.2))
    assert time.monotonic() - started < 2.0
    assert len(server.requests) == 1
    assert caught.value.maybe_billed and not caught.value.retryable


def test_a_connection_dropped_after_the_request_may_have_been_billed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def read_then_hang_up() -> None:
            for _ in range(2):
                conn, _ = listener.accept()
                with conn:
                    conn.recv(65536)

        threading.Thread(target=read_then_hang_up, daemon=True).start()
        provider = OpenAICompatibleProvider(
            f"http://127.0.0.1:{port}/v1", SecretStr(API_KEY), timeout=5, retries=1
        )
        with pytest.raises(ProviderError, match="connection lost") as caught:
            ask(provider)
    assert caught.value.maybe_billed


def test_connection_refused_is_a_provider_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = OpenAICompatibleProvider(
        f"http://127.0.0.1:{port}/v1", SecretStr(API_KEY), timeout=1, retries=1, backoff_base=0.01
    )
    with pytest.raises(ProviderError, match="connection failed") as caught:
        ask(provider)
    assert not caught.value.maybe_billed, "a refused connection carried no request"


@pytest.mark.parametrize(
    ("base_url", "local"),
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.8.9.10/v1", True),
        ("http://localhost:11434/v1", True),
        ("http://[::1]:8000/v1", True),
        ("https://api.groq.com/openai/v1", False),
        ("http://127.0.0.1.example.com/v1", False),
        ("http://10.0.0.5:8000/v1", False),
        ("http://remote.example\\@127.0.0.1:8000/v1", False),
        ("http://2130706433:8000/v1", False),
    ],
)
def test_only_loopback_providers_are_local(base_url: str, local: bool) -> None:
    provider = OpenAICompatibleProvider(base_url, None, timeout=1, retries=0)
    assert provider.is_local is local


def set_proxy(monkeypatch: pytest.MonkeyPatch, proxy: FakeLLMServer) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv(name.lower(), f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


def test_a_loopback_provider_never_goes_through_a_proxy(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key and the prompt for a local model once went to whatever HTTP_PROXY named."""
    with FakeLLMServer() as proxy:
        set_proxy(monkeypatch, proxy)
        ask(provider_for(server))
        assert proxy.requests == []
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {API_KEY}"


def test_a_remote_provider_keeps_the_environment_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeLLMServer() as proxy:
        set_proxy(monkeypatch, proxy)
        provider = OpenAICompatibleProvider(
            "http://provider.invalid/v1", None, timeout=5, retries=0
        )
        assert ask(provider).text == "fake reply"
        assert proxy.requests[0]["headers"]["Host"] == "provider.invalid"


def test_build_provider_follows_settings(tmp_path, server: FakeLLMServer) -> None:
    assert isinstance(build_provider(Settings(workspace=tmp_path)), OfflineProvider)
    settings = Settings(workspace=tmp_path, llm_base_url=server.url, llm_api_key=API_KEY)
    provider = build_provider(settings)
    assert isinstance(provider, OpenAICompatibleProvider)
    assert provider.is_local
    ask(provider)
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {API_KEY}"
