"""Fleet faults: two simulated hosts (host-a, host-b) sharing one PostgreSQL database.

Each host is its own workspace, its own swarm.py and its own workers, started with
SWARM_HOST naming it (tests/helpers/fleet.py). The tests kill workers, whole hosts and the
database itself, then count: every task ends in one final state, each (task, attempt)
runs once, a task pinned to a host runs there, a lease held on another host is trusted
until it expires, and the budget shared by every host's API is never overspent.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import DatabaseBackend, RunningProcess, wait_until
from fake_llm_server import FakeLLMServer
from helpers.faults_queue_churn import FEEDER_ID, is_failing
from helpers.fleet import (
    FLEET_SCRIPT,
    HOSTS,
    TESTS,
    Fleet,
    Host,
    ends,
    file_events,
    fleet_task,
    get_json,
    runs,
)
from test_faults_processes import (
    FINAL,
    PRELOADED,
    TOTAL_TASKS,
    all_final,
    each_attempt_ran_once,
    kill_hard,
)
from test_faults_provider import (
    AFFORDABLE,
    BURST,
    MAX_TOKENS,
    MODEL,
    PRICE,
    PROMPT,
    budget_ledger,
    budgeted_burst,
    prices_file,
)

from swarm_runtime.llm.wrapper import input_token_bound
from swarm_runtime.store.state_files import Workspace

A, B = HOSTS
AUTHOR_MODEL = "gpt-4o-mini"
QUICK = {
    "SWARM_REVIEW": "0",
    "SWARM_POLL_INTERVAL": "0.05",
    "SWARM_RATE_LIMIT": "100000",
}


@pytest.fixture
def fleets(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """Fleets on a database; on teardown every process still running gets SIGTERM and
    must exit 0 (a process the test killed is not asked again)."""
    made: list[Fleet] = []

    def make(database_url: str, **shared: str) -> Fleet:
        fleet = Fleet(tmp_path / f"fleet-{len(made)}", database_url, **shared)
        made.append(fleet)
        return fleet

    yield make
    failures = [failure for fleet in made for failure in fleet.stop()]
    assert not failures, "\n".join(failures)


@pytest.fixture
def observers(tmp_path: Path) -> Iterator[Callable[[str], DatabaseBackend]]:
    """The test's own view of the shared database: the queue, the archive and the events."""
    made: list[DatabaseBackend] = []

    def make(database_url: str) -> DatabaseBackend:
        workspace = Workspace(tmp_path / f"observer-{len(made)}")
        workspace.ensure_layout()
        made.append(DatabaseBackend(workspace, database_url))
        return made[-1]

    yield make
    for observer in made:
        observer.close()


def records(store: DatabaseBackend) -> list[dict[str, Any]]:
    """Every task once, whether still in the queue or archived by retention."""
    return store.queue()["tasks"] + store.archived()


def host_of(worker_id: str) -> str:
    return worker_id.rpartition("-w")[0]


def worker_ids(hosts: list[Host], count: int) -> set[str]:
    return {host.worker_id(n) for host in hosts for n in range(count)}


# --- 1. two hosts drain a mixed, pinned queue while another process churns it -------------

WORKERS_PER_HOST = 2


