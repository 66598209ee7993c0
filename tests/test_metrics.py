"""GET /metrics: a scrape of a known fleet, parsed as Prometheus parses it, on both stores;
the worker's own records read back; and the refusals (a store away, a foreign Host)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Backend, on_both_backends, read_events, wait_until
from flask import Flask
from helpers.event_writer import LogWriter
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from test_worker_in_process import Answer, Harness, completed, make_harness
from werkzeug.test import TestResponse

from swarm_runtime.contract import (
    QUEUE_FILE,
    ApiRetryEvent,
    ExecutionEvent,
    ExecutionRecord,
    ReviewEvent,
    Status,
)
from swarm_runtime.errors import ProviderError, TaskBudgetExceeded
from swarm_runtime.llm.budget import BudgetLedger
from swarm_runtime.llm.pricing import Price
from swarm_runtime.llm.provider import Completion
from swarm_runtime.llm.rate_limit import TokenBucket
from swarm_runtime.llm.wrapper import SecureAPIWrapper
from swarm_runtime.panel.app import create_app
from swarm_runtime.panel.metric_folds import Buckets, claim_wait, execution_run
from swarm_runtime.queue.presence import PresenceBeacon
from swarm_runtime.queue.select import store_for
from swarm_runtime.queue.store import WorkerIdentity
from swarm_runtime.settings import Settings
from swarm_runtime.store.documents import documents_for
from swarm_runtime.store.state_files import Workspace
from swarm_runtime.worker.cycle_client import Dispatch

BASE = "http://127.0.0.1:8421"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PRICES = {"model-a": Price(10_000.0, 20_000.0), "model-b": Price(30_000.0, 40_000.0)}
ALL_HOSTS = {"host-a": 2.0, "host-b": 1.0, "host-c": 1.0}


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def scrape(app: Flask, **kwargs: Any) -> TestResponse:
    return app.test_client().get("/metrics", base_url=kwargs.pop("base_url", BASE), **kwargs)


def samples(app: Flask) -> dict[str, list[Sample]]:
    """Every sample by name, as Prometheus' own parser reads the scrape; every family has
    its HELP and the swarm_ prefix."""
    response = scrape(app)
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    found: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        assert family.name.startswith("swarm_") and family.documentation
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def by(found: dict[str, list[Sample]], name: str, label: str) -> dict[str, float]:
    return {s.labels[label]: s.value for s in found.get(name, [])}


def pairs(found: dict[str, list[Sample]], name: str, first: str, second: str) -> dict:
    return {(s.labels[first], s.labels[second]): s.value for s in found.get(name, [])}


def buckets(found: dict[str, list[Sample]], name: str, **labels: str) -> dict[str, float]:
    return {
        s.labels["le"]: s.value
        for s in found[f"{name}_bucket"]
        if all(s.labels.get(k) == v for k, v in labels.items())
    }


def one(found: dict[str, list[Sample]], name: str, **labels: str) -> float:
    (value,) = [
        s.value for s in found[name] if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return value


# --- a known fleet ------------------------------------------------------------------------


@dataclass
class ScriptedProvider:
    """The provider's side of SecureAPIWrapper: answers (or raises) from `script`."""

    script: list[Completion | Exception] = field(default_factory=list)
    name: str = "scripted"
    is_local: bool = False

    def model_for(self, requested: str) -> str:
        return requested

    def complete(self, prompt: str, *, model: str, **_: Any) -> Completion:
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def probe(self) -> str | None:
        return None


def answer(model: str, prompt_tokens: int, completion_tokens: int) -> Completion:
    return Completion("ok", model, prompt_tokens, completion_tokens, usage_reported=True)


def api_wrapper(
    workspace: Workspace, ledger: BudgetLedger, script: list[Completion | Exception]
) -> SecureAPIWrapper:
    """The real wrapper of one host's API, its provider answering from `script`."""
    return SecureAPIWrapper(
        provider=ScriptedProvider(script),
        ledger=ledger,
        limiter=TokenBucket(1000),
        prices=PRICES,
        workspace=workspace,
        default_model="model-a",
    )


