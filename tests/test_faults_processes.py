"""Process faults: a worker or the API killed mid-task, and many processes at once.

Each test runs real processes on 127.0.0.1, kills them with SIGKILL (no cleanup, like
a power cut), and then counts: every event of every task, the queue's statuses, and
the provider's requests. Nothing may be lost, no task may end in two final states, and
a task runs twice only when its lease was reclaimed, which the log must then show.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Backend, RunningProcess, on_both_backends, wait_until
from fake_llm_server import FakeLLMServer
from helpers.faults_queue_churn import FEEDER_ID, is_failing, task_spec

HELPERS = Path(__file__).resolve().parent / "helpers"
AUTHOR_MODEL = "gpt-4o-mini"
PROVIDER_DELAY = 1.5
SHORT_LEASE = "2"
API_RETRIES = "5"  # backoff 0.5+1+2+4+8 s: room for a new swarm.py to start on a slow machine
FINAL = {"approved", "completed", "failed", "safety_blocked", "cancelled"}


def task_record(backend: Backend, task_id: str) -> dict[str, Any]:
    return next(t for t in backend.queue()["tasks"] if t["id"] == task_id)


def status_of(backend: Backend, task_id: str) -> str:
    return task_record(backend, task_id)["status"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_hard(process: RunningProcess) -> None:
    """SIGKILL and reap: an unreaped child is a zombie, and a zombie still looks alive."""
    process.proc.send_signal(signal.SIGKILL)
    process.proc.wait(timeout=10)


def provider_env(backend: Backend, provider: FakeLLMServer, **extra: str) -> dict[str, str]:
    return backend.env(
        SWARM_LLM_BASE_URL=provider.url,
        SWARM_LLM_MODEL=AUTHOR_MODEL,
        SWARM_POLL_INTERVAL="0.05",
        **extra,
    )


@on_both_backends
def test_a_worker_killed_mid_task_is_reclaimed_and_the_task_finishes_once(
    spawn: Callable[..., RunningProcess], backend: Backend
) -> None:
    with FakeLLMServer(delay=PROVIDER_DELAY) as provider:
        env = provider_env(backend, provider, SWARM_LEASE_SECONDS=SHORT_LEASE)
        api = spawn(["swarm.py", "--port", "0"], env)
        backend.seed([{"id": "slow", "prompt": "Write a haiku about leases"}], str(api.url))
        doomed = spawn(["worker.py", "--worker-id", "doomed"], env, wait_for_url=False)
        wait_until(lambda: provider.requests, timeout=20)
        assert status_of(backend, "slow") == "in_progress"
        kill_hard(doomed)

        rescuer = spawn(["worker.py", "--worker-id", "rescuer"], env, wait_for_url=False)
        wait_until(lambda: status_of(backend, "slow") in FINAL, timeout=30)
        assert rescuer.stop() == 0

    events = [e for e in backend.events() if e["task_id"] == "slow"]
    assert [(e["status"], e["worker_id"]) for e in events] == [
        ("in_progress", "doomed"),
        ("lease_expired", "rescuer"),
        ("in_progress", "rescuer"),
        ("completed", "rescuer"),
        ("pending_review", "rescuer"),
        ("approved", "rescuer"),
    ]
    reclaim = events[1]
    assert reclaim["previous_holder"]["worker_id"] == "doomed"
    assert reclaim["previous_holder"]["pid"] == doomed.proc.pid
    assert reclaim["reason"] == "lease holder process no longer exists"
    assert [e["attempt"] for e in events if e["status"] == "in_progress"] == [1, 2]
    # Two executions, one per lease: the doomed worker's answer was lost with it.
    assert len(provider.requests) == 2
    task = task_record(backend, "slow")
    assert (task["status"], task["attempts"], task["lease"]) == ("approved", 2, None)
    queue = backend.queue()
    assert queue["completed"] == ["slow"] and queue["failed"] == []


@on_both_backends
def test_a_frozen_worker_loses_its_expired_lease_and_records_nothing_after_it(
    spawn: Callable[..., RunningProcess], backend: Backend
) -> None:
    """The holder is alive but silent (stopped): only the lease's expiry frees the task,
    and when the holder wakes up it must not record a second outcome."""
    with FakeLLMServer(delay=PROVIDER_DELAY) as provider:
        env = provider_env(backend, provider, SWARM_LEASE_SECONDS=SHORT_LEASE)
        api = spawn(["swarm.py", "--port", "0"], env)
        backend.seed([{"id": "stuck", "prompt": "Write a haiku about clocks"}], str(api.url))
        frozen = spawn(["worker.py", "--worker-id", "frozen"], env, wait_for_url=False)
        wait_until(lambda: provider.requests, timeout=20)
        frozen.proc.send_signal(signal.SIGSTOP)

        rescuer = spawn(["worker.py", "--worker-id", "rescuer"], env, wait_for_url=False)
        wait_until(lambda: status_of(backend, "stuck") in FINAL, timeout=30)
        frozen.proc.send_signal(signal.SIGCONT)
        wait_until(
            lambda: "lost the lease" in frozen.output or "new holder" in frozen.output, timeout=20
        )
        assert frozen.stop() == 0 and rescuer.stop() == 0

    events = [e for e in backend.events() if e["task_id"] == "stuck"]
    by_worker = Counter((e["worker_id"], e["status"]) for e in events)
    assert by_worker[("rescuer", "lease_expired")] == 1
    reclaim = next(e for e in events if e["status"] == "lease_expired")
    assert reclaim["reason"] == "lease expired"
    assert reclaim["previous_holder"]["worker_id"] == "frozen"
    finals = [e for e in events if e["status"] in FINAL - {"completed"}]
    assert [(e["worker_id"], e["status"]) for e in finals] == [("rescuer", "approved")]
    # The frozen worker's own execution did happen (its answer arrived while it slept), so
    # the log keeps it, under attempt 1, after the reclaim: as a discarded result, fenced
    # out of the task's status (once it read `completed` there, after the approval).
    frozen_events = [(e["status"], e["attempt"]) for e in events if e["worker_id"] == "frozen"]
    assert frozen_events == [("in_progress", 1), ("result_discarded", 1)]
    (late,) = [e for e in events if e["status"] == "result_discarded"]
    assert late["discarded_status"] == "completed" and "lease" in late["errors"]
    assert events.index(reclaim) < events.index(late)
    assert [
        e["attempt"] for e in events if e["worker_id"] == "rescuer" and e["status"] == "completed"
    ] == [2]
    assert len(provider.requests) == 2
    task = task_record(backend, "stuck")
    assert (task["status"], task["attempts"], task["lease"]) == ("approved", 2, None)
    assert backend.queue()["completed"] == ["stuck"]


def api_retries(backend: Backend, task_id: str) -> list[dict[str, Any]]:
    return [
        e for e in backend.events() if e["task_id"] == task_id and e.get("api_retry") is not None
    ]


@on_both_backends
def test_the_api_killed_mid_request_is_retried_once_it_is_back(
    spawn: Callable[..., RunningProcess], backend: Backend
) -> None:
    """The failure is an event while the worker still holds the task; a new swarm.py on the
    same port then gets the retry, and the task finishes in its first attempt."""
    port = free_port()
    with FakeLLMServer(delay=PROVIDER_DELAY) as provider:
        env = provider_env(backend, provider, SWARM_API_RETRIES=API_RETRIES)
        first_api = spawn(["swarm.py", "--port", str(port)], env)
        backend.seed([{"id": "t", "prompt": "Write a haiku about restarts"}], str(first_api.url))
        worker = spawn(["worker.py", "--worker-id", "w"], env, wait_for_url=False)
        wait_until(lambda: provider.requests, timeout=20)
        kill_hard(first_api)

        wait_until(lambda: api_retries(backend, "t"), timeout=20)
        assert status_of(backend, "t") == "in_progress"
        second_api = spawn(["swarm.py", "--port", str(port)], env)
        assert second_api.url == first_api.url
        wait_until(lambda: status_of(backend, "t") in FINAL, timeout=40)
        assert worker.stop() == 0

    retries = api_retries(backend, "t")
    assert 1 <= len(retries) <= int(API_RETRIES)
    assert [r["api_retry"] for r in retries] == list(range(1, len(retries) + 1))
    assert all("cannot connect to the execution API" in r["errors"] for r in retries)
    assert all(r["attempt"] == 1 and r["retry_in"] > 0 for r in retries)
    outcomes = [
        e["status"] for e in backend.events() if e["task_id"] == "t" and e.get("api_retry") is None
    ]
    assert outcomes == ["in_progress", "completed", "pending_review", "approved"]
    # The first API died holding the provider's answer; the retry asked again, once.
    assert len(provider.requests) == 2
    task = task_record(backend, "t")
    assert (task["status"], task["attempts"], task["lease"]) == ("approved", 1, None)
    queue = backend.queue()
    assert queue["completed"] == ["t"] and queue["failed"] == []


CHURN = str(HELPERS / "faults_queue_churn.py")
TOTAL_TASKS = 500
PRELOADED = 100
WORKERS = 4


def all_final(backend: Backend) -> bool:
    queue = backend.queue()
    return len(set(queue["completed"]) | set(queue["failed"])) == TOTAL_TASKS and all(
        t["status"] in FINAL for t in queue["tasks"]
    )


def each_attempt_ran_once(
    events: list[dict[str, Any]],
    records: list[dict[str, Any]],
    fed: dict[str, Any],
    expected: set[str],
    worker: Callable[[str], bool],
) -> None:
    """Each (task, attempt) started once (an API retry repeats no start) and a `worker`
    recorded its outcome once; nothing was reclaimed, and only the feeder's requeues made
    second attempts, as the tasks' own `attempts` say."""
    assert not [e for e in events if e["status"] == "lease_expired"]
    starts = Counter(
        (e["task_id"], e["attempt"])
        for e in events
        if e["status"] == "in_progress" and e.get("api_retry") is None
    )
    ends = Counter(
        (e["task_id"], e["attempt"])
        for e in events
        if e["status"] in ("completed", "failed") and worker(e["worker_id"])
    )
    assert set(starts.values()) == {1} and set(ends.values()) == {1}
    assert set(starts) == set(ends)
    requeues = Counter(e["task_id"] for e in events if e.get("operator_action") == "requeue")
    assert requeues == Counter(fed["requeued"])
    runs = Counter(task_id for task_id, _ in starts)
    assert runs == Counter({tid: 2 if tid in requeues else 1 for tid in expected})
    assert {t["id"]: t["attempts"] for t in records} == dict(runs)


