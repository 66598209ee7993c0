"""What /metrics folds out of the append-only records, each record once: LLM calls,
tokens and refusals from this host's API audit trail, and run durations and
claim-to-start waits from the execution events.

Both are cumulative from the record's first line, so they are Prometheus counters; a
record that starts over (a rotated log, an audit file cut) starts them over too, which
Prometheus reads as a counter reset.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections import Counter
from itertools import accumulate
from typing import Any

from pydantic import BaseModel

from swarm_runtime.contract import ReviewFields, Status
from swarm_runtime.llm.budget import UNKNOWN_MODEL
from swarm_runtime.llm.wrapper import REFUSAL_EVENTS
from swarm_runtime.panel.audit import parse_time
from swarm_runtime.store.event_source import EventSource, sets_last_status

# The API audit's events (llm.wrapper): a call answered, a call that failed.
CALL_OUTCOMES = {"API_CALL_SUCCESS": "success", "API_CALL_FAILURE": "failure"}
REFUSALS = frozenset(REFUSAL_EVENTS.values())

EVENTS_PER_PAGE = 1000
# A scrape folds at most this many pages; a larger backlog is folded over the next scrapes.
MAX_PAGES_PER_SCRAPE = 200
REVIEW_KEYS = frozenset(ReviewFields.model_fields)


class Histogram(BaseModel):
    """A histogram as scraped: (le, observations at or below it), +Inf last, and their sum."""

    buckets: list[tuple[str, float]]
    sum: float


class Buckets:
    """A histogram's counts: `bounds` are the upper bounds (inclusive), +Inf implied."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def reading(self) -> Histogram:
        edges = [*(repr(bound) for bound in self.bounds), "+Inf"]
        return Histogram(
            buckets=list(zip(edges, accumulate(self.counts), strict=True)), sum=self.sum
        )


class ModelUsage:
    """LLM calls by outcome, tokens and refusals by model, from api_audit.jsonl (a
    JsonlFold): what the budget ledger cannot say, since it sees only charges.

    The audit has a line for every call the API made, the critic's included, with the
    model that answered. It is a file of the workspace, though: with a database each
    host's API keeps its own, so these count the calls of the APIs on this workspace,
    while the ledger's counts by model are the whole fleet's."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.tokens: Counter[tuple[str, str]] = Counter()
        self.refusals: Counter[tuple[str, str]] = Counter()

    def add(self, record: dict[str, Any]) -> None:
        model, event = str(record.get("model") or UNKNOWN_MODEL), record.get("event")
        if event in CALL_OUTCOMES:
            self.calls[model, CALL_OUTCOMES[event]] += 1
        if event == "API_CALL_SUCCESS":
            for kind in ("prompt", "completion"):
                self.tokens[model, kind] += token_count(record.get(f"{kind}_tokens"))
        if event in REFUSALS:
            self.refusals[model, str(event).lower()] += 1


def token_count(value: object) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def execution_run(event: dict[str, Any]) -> tuple[str, float] | None:
    """(status, seconds) when `event` ends an execution, else None.

    The worker logs an execution's end once, with its started_at and completed_at; review
    events repeat those facts (and move completed_at to the verdict), so they are left out,
    as are events without both times (a failure propagated from a dependency never ran)."""
    if REVIEW_KEYS & event.keys() or not sets_last_status(str(event.get("status"))):
        return None
    started, ended = parse_time(event.get("started_at")), parse_time(event.get("completed_at"))
    if started is None or ended is None:
        return None
    return str(event.get("status")), max(0.0, (ended - started).total_seconds())


def claim_wait(event: dict[str, Any]) -> float | None:
    """Seconds from the lease's claim to the attempt's start when `event` starts one, else
    None: the worker's in_progress event carries both, claimed_at as the lease's epoch
    seconds (the database's clock with a database, so a skewed host can read early).
    A retry of the API call is in_progress too, without either."""
    claimed, started = event.get("claimed_at"), parse_time(event.get("started_at"))
    if event.get("status") != Status.IN_PROGRESS.value or started is None:
        return None
    if isinstance(claimed, bool) or not isinstance(claimed, int | float):
        return None
    return max(0.0, started.timestamp() - claimed) if math.isfinite(claimed) else None


class Timings(BaseModel):
    runs: dict[str, Histogram]
    claim_to_start: Histogram


class ExecutionTimes:
    """Run seconds by the execution's outcome, and claim-to-start seconds of every attempt,
    folded from the events by cursor.

    The events are the faithful record of times: every attempt on every host is there,
    with its claim, start and end. queue.json keeps only a task's latest execution (and
    only while a review needs it), its lease only while the task is held, and archiving
    drops both."""

    def __init__(
        self, source: EventSource, run_bounds: tuple[float, ...], claim_bounds: tuple[float, ...]
    ):
        self.source = source
        self.run_bounds = run_bounds
        self.claim_bounds = claim_bounds
        self.lock = threading.Lock()
        self._start_over(None)

    def _start_over(self, epoch: str | None) -> None:
        self.cursor, self.epoch = 0, epoch
        self.by_status: dict[str, Buckets] = {}
        self.claims = Buckets(self.claim_bounds)

    def refresh(self) -> None:
        """Fold the events logged since the last scrape; a source that started over (a
        new epoch) is folded again from its first event."""
        with self.lock:
            for _ in range(MAX_PAGES_PER_SCRAPE):
                page = self.source.events_after(self.cursor, EVENTS_PER_PAGE, self.epoch)
                if page.reset:
                    self._start_over(page.epoch)
                    continue
                for item in page.events:
                    self._take(item.event)
                self.cursor, self.epoch = page.cursor, page.epoch
                if not page.more:
                    return

    def _take(self, event: dict[str, Any]) -> None:
        run, waited = execution_run(event), claim_wait(event)
        if run is not None:
            status, seconds = run
            self.by_status.setdefault(status, Buckets(self.run_bounds)).observe(seconds)
        if waited is not None:
            self.claims.observe(waited)

    def reading(self) -> Timings:
        with self.lock:
            runs = {status: buckets.reading() for status, buckets in self.by_status.items()}
            return Timings(runs=runs, claim_to_start=self.claims.reading())
