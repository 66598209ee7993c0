"""GET /metrics: the whole fleet in the Prometheus text format, read from the store when
Prometheus scrapes.

One collector, on a registry of the app's own (never the library's global one, so the
factory can build any number of apps), takes a `FleetReading` at each scrape and turns
it into metric families. Nothing is counted in memory but the two folds of append-only
records (metric_folds), which read each record once. No read takes a writer's lock:
the queue comes through the panel's lock-free cache, the events through its event
source, the ledger and the presence files as `read_json` reads them. A store that cannot
be read turns the whole scrape into a 503 with one line of text, so Prometheus marks the
target down instead of recording a partial fleet.

    swarm_queue_tasks{status}               gauge: tasks in the queue by status
    swarm_tasks_finished{outcome}           gauge: ids in the queue's completed / failed lists
    swarm_workers_alive{host}               gauge: workers announced or holding a live lease
    swarm_task_claim_to_start_seconds       histogram of every attempt in the events
    swarm_task_run_seconds{status}          histogram of every execution in the events
    swarm_llm_charged_calls_total{model}    counters from the shared budget ledger
    swarm_llm_spend_dollars_total{model}
    swarm_llm_calls_total{model,outcome}    counters from this host's API audit trail
    swarm_llm_tokens_total{model,kind}
    swarm_llm_refusals_total{model,reason}
    swarm_llm_budget_{spent,reserved,limit}_dollars   gauges from the shared budget ledger

The calls and spend by model come from the budget ledger, which every host's API charges
in the same write that holds the budget: one document for the fleet on either store, so
every panel reports the same counts and none is counted twice. The ledger sees charges
only (paid calls, answered or charged in full), so the rest comes from the API audit
trail, a file of the workspace: with a database each host's panel reports its own API's
calls by outcome (free ones included), tokens and refusals, which Prometheus tells
apart by instance. The audit's spend is not reported: the ledger's is the fleet's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter

from flask import Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from pydantic import BaseModel

from swarm_runtime.contract import QueueDocument, Status, Task, WorkerPresence
from swarm_runtime.errors import StateFileError, StoreUnavailable
from swarm_runtime.llm.budget import ModelSpend
from swarm_runtime.panel.errors import refusal
from swarm_runtime.panel.log_tail import JsonlFold
from swarm_runtime.panel.metric_folds import ExecutionTimes, Histogram, ModelUsage
from swarm_runtime.panel.state import Panel
from swarm_runtime.queue.presence import live_workers
from swarm_runtime.queue.store import lease_is_live
from swarm_runtime.web.json_errors import HttpError

RUN_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
CLAIM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The audit trail a scrape reads at most; a larger backlog is read over the next scrapes.
AUDIT_BYTES_PER_SCRAPE = 64 * 1024 * 1024


class Labeled(BaseModel):
    labels: tuple[str, ...]
    value: float


class LlmReading(BaseModel):
    charged_calls: list[Labeled]
    spend: list[Labeled]
    calls: list[Labeled]
    tokens: list[Labeled]
    refusals: list[Labeled]


class FleetReading(BaseModel):
    """Everything one scrape reports, read before any of it is written out."""

    queue: list[Labeled]
    finished: list[Labeled]
    workers: list[Labeled]
    claim_to_start: Histogram
    runs: dict[str, Histogram]
    llm: LlmReading
    budget_spent: float
    budget_reserved: float
    budget_limit: float


def labeled(values: Mapping[str, float] | Mapping[tuple[str, str], float]) -> list[Labeled]:
    return [
        Labeled(labels=key if isinstance(key, tuple) else (key,), value=value)
        for key, value in sorted(values.items())
    ]


@dataclass(frozen=True)
class Family:
    """How one labelled field of the reading (a dotted path) is exposed."""

    field: str
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily]
    name: str
    help: str
    labels: tuple[str, ...]

    def of(self, reading: FleetReading) -> Metric:
        family = self.kind(self.name, self.help, labels=self.labels)
        for row in attrgetter(self.field)(reading):
            family.add_metric(row.labels, row.value)
        return family


FAMILIES = (
    Family(
        "queue",
        GaugeMetricFamily,
        "swarm_queue_tasks",
        "Tasks in the queue (queue.json or its database) by status; archived tasks left it.",
        ("status",),
    ),
    Family(
        "finished",
        GaugeMetricFamily,
        "swarm_tasks_finished",
        "Tasks whose outcome is final, archived ones included: the ids in the queue's "
        "completed and failed lists (failed counts safety_blocked and cancelled). A requeue "
        "takes a task off its list, so this can fall.",
        ("outcome",),
    ),
    Family(
        "workers",
        GaugeMetricFamily,
        "swarm_workers_alive",
        "Workers with a fresh presence or a live lease, by the host they run on.",
        ("host",),
    ),
    Family(
        "llm.charged_calls",
        CounterMetricFamily,
        "swarm_llm_charged_calls",
        "Paid LLM calls charged to the shared budget ledger, by model, for the whole fleet: "
        "answered calls, and holds charged in full when the outcome was unknown.",
        ("model",),
    ),
    Family(
        "llm.spend",
        CounterMetricFamily,
        "swarm_llm_spend_dollars",
        "LLM spend by model from the shared budget ledger, for the whole fleet: answered "
        "calls at their real cost, and holds charged in full when the outcome was unknown.",
        ("model",),
    ),
    Family(
        "llm.calls",
        CounterMetricFamily,
        "swarm_llm_calls",
        "LLM calls that reached the provider, by model and outcome, free ones included: "
        "this host's API only (its workspace's audit trail).",
        ("model", "outcome"),
    ),
    Family(
        "llm.tokens",
        CounterMetricFamily,
        "swarm_llm_tokens",
        "Tokens of answered LLM calls, by model and kind (prompt or completion): this "
        "host's API only (its workspace's audit trail).",
        ("model", "kind"),
    ),
    Family(
        "llm.refusals",
        CounterMetricFamily,
        "swarm_llm_refusals",
        "LLM calls refused before reaching the provider (rate limit, price, budgets): this "
        "host's API only (its workspace's audit trail).",
        ("model", "reason"),
    ),
)
BUDGET_GAUGES = (
    ("budget_spent", "swarm_llm_budget_spent_dollars", "Spend in the shared budget ledger."),
    ("budget_reserved", "swarm_llm_budget_reserved_dollars", "Held by LLM calls in flight."),
    ("budget_limit", "swarm_llm_budget_limit_dollars", "The global LLM budget."),
)


def families(reading: FleetReading) -> Iterator[Metric]:
    for family in FAMILIES:
        yield family.of(reading)
    for field, name, text in BUDGET_GAUGES:
        yield GaugeMetricFamily(name, text, value=getattr(reading, field))
    yield claim_family(reading.claim_to_start)
    yield run_family(reading.runs)


def claim_family(claims: Histogram) -> Metric:
    return HistogramMetricFamily(
        "swarm_task_claim_to_start_seconds",
        "Each attempt from its lease's claimed_at (the database's clock with a database) "
        "to its started_at (the worker's), from the in_progress events that carry both.",
        buckets=claims.buckets,
        sum_value=claims.sum,
    )


def run_family(runs: dict[str, Histogram]) -> Metric:
    family = HistogramMetricFamily(
        "swarm_task_run_seconds",
        "Each execution from started_at to completed_at, by outcome, from the events.",
        labels=("status",),
    )
    for status, histogram in sorted(runs.items()):
        family.add_metric([status], histogram.buckets, histogram.sum)
    return family


def queue_by_status(tasks: list[Task]) -> dict[str, float]:
    """Every status, zeros too, so a series drops to 0 instead of disappearing."""
    counts = Counter(task.status.value for task in tasks)
    return {status.value: counts[status.value] for status in Status}


def finished_by_outcome(doc: QueueDocument) -> dict[str, float]:
    return {Status.COMPLETED.value: len(doc.completed), Status.FAILED.value: len(doc.failed)}


def workers_by_host(present: list[WorkerPresence], tasks: list[Task], now: float) -> Counter[str]:
    """As the panel's header counts them: a live lease is enough, its holder renews it."""
    hosts = {worker.worker_id: worker.host for worker in present}
    for task in tasks:
        if lease_is_live(task.lease, now):
            hosts.setdefault(task.lease.worker_id, task.lease.host)
    return Counter(hosts.values())


