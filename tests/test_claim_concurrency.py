"""Many claimers at once, on both stores: the rules a single claimer obeys hold when
eight processes claim together (on PostgreSQL, by row locks that skip each other's
rows). Each task runs once, after its dependencies, and a task that must run alone
never overlaps another; a reader catching up between the writes ends with the queue as
it is."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, child_env

from swarm_runtime.contract import Status
from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.queue.select import store_for
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace

Opener = Callable[[], TaskQueue]

ACTOR = str(ROOT / "tests" / "helpers" / "queue_actor.py")
CLAIMERS = 8
TASKS = 240


@pytest.fixture(params=["file", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("database_url") if request.param == "postgres" else None


@pytest.fixture
def open_store(workspace: Workspace, database_url: str | None) -> Iterator[Opener]:
    """Opens a view of the test's queue; each is closed at the end (an unclosed database
    pool is torn down by the garbage collector, from one of its own threads)."""
    settings = Settings(
        workspace=workspace.root, queue_retain=1_000_000, review=False, database_url=database_url
    )
    opened: list[TaskQueue] = []

    def open_one() -> TaskQueue:
        opened.append(store_for(settings, workspace))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


def mixed_tasks() -> list[dict[str, Any]]:
    """Mostly free tasks; every tenth waits on the two before it; every 40th runs alone."""
    tasks: list[dict[str, Any]] = []
    for index in range(TASKS):
        task: dict[str, Any] = {"id": f"t{index}", "prompt": "p"}
        if index % 10 == 9:
            task["depends_on"] = [f"t{index - 1}", f"t{index - 2}"]
        if index % 40 == 20:
            task["parallel_safe"] = False
        tasks.append(task)
    return tasks


def run_claimers(
    workspace: Workspace, url: str | None, tmp_path: Path
) -> dict[str, tuple[float, float]]:
    env = child_env(workspace, **({"SWARM_DATABASE_URL": url} if url else {}))
    outputs = [tmp_path / f"claimer{i}.txt" for i in range(CLAIMERS)]
    claimers = [
        subprocess.Popen(
            [sys.executable, ACTOR, str(workspace.root), "timed", f"c{i}", str(out)], env=env
        )
        for i, out in enumerate(outputs)
    ]
    assert [proc.wait(timeout=240) for proc in claimers] == [0] * CLAIMERS
    ran: dict[str, tuple[float, float]] = {}
    for out in outputs:
        for line in out.read_text().splitlines():
            task_id, start, end = line.split()
            assert task_id not in ran, f"{task_id} ran twice"
            ran[task_id] = (float(start), float(end))
    return ran


def test_eight_claimers_keep_every_rule(
    workspace: Workspace, database_url: str | None, tmp_path: Path, open_store: Opener
) -> None:
    store = open_store()
    store.add_many(mixed_tasks())
    reader = open_store()
    done = threading.Event()
    reads = []

    def read_while_they_write() -> None:
        while not done.is_set():
            reads.append(len(reader.load().completed))

    watcher = threading.Thread(target=read_while_they_write)
    watcher.start()
    try:
        ran = run_claimers(workspace, database_url, tmp_path)
    finally:
        done.set()
        watcher.join()
    assert sorted(ran) == sorted(f"t{i}" for i in range(TASKS))
    for task in mixed_tasks():
        for dep in task.get("depends_on", []):
            assert ran[dep][1] <= ran[task["id"]][0], f"{task['id']} started before {dep} ended"
        if task.get("parallel_safe") is False:
            start, end = ran[task["id"]]
            overlapping = [
                t for t, (s, e) in ran.items() if t != task["id"] and s < end and e > start
            ]
            assert overlapping == [], f"{task['id']} ran beside {overlapping}"
    fresh = open_store().load()
    assert {t.status for t in fresh.tasks} == {Status.COMPLETED}
    assert all(t.attempts == 1 for t in fresh.tasks)
    assert len(reads) > 1 and reads == sorted(reads)
    caught_up = reader.load()
    assert caught_up.model_dump() == fresh.model_dump()
