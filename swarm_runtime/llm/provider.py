"""Who answers a prompt: an offline stand-in, or any OpenAI-compatible chat endpoint.

A provider returns text and the tokens it used, and knows nothing of budgets. Every
failure of the HTTP provider becomes a ProviderError, and no error text ever holds
the API key, not even when a server echoes the request back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import requests
from pydantic import BaseModel, Field, SecretStr, ValidationError
from requests.adapters import HTTPAdapter
from urllib3.exceptions import LocationParseError, NewConnectionError
from urllib3.util import parse_url

from swarm_runtime.contract import OFFLINE_MODEL, describe_validation_error
from swarm_runtime.errors import ProviderError
from swarm_runtime.settings import Settings
from swarm_runtime.web.loopback import direct_session, loopback_url
from swarm_runtime.web.retry import backoff, retry_after

PROBE_TIMEOUT_SECONDS = 5.0
log = logging.getLogger(__name__)

RETRY_AFTER_CAP_SECONDS = 30.0
BACKOFF_CAP_SECONDS = 8.0
BACKOFF_JITTER = (1.0, 1.25)
CONNECT_TIMEOUT_CAP_SECONDS = 5.0
ERROR_BODY_CHARS = 300
OFFLINE_ECHO_CHARS = 200
# The planner's prompt opens with this and lists files as "- <path>: <n> lines"; the offline
# model reads that list back, so /plan works with no provider at all.
PLANNER_REQUEST = "Suggest 3 to 5 improvement tasks for this Python codebase"
OFFLINE_PLAN_FILES = 5
OFFLINE_PLAN_LARGE_FILE_LINES = 150
OFFLINE_PLAN_GENERIC = (
    ("Set up pytest with one smoke test that imports every module", "high"),
    ("Add a README explaining what the sandbox code does and how to run its tests", "medium"),
    ("Add a pyproject.toml naming the project, its Python version and its test command", "low"),
)
_LISTED_FILE = re.compile(r"^- (.+): (\d+) lines$", re.MULTILINE)
CONNECTION_POOL_SIZE = 32


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    usage_reported: bool


class Provider(Protocol):
    name: str
    is_local: bool

    def model_for(self, requested: str) -> str:
        """The model that will really answer a request for `requested` (and be billed)."""
        ...

    def complete(
        self,
        prompt: str,
        *,
        model: str,
        max_tokens: int,
        temperature: float,
        system: str | None = None,
    ) -> Completion: ...

    def probe(self) -> str | None:
        """None when the provider answers at all (any HTTP status will do), else why not."""
        ...


def estimate_tokens(text: str) -> int:
    """A count for when none is reported: ~4 bytes or ~3/4 of a word per token, the larger."""
    by_bytes = math.ceil(len(text.encode("utf-8")) / 4)
    by_words = math.ceil(len(text.split()) * 4 / 3)
    return max(1, by_bytes, by_words)


def scrub_secrets(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class OfflineProvider:
    """Answers with no network, the same way every time, so the runtime works without a key."""

    name = OFFLINE_MODEL
    is_local = True

    def model_for(self, requested: str) -> str:
        return OFFLINE_MODEL

    def probe(self) -> str | None:
        return None

    def complete(
        self,
        prompt: str,
        *,
        model: str,
        max_tokens: int,
        temperature: float,
        system: str | None = None,
    ) -> Completion:
        source = f"{system or ''}\n{prompt}"
        if prompt.startswith(PLANNER_REQUEST):
            text = offline_plan(prompt)
        else:
            digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:12]
            echo = " ".join(prompt.split())[:OFFLINE_ECHO_CHARS]
            text = f"[offline model] deterministic response to: {echo} (digest {digest})"
        return Completion(
            text=text,
            model=OFFLINE_MODEL,
            prompt_tokens=estimate_tokens(source),
            completion_tokens=estimate_tokens(text),
            usage_reported=False,
        )


def offline_plan(prompt: str) -> str:
    """The planner's JSON array: one task per listed file, largest first, at most five,
    topped up to three from a fixed set (which is the whole answer for an empty sandbox)."""
    listed = [(path, int(lines)) for path, lines in _LISTED_FILE.findall(prompt)]
    largest = sorted(listed, key=lambda item: (-item[1], item[0]))[:OFFLINE_PLAN_FILES]
    tasks = [_file_improvement(path, lines) for path, lines in largest]
    tasks += OFFLINE_PLAN_GENERIC[: max(0, len(OFFLINE_PLAN_GENERIC) - len(tasks))]
    return json.dumps([{"description": text, "priority": level} for text, level in tasks])


def _file_improvement(path: str, lines: int) -> tuple[str, str]:
    *folders, name = path.split("/")
    if name.startswith("test_") or name.endswith("_test.py") or "tests" in folders:
        return f"Extend {path} with tests for edge cases and error paths", "low"
    if lines >= OFFLINE_PLAN_LARGE_FILE_LINES:
        return f"Refactor {path} ({lines} lines) into smaller functions with clear names", "high"
    return f"Add type hints and unit tests for the functions in {path}", "medium"


class _Message(BaseModel):
    content: str


class _Choice(BaseModel):
    message: _Message


class _Usage(BaseModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


class ChatReply(BaseModel):
    """The part of an OpenAI chat completion the runtime relies on."""

    model: str | None = None
    choices: list[_Choice] = Field(min_length=1)
    usage: _Usage | None = None


class _Retryable(Exception):
    """One attempt failed in a way a later attempt may fix."""

    def __init__(self, cause: str, wait: float | None = None, status_code: int | None = None):
        super().__init__(cause)
        self.cause = cause
        self.wait = wait
        self.status_code = status_code


class OpenAICompatibleProvider:
    """POSTs to `<base_url>/chat/completions` with bounded, backed-off retries.

    A loopback provider is sent to directly, never through a proxy. A remote one keeps
    requests' standard behaviour and honours HTTP(S)_PROXY and NO_PROXY: over https the
    proxy only tunnels (CONNECT) and never sees the key; over plain http it sees the key,
    as anyone on the path would."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | None,
        *,
        timeout: float,
        retries: int,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        backoff_base: float = 0.5,
    ):
        local_url = loopback_url(base_url)
        self.is_local = local_url is not None
        self.base_url = (local_url or base_url).rstrip("/")
        self.name = _host_and_port(self.base_url)
        self._url = f"{self.base_url}/chat/completions"
        self._api_key = api_key
        self._timeout = (min(CONNECT_TIMEOUT_CAP_SECONDS, timeout), timeout)
        self._attempts = max(1, retries + 1)
        session = session or _pooled_session()
        self._session = direct_session(session) if self.is_local else session
        self._sleep = sleep
        self._backoff_base = backoff_base

    def model_for(self, requested: str) -> str:
        return requested

    def probe(self) -> str | None:
        """GET <base>/models, which OpenAI-compatible servers serve; whatever the status,
        an HTTP answer means the provider is there. Only the connection can fail."""
        try:
            self._session.get(
                f"{self.base_url}/models",
                headers=self._auth_headers(),
                timeout=(self._timeout[0], PROBE_TIMEOUT_SECONDS),
                allow_redirects=False,
            ).close()
        except requests.RequestException as exc:
            return self._scrub(f"{type(exc).__name__}: {_first_line(exc)}")
        return None

    def _auth_headers(self) -> dict[str, str]:
        if self._api_key is None:
            return {}
        return {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}

    def complete(
        self,
        prompt: str,
        *,
        model: str,
        max_tokens: int,
        temperature: float,
        system: str | None = None,
    ) -> Completion:
        messages = [{"role": "user", "content": prompt}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        reply = self._parse(self._post_with_retries(body))
        return _completion(reply, model, f"{system or ''}\n{prompt}", max_tokens)

    def _post_with_retries(self, body: dict[str, Any]) -> requests.Response:
        for attempt in range(self._attempts):
            try:
                return self._attempt(body)
            except _Retryable as failure:
                last = failure
                if attempt + 1 < self._attempts:
                    self._pause(attempt, failure)
        raise ProviderError(
            self._scrub(
                f"provider {self.name} failed after {self._attempts} attempt(s); "
                f"last cause: {last.cause}"
            ),
            retryable=False,
            status_code=last.status_code,
        )

    def _attempt(self, body: dict[str, Any]) -> requests.Response:
        headers = self._auth_headers()
        try:
            # No redirects: the key goes to the configured endpoint and nowhere else.
            response = self._session.post(
                self._url, json=body, headers=headers, timeout=self._timeout, allow_redirects=False
            )
        except (requests.ConnectTimeout, requests.ConnectionError) as exc:
            if reached_provider(exc):
                raise self._unknown_outcome(f"connection lost: {_first_line(exc)}") from None
            raise _Retryable(f"connection failed: {_first_line(exc)}") from exc
        except requests.Timeout:
            raise self._unknown_outcome(f"no answer within {self._timeout[1]:g}s") from None
        except requests.exceptions.ChunkedEncodingError as exc:
            raise self._unknown_outcome(f"answer cut off: {_first_line(exc)}") from None
        except requests.RequestException as exc:
            message = f"request to provider {self.name} failed: {exc}"
            raise ProviderError(self._scrub(message)) from None
        return self._check_status(response)

    def _unknown_outcome(self, cause: str) -> ProviderError:
        """The request went out and no usable answer came back: the provider may have run
        and billed it. Not retried, since a second request could be billed again."""
        message = f"provider {self.name}: {cause}; the call may have been billed"
        return ProviderError(self._scrub(message), maybe_billed=True)

    def _check_status(self, response: requests.Response) -> requests.Response:
        status = response.status_code
        if status == 429 or status >= 500:
            cause = f"HTTP {status}: {_snippet(response)}"
            raise _Retryable(cause, retry_after(response.headers, RETRY_AFTER_CAP_SECONDS), status)
        if not 200 <= status < 300:
            message = f"provider {self.name} rejected the request: HTTP {status}: "
            message += _snippet(response)
            raise ProviderError(self._scrub(message), retryable=False, status_code=status)
        return response

    def _parse(self, response: requests.Response) -> ChatReply:
        """A reply we cannot read is not retried: the same server will send the same thing."""
        status = response.status_code
        try:
            raw = response.json()
        except ValueError:
            message = f"provider {self.name} sent malformed JSON: {_snippet(response)}"
            raise ProviderError(
                self._scrub(message), status_code=status, maybe_billed=True
            ) from None
        try:
            return ChatReply.model_validate(raw)
        except ValidationError as exc:
            detail = "; ".join(describe_validation_error(e) for e in exc.errors()[:3])
            message = f"provider {self.name} sent a reply of unexpected shape: {detail}"
            raise ProviderError(message, status_code=status, maybe_billed=True) from None

    def _pause(self, attempt: int, failure: _Retryable) -> None:
        """Wait as the server asked, else back off exponentially with jitter against herds."""
        delay = failure.wait
        if delay is None:
            delay = backoff(attempt + 1, self._backoff_base, BACKOFF_CAP_SECONDS, BACKOFF_JITTER)
        log.warning(
            "provider %s: %s; retrying in %.2fs", self.name, self._scrub(failure.cause), delay
        )
        self._sleep(delay)

    def _scrub(self, text: str) -> str:
        if self._api_key is None:
            return text
        return scrub_secrets(text, [self._api_key.get_secret_value()])


def reached_provider(exc: requests.RequestException) -> bool:
    """Whether a failed request had been sent: a refused, unresolvable or timed-out
    connection never carried it; a connection dropped after it was sent did."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, NewConnectionError):
            return False
        reason = getattr(cause, "reason", None)
        cause = reason if isinstance(reason, BaseException) else cause.__context__
    return True


def build_provider(settings: Settings) -> Provider:
    """No base URL (no SWARM_LLM_BASE_URL and no GROQ_API_KEY) means offline."""
    if settings.provider_base_url is None:
        return OfflineProvider()
    return OpenAICompatibleProvider(
        settings.provider_base_url,
        settings.provider_api_key,
        timeout=settings.llm_timeout,
        retries=settings.llm_retries,
    )


def _completion(reply: ChatReply, model: str, source: str, max_tokens: int) -> Completion:
    """Reported usage is taken as it is; a guess, when none is reported, never goes past
    the max_tokens an honest provider was bound by, so it stays within the call's hold."""
    text = reply.choices[0].message.content
    usage = reply.usage
    return Completion(
        text=text,
        model=reply.model or model,
        prompt_tokens=usage.prompt_tokens if usage else estimate_tokens(source),
        completion_tokens=(
            usage.completion_tokens if usage else min(estimate_tokens(text), max_tokens)
        ),
        usage_reported=usage is not None,
    )


def _snippet(response: requests.Response) -> str:
    text = response.text.strip()
    if len(text) > ERROR_BODY_CHARS:
        return text[:ERROR_BODY_CHARS] + "…"
    return text or "(empty body)"


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:ERROR_BODY_CHARS] if str(exc) else type(exc).__name__


def _host_and_port(url: str) -> str:
    """As the sender reads the URL; one it cannot read fails on the first request instead."""
    try:
        parts = parse_url(url)
    except LocationParseError:
        return "(unreadable URL)"
    return f"{parts.host}:{parts.port}" if parts.port else str(parts.host)


def _pooled_session() -> requests.Session:
    """Enough pooled connections that concurrent calls do not reconnect every time."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=CONNECTION_POOL_SIZE)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
