from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Clock, a_fresh_reader_sees_the_journaled_queue, wait_until
from pydantic import ValidationError

from swarm_runtime.contract import ExecutionRecord, Status, validate_queue_contract
from swarm_runtime.errors import (
    DuplicateTaskError,
    InvalidTransition,
    QueueFileError,
)
from swarm_runtime.queue import store as queue_store
from swarm_runtime.queue.store import QueueStore, WorkerIdentity
from swarm_runtime.store.state_files import Workspace

ACTOR = str(ROOT / "tests" / "helpers" / "queue_actor.py")


@pytest.fixture(params=["rewrite", "journal"])
def store(
    workspace: Workspace, clock: Clock, request: pytest.FixtureRequest
) -> Iterator[QueueStore]:
    """Every store test runs twice: as a small queue (queue.json rewritten by each
    transaction) and as a large one whose journal is never folded on its own. Then a
    new store, reading queue.json and replaying the journal as another process would,
    must see exactly the queue the store has in memory, before and after a fold."""
    if request.param == "rewrite":
        yield QueueStore(workspace, retain=1000, clock=clock)
        return
    store = request.getfixturevalue("large")
    yield store
    a_fresh_reader_sees_the_journaled_queue(store, workspace, clock)


ME = WorkerIdentity("w1")
OTHER = WorkerIdentity("w2", pid=ME.pid)


def add_all(store: QueueStore, *tasks: dict) -> None:
    for task in tasks:
        store.add(task)


def claim_id(store: QueueStore, worker: WorkerIdentity = ME) -> str | None:
    task = store.claim(worker, lease_seconds=30).task
    return task.id if task else None


def test_added_task_is_normalized_and_keeps_unknown_fields(store: QueueStore, workspace) -> None:
    store.add({"id": "a", "prompt": "p", "owner": "ops"})
    raw = json.loads(workspace.queue_path.read_text())["tasks"][0]
    assert raw["owner"] == "ops"
    assert (raw["type"], raw["depends_on"], raw["parallel_safe"], raw["status"]) == (
        "cycle",
        [],
        True,
        "pending",
    )


def test_status_and_lists_track_the_lifecycle(store: QueueStore) -> None:
    add_all(store, {"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p"})
    claim_id(store)
    assert store.load().find("a").status == Status.IN_PROGRESS
    store.finish("a", ME, Status.COMPLETED)
    claim_id(store)
    store.finish("b", ME, Status.SAFETY_BLOCKED, last_error="blocked")
    doc = store.load()
    assert (doc.completed, doc.failed) == (["a"], ["b"])
    assert doc.find("b").last_error == "blocked"


def test_unknown_dependency_and_cycles_fail_instead_of_waiting(store: QueueStore) -> None:
    add_all(
        store,
        {"id": "u", "prompt": "p", "depends_on": ["ghost"]},
        {"id": "x", "prompt": "p", "depends_on": ["y"]},
        {"id": "y", "prompt": "p", "depends_on": ["x"]},
    )
    outcome = store.claim(ME, 30)
    reasons = {p.task_id: p.reason for p in outcome.propagated}
    assert "unknown dependency 'ghost'" in reasons["u"]
    assert reasons["x"].startswith("dependency cycle") and "y" in reasons
    assert outcome.drained


class LockWitness(Clock):
    """A clock that notes each reading taken while nobody holds `lock_path`."""

    def __init__(self, lock_path: str):
        super().__init__()
        self.lock_path = lock_path
        self.read_unlocked = 0

    def __call__(self) -> float:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.read_unlocked += 1
        except BlockingIOError:
            pass
        finally:
            os.close(fd)  # releases the probe's flock, if it took one
        return self.now


def test_a_renewal_counts_its_lease_from_when_it_holds_the_lock(workspace: Workspace) -> None:
    """A renewal that waited for the lock must still grant a whole lease, so the clock is
    read inside the transaction, never before it."""
    store = QueueStore(workspace, retain=1000)
    witness = LockWitness(f"{store.path}.lock")
    store.add({"id": "a", "prompt": "p"})
    claim_id(store)
    store = QueueStore(workspace, retain=1000, clock=witness)
    assert store.heartbeat("a", ME, 30)
    assert witness.read_unlocked == 0
    assert store.load().find("a").lease.expires_at == witness.now + 30


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"version": "1.1",\n "tasks": [\n', "invalid JSON at line 3"),
        (
            '{"version": "1", "api_endpoint": "x", "tasks": [{"id": "a"}, {"id": "a"}],'
            ' "completed": [], "failed": []}',
            "duplicates the id 'a'",
        ),
        (
            '{"version": "1", "api_endpoint": "x",'
            ' "tasks": [{"id": "a", "parallel_safe": "maybe"}], "completed": [], "failed": []}',
            "parallel_safe",
        ),
        ("[]", "queue must be a JSON object"),
    ],
)
def test_a_malformed_queue_is_reported_and_never_overwritten(
    store: QueueStore, workspace: Workspace, content: str, expected: str
) -> None:
    workspace.queue_path.write_text(content)
    with pytest.raises(QueueFileError, match=expected) as caught:
        store.claim(ME, 30)
    assert str(workspace.queue_path) in str(caught.value)
    with pytest.raises(QueueFileError):
        store.add({"id": "b", "prompt": "p"})
    assert workspace.queue_path.read_text() == content


