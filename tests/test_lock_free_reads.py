"""Reads never take the queue's lock: a process that holds it (or a flood of readers) cannot
make /status or the panel wait, and a read that races a fold still returns a queue that
existed. Guards against the 30 s lock timeouts a /status flood once caused in writers."""

from __future__ import annotations

import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
import requests
from conftest import RunningProcess, child_env

from swarm_runtime.contract import DEFAULT_PANEL_PORT, QueueJournalRecord, Status
from swarm_runtime.panel.app import create_app
from swarm_runtime.queue.journal import Version
from swarm_runtime.queue.store import QueueStore, WorkerIdentity
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace

T = TypeVar("T")
ME = WorkerIdentity("reader-test")
PANEL = f"http://127.0.0.1:{DEFAULT_PANEL_PORT}"
TASKS = 40
ANSWER_SECONDS = 2.0
HOLDER = """
import sys
from swarm_runtime.store.state_files import Workspace
workspace = Workspace(sys.argv[1])
with workspace.lock(workspace.queue_path):
    print("held", flush=True)
    sys.stdin.readline()
"""


class LockHolder:
    """A process holding queue.json's lock until told to let go (or killed)."""

    def __init__(self, workspace: Workspace):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(workspace.root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 10.0)
        assert ready and self.proc.stdout.readline().strip() == "held"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def journaled_queue(workspace: Workspace) -> QueueStore:
    """Many tasks in queue.json and one claim in the journal, so reads use both files."""
    store = QueueStore(workspace, small_queue_bytes=0)
    store.add_many([{"id": f"t{n}", "prompt": "p"} for n in range(TASKS)])
    claimed = store.claim(ME, 300).task
    assert claimed is not None and claimed.id == "t0"
    assert workspace.queue_journal_path.exists()
    return store


def refuse_locks(monkeypatch: pytest.MonkeyPatch, workspace: Workspace) -> None:
    def lock(path: object) -> None:
        raise AssertionError(f"a read took the lock of {path}")

    monkeypatch.setattr(workspace, "lock", lock)


def test_a_read_never_takes_the_queue_lock(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    journaled_queue(workspace)
    reader = QueueStore(workspace)
    refuse_locks(monkeypatch, workspace)
    doc = reader.load()
    assert len(doc.tasks) == TASKS
    assert doc.find("t0").status == Status.IN_PROGRESS
    assert reader.version()


def test_a_read_that_races_a_fold_reads_the_folded_queue(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """queue.json is read, then another process folds the journal (replacing queue.json and
    removing the journal) before the journal is read: the claim must not vanish."""
    writer = journaled_queue(workspace)
    reader = QueueStore(workspace)
    journal = reader._reader.journal
    read_new = journal.read_new
    folds: list[None] = []

    def fold_first(snapshot: Version) -> tuple[bool, list[QueueJournalRecord]]:
        if not folds:
            folds.append(None)
            writer.flush()
        return read_new(snapshot)

    monkeypatch.setattr(journal, "read_new", fold_first)
    assert reader.load().find("t0").status == Status.IN_PROGRESS
    assert folds and not workspace.queue_journal_path.exists()


def test_reads_racing_a_folding_writer_always_see_a_queue_that_existed(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every claim folds at once, so reads keep meeting replaced files; the tasks are claimed
    in order, so any queue that existed shows a run of claimed tasks from t0."""
    writer = journaled_queue(workspace)
    writer.fold_after_seconds = 0.0
    reader = QueueStore(workspace)
    done = threading.Event()

    def claim_all() -> None:
        try:
            while writer.claim(ME, 300).task is not None:
                pass
        finally:
            done.set()

    threading.Thread(target=claim_all, daemon=True).start()
    deadline = time.monotonic() + 30.0
    reads = 0
    while not done.is_set() or reads == 0:
        assert time.monotonic() < deadline
        statuses = [t.status for t in reader.load().tasks]
        claimed = statuses.count(Status.IN_PROGRESS)
        assert statuses[:claimed] == [Status.IN_PROGRESS] * claimed
        assert len(statuses) == TASKS
        reads += 1
    assert [t.status for t in reader.load().tasks] == [Status.IN_PROGRESS] * TASKS


def within_deadline(get: Callable[[], T]) -> T:
    started = time.monotonic()
    answer = get()
    assert time.monotonic() - started < ANSWER_SECONDS
    return answer


def test_status_answers_while_another_process_holds_the_queue_lock(
    workspace: Workspace, spawn: Callable[..., RunningProcess]
) -> None:
    journaled_queue(workspace)
    api = spawn(["swarm.py", "--port", "0"], child_env(workspace))
    holder = LockHolder(workspace)
    try:
        reply = requests.get(f"{api.url}/status", timeout=ANSWER_SECONDS)
    finally:
        holder.close()
    assert reply.status_code == 200
    body = reply.json()
    assert body["tasks"] == TASKS
    assert body["by_status"] == {"in_progress": 1, "pending": TASKS - 1}


def test_the_panel_answers_while_another_process_holds_the_queue_lock(
    workspace: Workspace, settings: Settings
) -> None:
    journaled_queue(workspace)
    app = create_app(settings)
    holder = LockHolder(workspace)
    try:
        client = app.test_client()
        summary = within_deadline(lambda: client.get("/api/summary", base_url=PANEL))
        table = within_deadline(lambda: client.get("/api/tasks?per_page=100", base_url=PANEL))
    finally:
        holder.close()
        app.extensions["panel"].close()
    assert summary.status_code == 200 and table.status_code == 200
    by_status = {"in_progress": 1, "pending": TASKS - 1}
    assert summary.get_json()["queue"]["by_status"] == by_status
    assert summary.get_json()["queue"]["total"] == TASKS
    assert table.get_json()["counts"] == by_status
    assert len(table.get_json()["tasks"]) == TASKS
