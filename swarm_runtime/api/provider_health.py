"""Whether the LLM provider answers, as /status and the start-up line report it.

Asked once when the API starts and again, in the background, when /status is read and
the last answer is older than `max_age`: a status request never waits on a provider that
is slow to refuse a connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from swarm_runtime.llm.provider import Provider

MAX_AGE_SECONDS = 30.0


class ProviderHealth:
    def __init__(
        self,
        provider: Provider,
        max_age: float = MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._provider = provider
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._checking = False
        self._error: str | None = None

    def check(self) -> str | None:
        """Ask now; None means it answers."""
        error = self._provider.probe()
        with self._lock:
            self._error, self._checked_at, self._checking = error, self._clock(), False
        return error

    def snapshot(self) -> dict[str, Any]:
        """The last answer, and a fresh question in the background when it has aged."""
        with self._lock:
            stale = self._checked_at is None or self._clock() - self._checked_at > self._max_age
            ask = stale and not self._checking
            self._checking = self._checking or ask
            answered = None if self._checked_at is None else self._error is None
            error = self._error
        if ask:
            threading.Thread(target=self.check, name="provider-probe", daemon=True).start()
        return {"provider_answering": answered, "provider_error": error}