@on_both_backends
def test_four_workers_drain_500_tasks_while_another_process_adds_and_requeues(
    spawn: Callable[..., RunningProcess], backend: Backend, tmp_path: Path
) -> None:
    env = backend.env(SWARM_REVIEW="0", SWARM_QUEUE_RETAIN="50", SWARM_POLL_INTERVAL="0.05")
    api = spawn(["swarm.py", "--port", "0"], env)
    backend.seed([task_spec(i) for i in range(PRELOADED)], str(api.url))
    reader = spawn([CHURN, "read", str(tmp_path / "reads.json")], env, wait_for_url=False)
    wait_until(lambda: "reading" in reader.output, timeout=20)
    started = time.monotonic()
    workers = [
        spawn(["worker.py", "--worker-id", f"w{i}"], env, wait_for_url=False)
        for i in range(WORKERS)
    ]
    feeder = spawn(
        [CHURN, "feed", str(tmp_path / "fed.json"), str(PRELOADED), str(TOTAL_TASKS)],
        env,
        wait_for_url=False,
    )
    assert feeder.proc.wait(timeout=120) == 0, feeder.output
    wait_until(lambda: all_final(backend), timeout=60, interval=0.1)
    elapsed = time.monotonic() - started
    assert [w.stop() for w in workers] == [0] * WORKERS
    assert reader.stop() == 0
    fed = json.loads((tmp_path / "fed.json").read_text())
    reads = json.loads((tmp_path / "reads.json").read_text())
    print(
        f"{TOTAL_TASKS} tasks in {elapsed:.1f}s ({TOTAL_TASKS / elapsed:.1f} tasks/s); "
        f"{len(fed['requeued'])} requeued; the queue read {reads['reads']} times, "
        f"{reads['versions']} versions"
    )
    assert reads["problems"] == [] and reads["versions"] >= 50, reads
    expected = {task_spec(i)["id"] for i in range(TOTAL_TASKS)}
    failing = {tid for tid in expected if is_failing(tid)}
    assert len(fed["added"]) == TOTAL_TASKS - PRELOADED
    assert fed["requeued"] and set(fed["requeued"]) | set(fed["left_failed"]) == failing

    # Every task is exactly once in the queue or its archive, in one final state.
    queue = backend.queue()
    records = queue["tasks"] + backend.archived()
    assert sorted(t["id"] for t in records) == sorted(expected)
    statuses = {t["id"]: t["status"] for t in records}
    assert {tid for tid, s in statuses.items() if s == "failed"} == failing
    assert {tid for tid, s in statuses.items() if s == "completed"} == expected - failing
    assert sorted(queue["completed"]) == sorted(expected - failing)
    assert sorted(queue["failed"]) == sorted(failing)

    # Each attempt started once and ended once; only operator requeues made second ones.
    each_attempt_ran_once(backend.events(), records, fed, expected, lambda w: w != FEEDER_ID)
