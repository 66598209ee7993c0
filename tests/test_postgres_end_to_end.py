"""worker.py, swarm.py and the commands sharing a PostgreSQL queue, over real processes:
the same runs as on queue.json, read back through `swarm export`, which shows the
database's queue as a queue.json document."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from conftest import (
    ROOT,
    RunningProcess,
    child_env,
    lease_of_a_dead_worker,
    read_events,
    wait_until,
)

from swarm_runtime.contract import QueueDocument, validate_queue_contract
from swarm_runtime.queue.postgres import PostgresQueueStore
from swarm_runtime.store.database import Database
from swarm_runtime.store.state_files import Workspace

pytestmark = pytest.mark.slow


@pytest.fixture
def env(workspace: Workspace, database_url: str) -> dict[str, str]:
    return child_env(workspace, SWARM_DATABASE_URL=database_url)


@pytest.fixture
def api(spawn: Callable[..., RunningProcess], env: dict[str, str]) -> RunningProcess:
    return spawn(["swarm.py", "--port", "0"], env)


def swarm(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "worker.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def import_queue(database_url: str, tasks: list[dict[str, Any]], endpoint: str) -> None:
    store = PostgresQueueStore(Database.connect(database_url))
    try:
        document = {"api_endpoint": endpoint, "tasks": tasks}
        store.import_queue(QueueDocument.model_validate(document))
    finally:
        store.close()


def exported(env: dict[str, str]) -> dict[str, Any]:
    done = swarm(env, "export")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    assert validate_queue_contract(document) == []
    return document


def statuses(env: dict[str, str]) -> dict[str, str]:
    return {t["id"]: t["status"] for t in exported(env)["tasks"]}


def test_a_mixed_queue_runs_to_its_final_states(
    api: RunningProcess, env: dict[str, str], database_url: str, workspace: Workspace
) -> None:
    import_queue(
        database_url,
        [
            {"id": "echo", "command": "echo hello"},
            {"id": "ls", "command": "ls -la", "depends_on": ["echo"]},
            {"id": "broken", "command": "ls no-such-file"},
            {"id": "after-broken", "prompt": "summarize", "depends_on": ["broken"]},
            {"id": "haiku", "prompt": "Write a haiku about queues"},
            {"id": "ghost-dep", "prompt": "p", "depends_on": ["missing"]},
        ],
        str(api.url),
    )
    result = swarm(env, "--once")
    assert result.returncode == 0, result.stdout + result.stderr
    assert statuses(env) == {
        "echo": "approved",
        "ls": "approved",
        "broken": "failed",
        "after-broken": "failed",
        "haiku": "approved",
        "ghost-dep": "failed",
    }
    events = {(e["task_id"], e["status"]): e for e in read_events(workspace)}
    assert events[("after-broken", "failed")]["errors"] == "dependency 'broken' ended failed"
    assert not workspace.queue_path.exists()
    document = exported(env)
    assert sorted(document["completed"]) == ["echo", "haiku", "ls"]
    events = swarm(env, "export-events")
    assert events.returncode == 0, events.stderr
    assert events.stdout == workspace.log_path.read_text()  # every event, as the file has it


def test_a_crashed_workers_task_is_finished_by_the_next_worker(
    api: RunningProcess, env: dict[str, str], database_url: str, workspace: Workspace
) -> None:
    lease = lease_of_a_dead_worker()
    orphan = {
        "id": "orphan",
        "command": "echo again",
        "status": "in_progress",
        "attempts": 1,
        "lease": lease,
    }
    import_queue(database_url, [orphan], str(api.url))
    result = swarm(env, "--once")
    assert result.returncode == 0, result.stdout + result.stderr
    history = [e["status"] for e in read_events(workspace) if e["task_id"] == "orphan"]
    assert history == ["lease_expired", "in_progress", "completed", "pending_review", "approved"]
    task = exported(env)["tasks"][0]
    assert task["attempts"] == 2 and task["lease"] is None


def test_two_workers_never_run_the_same_task(
    api: RunningProcess, env: dict[str, str], database_url: str, workspace: Workspace
) -> None:
    tasks = [{"id": f"t{i}", "command": f"echo {i}"} for i in range(24)]
    import_queue(database_url, tasks, str(api.url))
    workers = [
        subprocess.Popen(
            [sys.executable, "worker.py", "--once", "--worker-id", f"w{i}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    starts = Counter(e["task_id"] for e in read_events(workspace) if e["status"] == "in_progress")
    assert len(starts) == 24 and set(starts.values()) == {1}
    assert set(statuses(env).values()) == {"approved"}


def workers_seen(env: dict[str, str]) -> list[str]:
    status = swarm(env, "status", "--json")
    return [worker["worker_id"] for worker in json.loads(status.stdout)["workers"]]


def test_an_idle_worker_wakes_on_new_work_long_before_its_poll_interval(
    spawn: Callable[..., RunningProcess],
    api: RunningProcess,
    env: dict[str, str],
    workspace: Workspace,
) -> None:
    slow_polling = env | {"SWARM_POLL_INTERVAL": "60"}
    spawn(["worker.py", "--worker-id", "idle"], slow_polling, wait_for_url=False)
    wait_until(lambda: workers_seen(env) == ["idle"], timeout=30, interval=0.2)
    assert not list(workspace.workers_dir.glob("*.json"))  # announced in the database
    time.sleep(1.0)  # the worker has claimed nothing and is waiting
    added = swarm(env, "add", "late", "echo late", "--mode", "local")
    assert added.returncode == 0, added.stderr
    started = time.monotonic()
    wait_until(lambda: statuses(env).get("late") == "approved", timeout=30, interval=0.1)
    assert time.monotonic() - started < 15