def test_two_hosts_drain_500_mixed_pinned_tasks_while_another_process_churns(
    fleets: Callable[..., Fleet],
    observers: Callable[[str], DatabaseBackend],
    database_url: str,
    tmp_path: Path,
) -> None:
    store = observers(database_url)
    with FakeLLMServer(reply_text="Hello.") as provider:
        fleet = fleets(
            database_url,
            SWARM_LLM_BASE_URL=provider.url,
            SWARM_LLM_MODEL=AUTHOR_MODEL,
            SWARM_QUEUE_RETAIN="50",
            **QUICK,
        )
        hosts = [fleet.add_host(name) for name in HOSTS]
        for host in hosts:
            host.start_api()
        store.seed([fleet_task(i) for i in range(PRELOADED)], hosts[0].url)
        started = time.monotonic()
        for host in hosts:
            for n in range(WORKERS_PER_HOST):
                host.start_worker(n)
        report = tmp_path / "fed.json"
        feeder = hosts[0].start(
            [FLEET_SCRIPT, "feed", str(report), str(PRELOADED), str(TOTAL_TASKS)],
            PYTHONPATH=str(TESTS),
        )
        assert feeder.proc.wait(timeout=90) == 0, feeder.output
        wait_until(lambda: all_final(store), timeout=60, interval=0.1)
        elapsed = time.monotonic() - started
        assert fleet.stop() == []
        llm_calls = len(provider.requests)
    print(f"{TOTAL_TASKS} tasks on two hosts in {elapsed:.1f}s, {llm_calls} LLM calls")

    fed = json.loads(report.read_text())
    expected = {fleet_task(i)["id"] for i in range(TOTAL_TASKS)}
    failing = {tid for tid in expected if is_failing(tid)}
    assert len(fed["added"]) == TOTAL_TASKS - PRELOADED
    assert fed["requeued"] and set(fed["requeued"]) | set(fed["left_failed"]) == failing

    # Every task is once in the queue or its archive, in the one final state it should be.
    finished = records(store)
    assert sorted(t["id"] for t in finished) == sorted(expected)
    statuses = {t["id"]: t["status"] for t in finished}
    assert {tid for tid, s in statuses.items() if s == "failed"} == failing
    assert {tid for tid, s in statuses.items() if s == "completed"} == expected - failing

    # Each (task, attempt) started once and ended once; only requeues made second attempts.
    events = store.events()
    workers = worker_ids(hosts, WORKERS_PER_HOST)
    each_attempt_ran_once(events, finished, fed, expected, workers.__contains__)
    prompts = {tid for tid in expected if "prompt" in fleet_task(int(tid[1:]))}
    assert llm_calls == len(prompts), "each prompt reached the provider once"

    # A pinned task ran only on its host; every event names the host that wrote it.
    pinned = {fleet_task(i)["id"]: fleet_task(i).get("host") for i in range(TOTAL_TASKS)}
    for event in events:
        if event["worker_id"] in workers:
            assert event["host"] == host_of(event["worker_id"]), event
        elif event["worker_id"] == FEEDER_ID:
            assert event["host"] == A, event
    ran_on = {
        (e["task_id"], e["host"])
        for e in events
        if e["status"] == "in_progress" and e["worker_id"] in workers
    }
    assert {(tid, host) for tid, host in ran_on if pinned[tid] not in (None, host)} == set()
    assert {host for tid, host in ran_on if pinned[tid] is None} == set(HOSTS), "both hosts work"


# --- 2. a worker killed on one host is reclaimed by another only when its lease expires ---

LEASE_SECONDS = 3.0
PROVIDER_DELAY = 1.5


def timestamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def test_a_worker_killed_on_one_host_is_reclaimed_by_another_only_after_its_lease_expires(
    fleets: Callable[..., Fleet],
    observers: Callable[[str], DatabaseBackend],
    database_url: str,
) -> None:
    """From host-b the holder's pid means nothing: only the lease's expiry frees the task."""
    store = observers(database_url)
    with FakeLLMServer(delay=PROVIDER_DELAY) as provider:
        fleet = fleets(
            database_url,
            SWARM_LLM_BASE_URL=provider.url,
            SWARM_LLM_MODEL=AUTHOR_MODEL,
            SWARM_LEASE_SECONDS=str(LEASE_SECONDS),
            **QUICK,
        )
        host_a, host_b = (fleet.add_host(name) for name in HOSTS)
        host_a.start_api()
        host_b.start_api()
        store.seed([{"id": "slow", "prompt": "Write a haiku about leases"}], host_a.url)
        doomed = host_a.start_worker(0)
        wait_until(lambda: provider.requests, timeout=20)
        kill_hard(doomed)
        killed_at = time.time()
        [task] = store.queue()["tasks"]
        lease = task["lease"]
        assert (task["status"], lease["host"], lease["worker_id"]) == (
            "in_progress",
            A,
            "host-a-w0",
        )

        rescuer = host_b.start_worker(0)
        wait_until(lambda: store.queue()["tasks"][0]["status"] in FINAL, timeout=30)
        assert rescuer.stop() == 0
        assert len(provider.requests) == 2, "one execution per lease"

    events = [e for e in store.events() if e["task_id"] == "slow"]
    assert [(e["status"], e["worker_id"], e["host"]) for e in events] == [
        ("in_progress", "host-a-w0", A),
        ("lease_expired", "host-b-w0", B),
        ("in_progress", "host-b-w0", B),
        ("completed", "host-b-w0", B),
    ]
    reclaim = events[1]
    assert reclaim["reason"] == "lease expired"
    assert reclaim["previous_holder"]["host"] == A
    assert reclaim["previous_holder"]["pid"] == doomed.proc.pid
    # Not a moment before the lease ran out, though its holder died well before.
    assert lease["expires_at"] - killed_at > LEASE_SECONDS / 3
    assert timestamp(reclaim) >= lease["expires_at"]
    assert [e["attempt"] for e in events if e["status"] == "in_progress"] == [1, 2]
    [task] = store.queue()["tasks"]
    assert (task["status"], task["attempts"], task["lease"]) == ("completed", 2, None)