def make_calls(backend: Backend) -> BudgetLedger:
    """Two models through the real wrapper, so the audit lines are the API's own."""
    ledger = BudgetLedger(backend.workspace, 100.0, backend.documents.budget)
    script: list[Completion | Exception] = [
        answer("model-a", 10, 5),  # $0.2
        answer("model-a", 20, 10),  # $0.4
        answer("model-b", 1000, 50),  # $32, more than it could hold: OVER_RESERVATION
        ProviderError("read timed out", maybe_billed=True),  # its hold, charged in full
    ]
    wrapper = api_wrapper(backend.workspace, ledger, script)
    for model, max_tokens in (("model-a", 100), ("model-a", 100), ("model-b", 4), ("model-b", 4)):
        try:
            wrapper.call_llm("hello", model=model, max_tokens=max_tokens, temperature=0)
        except ProviderError:
            pass
    with pytest.raises(TaskBudgetExceeded):
        wrapper.call_llm(
            "hello", model="model-a", max_tokens=100, temperature=0, task_id="t", max_budget=1e-9
        )
    return ledger


def make_queue(backend: Backend) -> float:
    """t1 and t2 approved, t3 failed, t4 held by w-c1 on host-c (no presence), t5 and t6
    pending. Returns t4's claimed_at."""
    store = store_for(backend.settings, backend.workspace)
    try:
        store.add_many([{"id": f"t{n}", "prompt": f"task {n}"} for n in range(1, 7)])
        worker = WorkerIdentity("w-a1", host="host-a")
        for task_id in ("t1", "t2"):
            assert store.claim(worker, 300).task.id == task_id
            record = ExecutionRecord(attempt=1, status=Status.COMPLETED, started_at=at(0))
            store.record_execution(task_id, worker, record)
            store.finish(task_id, worker, Status.APPROVED)
        assert store.claim(worker, 300).task.id == "t3"
        store.finish("t3", worker, Status.FAILED)
        held = store.claim(WorkerIdentity("w-c1", host="host-c"), 300).task
        assert held.id == "t4" and held.lease is not None
        return held.lease.claimed_at
    finally:
        store.close()


def forget_events(backend: Backend) -> None:
    """The transitions above committed their own events; `make_events` writes the ones
    the scrape is checked against instead."""
    if backend.database is None:
        backend.workspace.log_path.write_bytes(b"")
        return
    with backend.database.transaction() as conn:
        conn.execute("DELETE FROM swarm_events")


def started(seconds: float, claimed_at: float) -> dict[str, Any]:
    """The worker's in_progress event for an attempt it claimed at `claimed_at`."""
    return {"kind": ExecutionEvent, "started_at": at(seconds), "claimed_at": claimed_at}


def make_events(backend: Backend, claimed_at: float) -> None:
    """Claim to start: 0.02 s for t1, 0.3 s for t3, 2 s for t4 (held now)."""
    host_a = LogWriter(backend.workspace, "w-a1", backend.database)
    epoch = T0.timestamp()
    host_a.emit("t1", Status.IN_PROGRESS, attempt=1, **started(0, epoch - 0.02))
    host_a.emit("t1", Status.COMPLETED, started_at=at(0), completed_at=at(0.3))
    host_a.emit("t2", Status.COMPLETED, started_at=at(10), completed_at=at(14))
    host_a.emit("t3", Status.IN_PROGRESS, attempt=1, **started(20, epoch + 19.7))
    host_a.emit("t3", Status.FAILED, started_at=at(20), completed_at=at(65))
    # A review repeats its execution's times, and a propagated failure never started:
    # neither is an execution of its own.
    review = {"started_at": at(0), "completed_at": at(100), "kind": ReviewEvent}
    host_a.emit("t1", Status.PENDING_REVIEW, **review)
    host_a.emit("t1", Status.APPROVED, **review)
    host_a.emit("gone", Status.FAILED, completed_at=at(5))
    host_c = LogWriter(backend.workspace, "w-c1", backend.database)
    start = (claimed_at + 2.0) - epoch
    host_c.emit("t4", Status.IN_PROGRESS, attempt=1, **started(start, claimed_at))
    retry = {"kind": ApiRetryEvent, "api_retry": 1, "errors": "API returned 503"}
    host_c.emit("t4", Status.IN_PROGRESS, attempt=1, **retry)


