"""The worker's HTTP client for `POST /cycle`, with bounded retries on transient failures.

A request can be sent before its answer is wanted (`begin`): the worker sends its next
task to swarm.py and reviews the last one while swarm.py runs it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from swarm_runtime.contract import TOKEN_HEADER, CycleResponse, describe_validation_error
from swarm_runtime.web.identity import workspace_name
from swarm_runtime.web.loopback import loopback_url
from swarm_runtime.web.loopback_post import AnswerTimedOut, ConnectionLost, LoopbackPoster, Reply
from swarm_runtime.web.proven_session import ServerNotProven
from swarm_runtime.web.retry import backoff, retry_after

log = logging.getLogger(__name__)
MAX_BACKOFF_SECONDS = 10.0
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_JITTER = (0.8, 1.2)
CONNECT_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Dispatch:
    """What came back: a parsed body, or the reason there is none."""

    response: CycleResponse | None
    error: str | None = None
    http_status: int | None = None
    attempts: int = 1
    # The report of a refusal by the API's safety gateway or local-command policy.
    safety_report: dict[str, Any] | None = None


class EndpointRefused(ValueError):
    """The queue names an API endpoint the worker must not send the token to."""


# Reads the answer of a request already sent: a Reply, or the poster's error.
Receive = Callable[[], Reply]


@dataclass(frozen=True)
class PendingDispatch:
    """A request on its way: `result()` reads its answer, retrying as `dispatch` does."""

    result: Callable[[], Dispatch]


class CycleClient:
    """Sends tasks to the execution API of one workspace: every connection it opens first
    makes the server prove it holds the token and serves that workspace."""

    def __init__(
        self,
        token: str,
        workspace: Path | str,
        *,
        retries: int = 3,
        sleep: Callable[[float], Any] = time.sleep,
    ):
        self._token = token
        self._retries = retries
        self._poster = LoopbackPoster(token, workspace_name(workspace))
        self._sleep = sleep

    def dispatch(
        self,
        endpoint: str,
        payload: dict[str, Any],
        read_timeout: float,
        on_retry: Callable[[int, str, float], Any] | None = None,
    ) -> Dispatch:
        """POST the payload; retry connection errors, 429 and retryable 5xx with backoff.

        `on_retry(attempt, error, delay)` hears of each failed attempt before its retry,
        so a caller can make a dying API visible while the retries are still under way."""
        return self.begin(endpoint, payload, read_timeout, on_retry).result()

    def begin(
        self,
        endpoint: str,
        payload: dict[str, Any],
        read_timeout: float,
        on_retry: Callable[[int, str, float], Any] | None = None,
    ) -> PendingDispatch:
        """`dispatch`, its first attempt sent now and its answer read (and any retry made)
        by `result()`. EndpointRefused, at once, for an endpoint that is not loopback."""
        checked = loopback_url(endpoint)
        if checked is None:
            raise EndpointRefused(
                f"API endpoint must be loopback-only (127.0.0.0/8, ::1, localhost): {endpoint!r}"
            )
        url = checked.rstrip("/") + "/cycle"
        sent = self._send(url, payload, read_timeout)
        return PendingDispatch(lambda: self._answer(url, payload, read_timeout, on_retry, sent))

    def _answer(
        self,
        url: str,
        payload: dict[str, Any],
        read_timeout: float,
        on_retry: Callable[[int, str, float], Any] | None,
        sent: Receive,
    ) -> Dispatch:
        last = Dispatch(None, "no attempt made")
        for attempt in range(1, self._retries + 2):
            last, delay = self._attempt(url, sent, read_timeout, attempt)
            if delay is None or attempt > self._retries:
                return last
            log.warning(
                "cycle attempt %d failed (%s); retrying in %.1fs", attempt, last.error, delay
            )
            if on_retry is not None:
                on_retry(attempt, last.error or "", delay)
            self._sleep(delay)
            sent = self._send(url, payload, read_timeout)
        return last

    def _send(self, url: str, payload: dict[str, Any], read_timeout: float) -> Receive:
        """One attempt's request, sent; a failure to send is raised when its answer is read."""
        try:
            return self._poster.send(  # a redirect is an answer: the token never follows it
                url,
                payload,
                {TOKEN_HEADER: self._token},
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                read_timeout=read_timeout,
            )
        except (ServerNotProven, ConnectionLost) as exc:
            return _raising(exc)

    def _attempt(
        self, url: str, sent: Receive, read_timeout: float, attempt: int
    ) -> tuple[Dispatch, float | None]:
        """One attempt's answer; the second value is the delay before a retry, or None for
        a final answer."""
        try:
            reply = sent()
        except ServerNotProven as exc:
            return Dispatch(None, str(exc), attempts=attempt), None
        except ConnectionLost as exc:
            error = f"cannot connect to the execution API at {url}: {root_cause(exc)}"
            return Dispatch(None, error, attempts=attempt), _backoff(attempt)
        except AnswerTimedOut:
            error = f"the execution API did not answer within {read_timeout:.0f}s"
            return Dispatch(None, error, attempts=attempt), None
        return interpret(reply, attempt)


def _raising(exc: Exception) -> Receive:
    def receive() -> Reply:
        raise exc

    return receive


def interpret(reply: Reply, attempt: int) -> tuple[Dispatch, float | None]:
    body = _json_or_none(reply)
    if reply.status_code == 200:
        try:
            return Dispatch(CycleResponse.model_validate(body), None, 200, attempt), None
        except ValidationError as exc:
            problems = "; ".join(describe_validation_error(e) for e in exc.errors()[:3])
            return Dispatch(None, f"invalid API response: {problems}", 200, attempt), None
    message = body.get("error") if isinstance(body, dict) else None
    error = f"API returned {reply.status_code}: {message or reply.text[:500]}"
    report = body.get("safety_report") if isinstance(body, dict) else None
    refusal = report if reply.status_code == 403 and isinstance(report, dict) else None
    result = Dispatch(None, error, reply.status_code, attempt, safety_report=refusal)
    retryable = isinstance(body, dict) and body.get("retryable", True) is not False
    if reply.status_code == 429:
        wait = retry_after(reply.headers, MAX_BACKOFF_SECONDS)
        return result, _backoff(attempt) if wait is None else wait
    if reply.status_code >= 500 and retryable:
        return result, _backoff(attempt)
    return result, None


def root_cause(exc: BaseException) -> str:
    """The operating system's words at the bottom of an error ("Connection refused"),
    which the wrappers above it may bury under their own messages."""
    cause: BaseException | None = exc
    found = type(exc).__name__
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        reason = getattr(cause, "reason", None)
        cause = reason if isinstance(reason, BaseException) else cause.__context__
    return found


def _json_or_none(reply: Reply) -> Any:
    try:
        return reply.json()
    except ValueError:
        return None


def _backoff(attempt: int) -> float:
    """0.5, 1, 2, 4 s ... capped, so a restarting API is waited for."""
    return backoff(attempt, BACKOFF_BASE_SECONDS, MAX_BACKOFF_SECONDS, BACKOFF_JITTER)