def test_finished_tasks_past_retention_move_to_the_archive(workspace: Workspace) -> None:
    store = QueueStore(workspace, retain=10)
    for index in range(40):
        store.add({"id": f"t{index}", "prompt": "p"})
        claim_id(store)
        store.finish(f"t{index}", ME, Status.COMPLETED)
    doc = store.load()
    assert len(doc.tasks) <= 11
    assert len(doc.completed) == 40
    archived = [
        json.loads(line)["id"] for line in workspace.queue_archive_path.read_text().splitlines()
    ]
    assert sorted(archived + [t.id for t in doc.tasks]) == sorted(f"t{i}" for i in range(40))
    store.add({"id": "late", "prompt": "p", "depends_on": ["t0"]})  # archived dependency
    assert claim_id(store) == "late"
    with pytest.raises(DuplicateTaskError):
        store.add({"id": "t0", "prompt": "again"})


def test_a_writer_killed_mid_write_leaves_a_valid_file(workspace: Workspace) -> None:
    """Regression guard for truncate-then-write: SIGKILL at arbitrary instants."""
    for round_number in range(8):
        proc = subprocess.Popen(
            [sys.executable, ACTOR, str(workspace.root), "churn"], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        before = workspace.queue_path.stat().st_mtime_ns if workspace.queue_path.exists() else 0
        wait_until(
            lambda b=before: (
                workspace.queue_path.exists() and workspace.queue_path.stat().st_mtime_ns != b
            ),
            timeout=10,
            interval=0.001,
        )
        time.sleep(random.uniform(0, 0.03))  # fault injection: kill at an arbitrary instant
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        document = json.loads(workspace.queue_path.read_text())
        assert validate_queue_contract(document) == [], f"round {round_number}"
        workspace.queue_path.unlink() if round_number % 2 else None
    leftovers = [p for p in workspace.root.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) <= 8  # a killed writer may leave its temp file, never a torn queue


def test_concurrent_processes_lose_no_task_and_run_none_twice(
    workspace: Workspace, tmp_path: Path
) -> None:
    adders = [
        subprocess.Popen([sys.executable, ACTOR, str(workspace.root), "add", f"p{i}", "40"])
        for i in range(3)
    ]
    for proc in adders:
        assert proc.wait(timeout=60) == 0
    outputs = [tmp_path / f"drain{i}.txt" for i in range(3)]
    drainers = [
        subprocess.Popen([sys.executable, ACTOR, str(workspace.root), "drain", f"d{i}", str(out)])
        for i, out in enumerate(outputs)
    ]
    for proc in drainers:
        assert proc.wait(timeout=120) == 0
    claimed = [line for out in outputs for line in out.read_text().split()]
    expected = {f"p{i}-{n}" for i in range(3) for n in range(40)}
    assert len(claimed) == len(expected) == len(set(claimed))
    assert set(claimed) == expected
    doc = QueueStore(workspace).load()
    assert all(t.status == Status.COMPLETED for t in doc.tasks)
    assert sorted(doc.completed) == sorted(expected)


def executed(attempt: int = 1) -> ExecutionRecord:
    return ExecutionRecord(attempt=attempt, status=Status.COMPLETED, result_summary="done")


# --- the journal of a large queue -------------------------------------------------------


@pytest.fixture
def large(workspace: Workspace, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> QueueStore:
    """A store that journals every transaction after the first, and folds only when told."""
    monkeypatch.setattr(queue_store, "COMPACT_RATIO", 0)
    return QueueStore(workspace, clock=clock, small_queue_bytes=0, fold_after_seconds=3600.0)


def on_disk_ids(workspace: Workspace) -> list[str]:
    return [task["id"] for task in json.loads(workspace.queue_path.read_text())["tasks"]]


def test_a_large_queue_appends_and_queue_json_catches_up_once_the_journal_is_old(
    large: QueueStore, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_all(large, {"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p"})
    assert on_disk_ids(workspace) == ["a"]  # the second add only reached the journal
    assert len(workspace.queue_journal_path.read_text().splitlines()) == 2
    assert [t.id for t in QueueStore(workspace).load().tasks] == ["a", "b"]
    assert claim_id(large) == "a"
    large.fold_after_seconds = 0.0
    assert claim_id(large) == "b"  # this transaction finds the journal old enough to fold
    assert on_disk_ids(workspace) == ["a", "b"] and not workspace.queue_journal_path.exists()
    statuses = {t["id"]: t["status"] for t in json.loads(workspace.queue_path.read_text())["tasks"]}
    assert statuses == {"a": "in_progress", "b": "in_progress"}


def test_two_processes_share_a_journaled_queue_through_folds(
    large: QueueStore, workspace: Workspace, clock: Clock
) -> None:
    other = QueueStore(workspace, clock=clock, small_queue_bytes=0, fold_after_seconds=3600.0)
    add_all(large, *({"id": f"t{n}", "prompt": "p"} for n in range(4)))
    assert claim_id(other, OTHER) == "t0"
    assert claim_id(large) == "t1"  # sees the other's claim in the journal
    other.finish("t0", OTHER, Status.COMPLETED)
    large.flush()  # replaces queue.json and drops the journal under the other's feet
    assert claim_id(other, OTHER) == "t2"
    other.add({"id": "t4", "prompt": "p", "depends_on": ["t0"]})
    assert [claim_id(large) for _ in range(3)] == ["t3", "t4", None]
    assert large.load().model_dump() == other.load().model_dump()
    assert large.load().completed == ["t0"]


def lock_is_held(workspace: Workspace) -> bool:
    fd = os.open(f"{workspace.queue_path}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_a_writer_reads_the_others_records_before_it_takes_the_lock(
    large: QueueStore, workspace: Workspace, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What other writers committed is read without the lock; under it only what they
    appended meanwhile is left, so many workers do not queue up behind each other's reads."""
    other = QueueStore(workspace, clock=clock, small_queue_bytes=0, fold_after_seconds=3600.0)
    add_all(large, *({"id": f"t{n}", "prompt": "p"} for n in range(4)))
    assert claim_id(large) == "t0"
    assert [claim_id(other, OTHER) for _ in range(2)] == ["t1", "t2"]
    reads: list[tuple[bool, int]] = []
    journal = large._writer.journal
    read_new = journal.read_new

    def watched(snapshot: Any) -> Any:
        restarted, records = read_new(snapshot)
        reads.append((lock_is_held(workspace), len(records)))
        return restarted, records

    monkeypatch.setattr(journal, "read_new", watched)
    assert claim_id(large) == "t3"
    assert reads == [(False, 2), (True, 0)]


def test_a_malformed_journal_line_is_named_and_left_untouched(
    large: QueueStore, workspace: Workspace
) -> None:
    add_all(large, {"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p"})
    with workspace.queue_journal_path.open("a") as journal:
        journal.write('{"at": 1, "tasks": [{"id": "c", "status": "sleeping"}]}\n')
    broken = workspace.queue_journal_path.read_bytes()
    for attempt in (lambda: QueueStore(workspace).load(), lambda: large.claim(ME, 30)):
        with pytest.raises(QueueFileError) as caught:
            attempt()
        message = str(caught.value)
        assert str(workspace.queue_journal_path) in message and "line 3" in message
        assert "status" in message
    assert workspace.queue_journal_path.read_bytes() == broken


def test_a_hand_edit_of_queue_json_overrules_what_the_journal_had_not_folded(
    large: QueueStore, workspace: Workspace
) -> None:
    add_all(large, {"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p"})
    edited = {
        "version": "1.1",
        "api_endpoint": "http://127.0.0.1:1",
        "completed": [],
        "failed": [],
        "tasks": [{"id": "x", "prompt": "p"}],
    }
    workspace.queue_path.write_text(json.dumps(edited))
    assert [t.id for t in large.load().tasks] == ["x"]
    large.add({"id": "c", "prompt": "p"})
    assert [t.id for t in QueueStore(workspace).load().tasks] == ["x", "c"]
    workspace.queue_path.unlink()  # starting over empties the queue, journal or not
    assert QueueStore(workspace).load().tasks == []


# --- the reference's queue.json, as it is -----------------------------------------------

REFERENCE_EMPTY_QUEUE = {"version": "1.0", "api_endpoint": "http://127.0.0.1:8420", "tasks": []}


def test_the_references_empty_queue_is_used_as_it_is(
    store: QueueStore, workspace: Workspace
) -> None:
    workspace.queue_path.write_text(json.dumps(REFERENCE_EMPTY_QUEUE))
    assert store.load().tasks == []
    assert claim_id(store) is None
    store.add({"id": "t1", "instruction": "Say hello"})
    assert claim_id(store) == "t1"
    store.flush()
    written = json.loads(workspace.queue_path.read_text())
    assert (written["version"], written["completed"], written["failed"]) == ("1.0", [], [])


@pytest.mark.parametrize("missing", ["version", "api_endpoint", "completed", "failed"])
def test_a_missing_top_level_key_takes_its_default(
    store: QueueStore, workspace: Workspace, missing: str
) -> None:
    document = {
        "version": "1.0",
        "api_endpoint": "http://127.0.0.1:1",
        "tasks": [{"id": "a", "prompt": "p"}],
        "completed": ["old"],
        "failed": [],
    }
    del document[missing]
    workspace.queue_path.write_text(json.dumps(document))
    doc = store.load()
    defaults = {
        "version": "1.1",
        "api_endpoint": "http://127.0.0.1:8420",
        "completed": [],
        "failed": [],
    }
    assert getattr(doc, missing) == defaults[missing]
    assert claim_id(store) == "a"


def test_a_task_in_the_references_spelling_runs_and_keeps_its_spelling(
    store: QueueStore, workspace: Workspace
) -> None:
    tasks = [{"id": "t1", "instruction": "Say hello"}, {"id": "t2", "shell": "echo hi"}]
    workspace.queue_path.write_text(json.dumps({**REFERENCE_EMPTY_QUEUE, "tasks": tasks}))
    first = store.claim(ME, 30).task
    assert (first.prompt, first.effective_mode.value) == ("Say hello", "llm")
    second = store.claim(ME, 30).task
    assert (second.command, second.effective_mode.value) == ("echo hi", "local")
    store.flush()
    written = {t["id"]: t for t in json.loads(workspace.queue_path.read_text())["tasks"]}
    assert "prompt" not in written["t1"] and written["t1"]["instruction"] == "Say hello"
    assert "command" not in written["t2"] and written["t2"]["shell"] == "echo hi"
    assert QueueStore(workspace).load().find("t1").prompt == "Say hello"


# --- our own changes are checked ----------------------------------------------------------


def running(store: QueueStore) -> str:
    store.add({"id": "a", "prompt": "p"})
    return claim_id(store) or ""


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda s: s.finish("a", ME, Status.FAILED, last_eror="typo"), "no field 'last_eror'"),
        (lambda s: s.finish("a", ME, Status.COMPLETED, lease=None, leese=None), "'leese'"),
        (lambda s: s.record_execution("a", ME, executed(), reveiw=None), "'reveiw'"),
        (lambda s: s.plan("a", ME, [{"id": "s1", "promt": "x"}], {}), "'promt'"),
        (lambda s: s.plan("a", ME, [], {"phase4_plannned": True}), "'phase4_plannned'"),
    ],
)
def test_a_misspelt_field_is_an_error_and_writes_nothing(
    store: QueueStore, workspace: Workspace, change: Any, error: str
) -> None:
    running(store)
    store.flush()
    before = workspace.queue_path.read_bytes()
    with pytest.raises(TypeError, match=error):
        change(store)
    assert workspace.queue_path.read_bytes() == before
    assert store.load().find("a").status == Status.IN_PROGRESS


def test_a_value_of_the_wrong_type_is_an_error_and_writes_nothing(
    store: QueueStore, workspace: Workspace
) -> None:
    running(store)
    store.flush()
    before = workspace.queue_path.read_bytes()
    with pytest.raises(ValidationError, match="not_before"):
        store.finish("a", ME, Status.REQUEUE, not_before="soon")
    assert workspace.queue_path.read_bytes() == before


@pytest.mark.parametrize("status", [Status.APPROVED, Status.REQUEUE, Status.CANCELLED])
def test_a_status_the_table_does_not_allow_is_refused(
    store: QueueStore, workspace: Workspace, status: Status
) -> None:
    running(store)
    with pytest.raises(
        InvalidTransition, match=f"set status {status} on task 'a': it is in_progress"
    ):
        store.finish("a", ME, status)
    assert store.load().find("a").status == Status.IN_PROGRESS


def test_a_claim_ahead_leaves_one_runnable_task_for_each_other_worker_at_work(
    store: QueueStore,
) -> None:
    """`ahead`: the worker has a task in flight. Its step still commits when the claim
    takes nothing, and a claim with nothing in flight is never held back."""
    add_all(store, *({"id": task_id, "prompt": "p"} for task_id in "abcd"))
    assert claim_id(store, ME) == "a" and claim_id(store, OTHER) == "b"
    record = ExecutionRecord(attempt=1, status=Status.COMPLETED)
    recorded, claim = store.record_execution_and_claim("a", ME, record, 30, ahead=True)
    assert recorded.status == Status.PENDING_REVIEW
    assert claim.task is not None and claim.task.id == "c"  # d is left for OTHER
    finished, claim = store.finish_and_claim("a", ME, Status.APPROVED, 30, ahead=True)
    assert finished.status == Status.APPROVED and claim.task is None and not claim.drained
    assert store.load().find("d").status == Status.PENDING
    _, claim = store.finish_and_claim("c", ME, Status.COMPLETED, 30)
    assert claim.task is not None and claim.task.id == "d"