def by_model(models: Mapping[str, ModelSpend]) -> tuple[list[Labeled], list[Labeled]]:
    """The ledger's (charged calls, spend) by model."""
    calls = {model: float(spent.calls) for model, spent in models.items()}
    return labeled(calls), labeled({model: spent.spent for model, spent in models.items()})


class FleetCollector:
    """prometheus_client's Collector: reads the fleet each time it is collected."""

    def __init__(self, panel: Panel, clock: Callable[[], datetime]):
        self.panel = panel
        self.clock = clock
        self.usage = ModelUsage()
        self.audit = JsonlFold(panel.workspace.api_audit_path, self.usage.add, self.usage.forget)
        self.times = ExecutionTimes(panel.index, RUN_BUCKETS, CLAIM_BUCKETS)

    def collect(self) -> Iterator[Metric]:
        try:
            reading = self.read()
        except (StateFileError, StoreUnavailable) as exc:
            raise refusal(exc, self.panel.workspace) from None
        yield from families(reading)

    def read(self) -> FleetReading:
        panel, now = self.panel, self.clock().timestamp()
        doc = panel.queue.get()
        budget = panel.budget.snapshot()
        panel.catch_up()
        self.times.refresh()
        times = self.times.reading()
        present = live_workers(panel.workspace, now, panel.documents.database)
        return FleetReading(
            queue=labeled(queue_by_status(doc.tasks)),
            finished=labeled(finished_by_outcome(doc)),
            workers=labeled(workers_by_host(present, doc.tasks, now)),
            claim_to_start=times.claim_to_start,
            runs=times.runs,
            llm=self.llm_usage(budget.models),
            budget_spent=budget.spent,
            budget_reserved=budget.reserved,
            budget_limit=budget.limit,
        )

    def llm_usage(self, models: Mapping[str, ModelSpend]) -> LlmReading:
        charged_calls, spend = by_model(models)
        self.audit.refresh(AUDIT_BYTES_PER_SCRAPE)
        with self.audit.lock:
            usage = self.usage
            return LlmReading(
                charged_calls=charged_calls,
                spend=spend,
                calls=labeled(usage.calls),
                tokens=labeled(usage.tokens),
                refusals=labeled(usage.refusals),
            )

    def close(self) -> None:
        self.audit.close()


class Metrics:
    """The app's own registry, holding the one collector."""

    def __init__(self, panel: Panel, clock: Callable[[], datetime]):
        self.collector = FleetCollector(panel, clock)
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)

    def response(self, accept: str | None) -> Response:
        """The scrape in the format asked for (the Prometheus text format unless OpenMetrics
        is), or the store's refusal as one line of text."""
        encode, content_type = choose_encoder(accept or "")
        try:
            body = encode(self.registry)
        except HttpError as exc:
            line = " ".join(exc.body.error.split())
            return Response(line + "\n", exc.status, mimetype="text/plain")
        return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})

    def close(self) -> None:
        self.collector.close()