def make_presence(backend: Backend) -> None:
    for worker_id, host in (("w-a1", "host-a"), ("w-a2", "host-a"), ("w-b1", "host-b")):
        beacon = PresenceBeacon(
            backend.workspace, WorkerIdentity(worker_id, host=host), backend.database
        )
        beacon.announce(paused=False)


@pytest.fixture
def fleet(backend: Backend) -> Iterator[tuple[Flask, BudgetLedger]]:
    ledger = make_calls(backend)
    claimed_at = make_queue(backend)
    forget_events(backend)
    make_events(backend, claimed_at)
    make_presence(backend)
    app = create_app(backend.settings)
    yield app, ledger
    app.extensions["panel"].close()


@on_both_backends
def test_a_scrape_reports_the_known_fleet(fleet: tuple[Flask, BudgetLedger]) -> None:
    app, ledger = fleet
    found = samples(app)
    queue = by(found, "swarm_queue_tasks", "status")
    assert {s: n for s, n in queue.items() if n} == {
        "approved": 2.0,
        "failed": 1.0,
        "in_progress": 1.0,
        "pending": 2.0,
    }
    assert set(queue) == {s.value for s in Status}
    assert by(found, "swarm_tasks_finished", "outcome") == {"completed": 2.0, "failed": 1.0}
    assert by(found, "swarm_workers_alive", "host") == ALL_HOSTS

    completed_runs = buckets(found, "swarm_task_run_seconds", status="completed")
    assert (completed_runs["0.5"], completed_runs["2.5"], completed_runs["5.0"]) == (1, 1, 2)
    assert completed_runs["+Inf"] == one(found, "swarm_task_run_seconds_count", status="completed")
    assert one(found, "swarm_task_run_seconds_sum", status="completed") == pytest.approx(4.3)
    failed_runs = buckets(found, "swarm_task_run_seconds", status="failed")
    assert (failed_runs["30.0"], failed_runs["60.0"], failed_runs["+Inf"]) == (0, 1, 1)
    assert by(found, "swarm_task_run_seconds_count", "status") == {"completed": 2, "failed": 1}

    # Every attempt, those of finished tasks too; the API's retry is no attempt.
    claim = buckets(found, "swarm_task_claim_to_start_seconds")
    assert [claim[le] for le in ("0.01", "0.025", "0.25", "0.5", "1.0", "2.5", "+Inf")] == [
        0,
        1,
        1,
        2,
        2,
        3,
        3,
    ]
    assert one(found, "swarm_task_claim_to_start_seconds_count") == 3
    assert one(found, "swarm_task_claim_to_start_seconds_sum") == pytest.approx(2.32, abs=1e-5)

    calls = pairs(found, "swarm_llm_calls_total", "model", "outcome")
    assert calls == {
        ("model-a", "success"): 2,
        ("model-b", "success"): 1,
        ("model-b", "failure"): 1,
    }
    tokens = pairs(found, "swarm_llm_tokens_total", "model", "kind")
    assert tokens == {
        ("model-a", "prompt"): 30,
        ("model-a", "completion"): 15,
        ("model-b", "prompt"): 1000,
        ("model-b", "completion"): 50,
    }
    refusals = pairs(found, "swarm_llm_refusals_total", "model", "reason")
    assert refusals == {("model-a", "task_budget_exceeded"): 1}
    # From the ledger: model-b's answer once (not again for its OVER_RESERVATION), and
    # the hold of the call nobody saw answered, charged in full; the refusal cost nothing.
    audit = app.extensions["panel"].workspace.api_audit_path
    audited = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert audited.count("OVER_RESERVATION") == 1 and audited.count("UNSETTLED_CHARGED") == 1
    charged = by(found, "swarm_llm_charged_calls_total", "model")
    assert charged == {"model-a": 2, "model-b": 2}
    spend = by(found, "swarm_llm_spend_dollars_total", "model")
    spent = ledger.snapshot().spent
    assert spend["model-a"] == pytest.approx(0.6)
    assert spend["model-b"] > 32 and sum(spend.values()) == pytest.approx(spent)
    assert one(found, "swarm_llm_budget_spent_dollars") == pytest.approx(spent)
    assert one(found, "swarm_llm_budget_limit_dollars") == app.extensions["panel"].budget.limit