# --- 3. a whole host stopped: the other finishes the rest, the panel says what waits -----

UNPINNED = 40
PINNED_EACH = 8
PRESENCE_STALE_WAIT = 45  # a worker of another host is trusted for 30 s after it spoke


def waiting_reasons(panel: RunningProcess, task_ids: set[str]) -> dict[str, Any]:
    table = get_json(f"{panel.url}/api/tasks?per_page=200")
    return {row["id"]: row.get("waiting_for") for row in table["tasks"] if row["id"] in task_ids}


def test_a_stopped_host_leaves_its_pinned_work_pending_and_the_panel_says_why(
    fleets: Callable[..., Fleet],
    observers: Callable[[str], DatabaseBackend],
    database_url: str,
) -> None:
    """Host-a dies with both its workers inside tasks pinned to it (their provider never
    answers). Host-b finishes everything else, takes the dead leases back when they expire
    but runs none of host-a's work, and its panel says what that work waits for."""
    store = observers(database_url)
    with FakeLLMServer() as provider:
        provider.gate = threading.Event()  # never set: host-a's calls hang until it dies
        fleet = fleets(
            database_url,
            SWARM_LLM_BASE_URL=provider.url,
            SWARM_LLM_MODEL=AUTHOR_MODEL,
            SWARM_LEASE_SECONDS="2",
            **QUICK,
        )
        host_a, host_b = (fleet.add_host(name) for name in HOSTS)
        for host in (host_a, host_b):
            host.start_api()
            for n in range(WORKERS_PER_HOST):
                host.start_worker(n)
        panel = host_b.start_panel()
        tasks = [{"id": f"u{i:02d}", "command": f"echo {i}"} for i in range(UNPINNED)]
        tasks += [{"id": f"b{i}", "command": f"echo {i}", "host": B} for i in range(PINNED_EACH)]
        tasks += [{"id": f"a{i}", "prompt": f"Say {i}", "host": A} for i in range(PINNED_EACH)]
        stranded = {t["id"] for t in tasks if t.get("host") == A}
        store.seed(tasks, host_b.url)
        wait_until(lambda: len(provider.requests) == WORKERS_PER_HOST, timeout=20)
        host_a.kill()

        def statuses() -> dict[str, str]:
            return {t["id"]: t["status"] for t in records(store)}

        wait_until(lambda: set(statuses().values()) == {"completed", "pending"}, 30, 0.1)
        finished = statuses()
    assert {tid for tid, s in finished.items() if s == "pending"} == stranded

    events = store.events()
    by_b = [e for e in events if e["host"] == B]
    assert not [e for e in by_b if e["task_id"] in stranded and e["status"] != "lease_expired"]
    reclaimed = [e for e in by_b if e["status"] == "lease_expired"]
    assert len(reclaimed) == WORKERS_PER_HOST and {e["task_id"] for e in reclaimed} <= stranded
    assert {e["previous_holder"]["host"] for e in reclaimed} == {A}
    assert {e["reason"] for e in reclaimed} == {"lease expired"}
    runs_on_b = {e["task_id"] for e in by_b if e["status"] == "in_progress"}
    runs_on_a = {e["task_id"] for e in events if e["host"] == A and e["status"] == "in_progress"}
    assert (runs_on_a | runs_on_b) - stranded == {t["id"] for t in tasks} - stranded
    assert runs_on_a & stranded == {e["task_id"] for e in reclaimed}, "a worker each, then killed"

    # Host-a's workers look alive until their presence goes stale; then the panel says
    # that nothing alive may take the stranded tasks, and why.
    reasons = wait_until(
        lambda: (
            (found := waiting_reasons(panel, stranded))
            and all(reason and "none alive" in reason for reason in found.values())
            and found
        ),
        timeout=PRESENCE_STALE_WAIT,
        interval=0.5,
    )
    assert set(reasons) == stranded
    assert set(reasons.values()) == {f"waiting for a worker on host '{A}' (none alive)"}
    others = waiting_reasons(panel, {t["id"] for t in tasks} - stranded)
    assert set(others.values()) == {None}, "finished work waits for nothing"