def test_the_scrape_follows_what_is_appended_and_counts_each_record_once(
    fleet: tuple[Flask, BudgetLedger], backend: Backend
) -> None:
    app, _ = fleet
    first = samples(app)
    again = samples(app)
    assert again["swarm_task_run_seconds_count"] == first["swarm_task_run_seconds_count"]
    assert again["swarm_llm_calls_total"] == first["swarm_llm_calls_total"]
    LogWriter(backend.workspace, "w-b1", backend.database).emit(
        "t5", Status.COMPLETED, started_at=at(0), completed_at=at(1.0)
    )
    later = buckets(samples(app), "swarm_task_run_seconds", status="completed")
    assert (later["0.5"], later["1.0"], later["+Inf"]) == (1, 2, 3)


def test_one_panel_counts_the_spend_of_every_host_sharing_the_database(
    database_url: str, tmp_path: Path
) -> None:
    """Counted from the workspace's audit trail, a panel saw only its own host's API."""
    hosts = [
        Settings(workspace=tmp_path / name, database_url=database_url)
        for name in ("host-a", "host-b")
    ]
    workspaces = [Workspace(settings.workspace) for settings in hosts]
    documents = [documents_for(s, w) for s, w in zip(hosts, workspaces, strict=True)]
    apps: list[Flask] = []
    try:
        for workspace, shared, model in zip(workspaces, documents, PRICES, strict=True):
            ledger = BudgetLedger(workspace, 100.0, shared.budget)
            wrapper = api_wrapper(workspace, ledger, [answer(model, 10, 5)])
            wrapper.call_llm("hello", model=model, max_tokens=100, temperature=0)
        apps = [create_app(settings) for settings in hosts]
        for app, own_model in zip(apps, PRICES, strict=True):
            found = samples(app)
            assert by(found, "swarm_llm_charged_calls_total", "model") == {
                "model-a": 1,
                "model-b": 1,
            }
            spend = by(found, "swarm_llm_spend_dollars_total", "model")
            assert spend == pytest.approx({"model-a": 0.2, "model-b": 0.5})
            own = pairs(found, "swarm_llm_calls_total", "model", "outcome")
            assert own == {(own_model, "success"): 1}
    finally:
        for app in apps:
            app.extensions["panel"].close()
        for shared in documents:
            shared.close()


# --- the worker's own records -------------------------------------------------------------


@pytest.fixture
def harness(workspace: Any) -> Iterator[Harness]:
    harness = make_harness(workspace)
    yield harness
    harness.worker.store.close()
    harness.worker.documents.close()


def test_a_scrape_after_the_worker_ran_matches_its_events(harness: Harness) -> None:
    harness.queue(
        {"id": "echo", "command": "echo hello"},
        {"id": "down", "prompt": "Write a haiku about message queues"},
    )
    error = "API returned 503: the execution API is restarting"
    harness.client.answers = [
        completed("hello", output="hello\n", exit_code=0),
        Answer(Dispatch(None, error, http_status=503, attempts=2), retries=[error]),
    ]
    assert harness.step() is not None and harness.step() is not None
    app = create_app(harness.worker.settings)
    try:
        found = samples(app)
    finally:
        app.extensions["panel"].close()
    queue = by(found, "swarm_queue_tasks", "status")
    assert (queue["approved"], queue["failed"], sum(queue.values())) == (1, 1, 2)
    assert by(found, "swarm_tasks_finished", "outcome") == {"completed": 1, "failed": 1}
    runs = {
        e["status"]: datetime.fromisoformat(e["completed_at"])
        - datetime.fromisoformat(e["started_at"])
        for e in read_events(harness.workspace)
        if e["status"] in ("completed", "failed") and "review_verdict" not in e
    }
    assert by(found, "swarm_task_run_seconds_count", "status") == {"completed": 1, "failed": 1}
    for status, took in runs.items():
        summed = one(found, "swarm_task_run_seconds_sum", status=status)
        assert summed == pytest.approx(took.total_seconds(), abs=1e-6)
    claims = [
        datetime.fromisoformat(e["started_at"]).timestamp() - e["claimed_at"]
        for e in read_events(harness.workspace)
        if e["status"] == "in_progress" and e.get("claimed_at") is not None
    ]
    assert len(claims) == 2
    assert one(found, "swarm_task_claim_to_start_seconds_count") == 2
    summed = one(found, "swarm_task_claim_to_start_seconds_sum")
    assert summed == pytest.approx(sum(max(0.0, c) for c in claims), abs=1e-6)