# --- 4. the database restarted while both hosts drain the queue -------------------------

OUTAGE_TASKS = 300
OUTAGE_SHOWN_WITHIN = 15.0


@pytest.fixture
def own_cluster() -> Iterator[Any]:
    """A PostgreSQL server of the test's own, to stop and start under running processes."""
    from postgres_cluster import running_cluster

    with running_cluster() as cluster:
        yield cluster


def store_error(summary: dict[str, Any]) -> str | None:
    queue = summary.get("queue") or {}
    return queue.get("error")


def summary_or_none(panel: RunningProcess) -> dict[str, Any] | None:
    try:
        return get_json(f"{panel.url}/api/summary", timeout=30)
    except requests.RequestException:
        return None


def event_keys(events: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    return Counter((e["task_id"], e["worker_id"], e["status"], e["timestamp"]) for e in events)


def wait_for_events(store: DatabaseBackend, expected: list[dict[str, Any]]) -> list[Any]:
    """The database's events once they match `expected`, or as they are at the deadline."""
    deadline = time.monotonic() + 20
    while event_keys(found := store.events()) != event_keys(expected):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return found


def unmatched(found: list[dict[str, Any]], expected: list[dict[str, Any]]) -> str:
    missing = event_keys(expected) - event_keys(found)
    extra = event_keys(found) - event_keys(expected)
    return f"not in the database: {sorted(missing)[:10]}; there twice or more: {sorted(extra)[:10]}"


def test_every_host_rides_out_a_database_restart_and_nothing_runs_twice_or_is_lost(
    own_cluster: Any,
    fleets: Callable[..., Fleet],
    observers: Callable[[str], DatabaseBackend],
) -> None:
    """The leases outlast the outage, so no task may run a second time; the events each
    host could not send wait and reach the database once it is back."""
    database_url = own_cluster.url(own_cluster.fresh_database())
    store = observers(database_url)
    fleet = fleets(database_url, SWARM_API_RETRIES="6", SWARM_LEASE_SECONDS="120", **QUICK)
    hosts = [fleet.add_host(name) for name in HOSTS]
    for host in hosts:
        host.start_api()
    tasks = [{"id": f"t{i:03d}", "command": f"echo {i}"} for i in range(OUTAGE_TASKS)]
    for i in range(0, OUTAGE_TASKS, 10):
        tasks[i]["host"] = HOSTS[i // 10 % 2]
    store.seed(tasks, hosts[0].url)
    panel = hosts[1].start_panel()
    for host in hosts:
        for n in range(WORKERS_PER_HOST):
            host.start_worker(n)

    def done() -> int:
        return len(store.queue()["completed"])

    wait_until(lambda: done() >= OUTAGE_TASKS // 5, timeout=30, interval=0.1)
    workers = [p for host in hosts for p in host.processes if "worker.py" in p.proc.args]
    own_cluster.stop("fast")
    stopped = time.monotonic()
    try:
        outage = wait_until(lambda: (got := summary_or_none(panel)) and store_error(got), 45, 0.2)
        shown_after = time.monotonic() - stopped
        # Every worker has met the outage before the server comes back.
        wait_until(lambda: all("cannot be reached" in w.output for w in workers), timeout=30)
    finally:
        own_cluster.start_server()
    restarted = time.monotonic()
    assert "unreachable" in outage, outage
    # Not after 10 s per read (a pool's checkout timeout): the header reads five things.
    assert shown_after < OUTAGE_SHOWN_WITHIN, f"the panel said so after {shown_after:.1f}s"

    wait_until(lambda: (got := summary_or_none(panel)) and not store_error(got), 30, 0.2)
    recovered_after = time.monotonic() - restarted
    try:
        wait_until(lambda: done() == OUTAGE_TASKS, timeout=60, interval=0.1)
    except AssertionError:
        stuck = [t for t in store.queue()["tasks"] if t["status"] != "completed"]
        tails = "\n".join(f"{p.proc.args[-1]}: {p.output[-1500:]}" for p in workers)
        raise AssertionError(f"not completed: {stuck[:5]}\n{tails}") from None
    print(
        f"outage {restarted - stopped:.1f}s, shown by the panel after {shown_after:.1f}s, "
        f"gone from it {recovered_after:.1f}s after the restart"
    )
    dead = [p.proc.args for host in hosts for p in host.processes if p.proc.poll() is not None]
    assert dead == [], "a process died of the outage"
    summary = get_json(f"{panel.url}/api/summary")
    assert summary["queue"].get("error") is None and summary["pause"]["error"] is None

    assert {(t["status"], t["attempts"]) for t in store.queue()["tasks"]} == {("completed", 1)}
    events = file_events(hosts)
    started_runs = runs(events)
    assert set(started_runs.values()) == {1}, "a (task, attempt) ran twice"
    expected_runs = {(t["id"], 1) for t in tasks}
    assert set(started_runs) == expected_runs, f"never started: {expected_runs - set(started_runs)}"
    ended = ends(events, worker_ids(hosts, WORKERS_PER_HOST))
    twice = {run for run, count in ended.items() if count > 1}
    assert set(ended.values()) == {1}, "\n".join(
        json.dumps(e) for e in events if (e["task_id"], e.get("attempt")) in twice
    )
    assert not [e for e in events if e["status"] == "lease_expired"]
    pinned = {t["id"]: t.get("host") for t in tasks}
    assert all(
        pinned[e["task_id"]] in (None, e["host"]) and e["host"] == host_of(e["worker_id"])
        for e in events
        if e["status"] == "in_progress"
    )
    # What a host kept while the database was away reached it after, once each.
    in_database = wait_for_events(store, events)
    assert event_keys(in_database) == event_keys(events), unmatched(in_database, events)


# --- 5. the budget shared by two hosts' APIs is never overspent -------------------------


def test_fifty_calls_split_across_two_hosts_apis_never_spend_past_the_shared_limit(
    fleets: Callable[..., Fleet],
    observers: Callable[[str], DatabaseBackend],
    database_url: str,
    tmp_path: Path,
) -> None:
    """Every call costs exactly its hold and the limit fits 12.5 of them; a reader checks
    the ledger in the database all along."""
    store = observers(database_url)
    estimate = PRICE.cost(input_token_bound(PROMPT), MAX_TOKENS)
    limit = (AFFORDABLE + 0.5) * estimate
    with FakeLLMServer(usage=(input_token_bound(PROMPT), MAX_TOKENS), delay=0.1) as provider:
        fleet = fleets(
            database_url,
            SWARM_LLM_BASE_URL=provider.url,
            SWARM_LLM_MODEL=MODEL,
            SWARM_PRICES_FILE=str(prices_file(tmp_path)),
            SWARM_RATE_LIMIT="100000",
            SWARM_BUDGET_LIMIT=repr(limit),
        )
        hosts = [fleet.add_host(name) for name in HOSTS]
        for host in hosts:
            host.start_api()
        targets = [(host.url, host.token) for host in hosts]
        answers, peaks = budgeted_burst(targets, lambda: budget_ledger(store))
        served = len(provider.requests)

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * AFFORDABLE + [403] * (BURST - AFFORDABLE)
    assert served == AFFORDABLE
    assert peaks and max(peaks) <= limit
    final = budget_ledger(store)
    assert final is not None and final.reservations == {}
    assert final.spent == pytest.approx(AFFORDABLE * estimate) and final.spent <= limit