# --- refusals -----------------------------------------------------------------------------


def test_an_unusable_queue_is_one_line_of_503_and_no_traceback(settings: Settings) -> None:
    (settings.workspace / QUEUE_FILE).write_text("{not json")
    app = create_app(settings)
    try:
        response = scrape(app)
    finally:
        app.extensions["panel"].close()
    text = response.get_data(as_text=True)
    assert response.status_code == 503 and response.mimetype == "text/plain"
    assert text.count("\n") == 1 and text.startswith(QUEUE_FILE)
    assert "Traceback" not in text


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_database_away_is_a_503_and_the_scrape_comes_back_with_it(
    postgres_cluster: Any, backend: Backend
) -> None:
    app = create_app(backend.settings)
    panel = app.extensions["panel"]
    for database in (panel.documents.database, panel.store.database):
        database.checkout_timeout = 1.0
    try:
        assert scrape(app).status_code == 200
        postgres_cluster.stop()
        try:
            response = scrape(app)
        finally:
            postgres_cluster.start_server()
        text = response.get_data(as_text=True)
        assert response.status_code == 503 and response.mimetype == "text/plain"
        assert text.count("\n") == 1 and "unreachable" in text and "Traceback" not in text
        wait_until(lambda: scrape(app).status_code == 200, timeout=30)
    finally:
        panel.close()


def test_a_foreign_host_is_refused_and_each_app_has_its_own_registry(settings: Settings) -> None:
    apps = [create_app(settings), create_app(settings)]
    try:
        assert scrape(apps[0], base_url="http://evil.example:8421").status_code == 403
        assert all(scrape(app).status_code == 200 for app in apps)
    finally:
        for app in apps:
            app.extensions["panel"].close()


# --- the pure parts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "le"),
    [(0.0, "0.5"), (0.5, "0.5"), (0.5001, "1.0"), (1.0, "1.0"), (7.0, "+Inf")],
)
def test_a_value_lands_in_the_first_bucket_at_or_above_it(value: float, le: str) -> None:
    histogram = Buckets((0.5, 1.0))
    histogram.observe(value)
    reading = histogram.reading()
    first = next(edge for edge, count in reading.buckets if count)
    assert first == le and reading.buckets[-1] == ("+Inf", 1) and reading.sum == value


def event(status: str, **fields: Any) -> dict[str, Any]:
    return {"task_id": "t", "worker_id": "w", "status": status, **fields}


@pytest.mark.parametrize(
    ("record", "run"),
    [
        (event("completed", started_at=at(0), completed_at=at(3)), ("completed", 3.0)),
        (event("safety_blocked", started_at=at(0), completed_at=at(0)), ("safety_blocked", 0.0)),
        (event("failed", started_at=at(5), completed_at=at(4)), ("failed", 0.0)),  # clock skew
        (event("failed", started_at=None, completed_at=at(4)), None),
        (event("in_progress", started_at=at(0), completed_at=None), None),
        (event("approved", started_at=at(0), completed_at=at(9), review_verdict=None), None),
        (event("completed", started_at="yesterday", completed_at=at(9)), None),
    ],
)
def test_only_an_executions_own_end_is_a_run(
    record: dict[str, Any], run: tuple[str, float] | None
) -> None:
    assert execution_run(record) == run


@pytest.mark.parametrize(
    ("record", "waited"),
    [
        (event("in_progress", started_at=at(2), claimed_at=T0.timestamp()), 2.0),
        (event("in_progress", started_at=at(0), claimed_at=T0.timestamp() + 1), 0.0),  # skew
        (event("in_progress", started_at=at(2), claimed_at=None), None),  # an older worker
        (event("in_progress", api_retry=1, claimed_at=T0.timestamp()), None),
        (event("in_progress", started_at=at(2), claimed_at=True), None),
        (event("in_progress", started_at=at(2), claimed_at="2026-01-01"), None),
        (event("completed", started_at=at(2), claimed_at=T0.timestamp()), None),
    ],
)
def test_only_an_attempts_start_with_its_claim_is_a_claim_to_start(
    record: dict[str, Any], waited: float | None
) -> None:
    assert claim_wait(record) == (None if waited is None else pytest.approx(waited))
