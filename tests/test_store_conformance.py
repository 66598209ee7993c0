"""One suite, two stores: every test runs against queue.json in a workspace and against a
real PostgreSQL database, and must see the same queue. What the stores share is the
`TaskQueue` interface and nothing else, so a difference here is a difference a worker,
the API or the panel would meet."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Clock, a_fresh_reader_sees_the_journaled_queue, child_env
from pydantic import ValidationError

from swarm_runtime.contract import (
    ExecutionRecord,
    ReviewRecord,
    Status,
    validate_queue_contract,
)
from swarm_runtime.errors import (
    DuplicateTaskError,
    InvalidTransition,
    LeaseLostError,
    QueueNotEmpty,
    UnknownTaskError,
)
from swarm_runtime.queue import store as queue_store
from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.queue.store import QueueStore, WorkerIdentity
from swarm_runtime.queue.transfer import export_queue, import_queue_file
from swarm_runtime.store.state_files import Workspace

ACTOR = str(ROOT / "tests" / "helpers" / "queue_actor.py")
ME = WorkerIdentity("w1")
OTHER = WorkerIdentity("w2", pid=ME.pid)
ELSEWHERE = WorkerIdentity("ghost", pid=ME.pid, host="elsewhere")


Opener = Callable[..., TaskQueue]


@pytest.fixture(params=["file", "journal", pytest.param("postgres", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest) -> str:
    """queue.json rewritten by each transaction; queue.json as a large queue keeps it,
    every transaction after the first appended to the journal and folded only when told;
    a PostgreSQL database."""
    return str(request.param)


@pytest.fixture
def open_store(
    backend: str,
    workspace: Workspace,
    clock: Clock,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Opener]:
    """Opens a store on the test's one queue, as another process would: each store opened
    is a separate view of the same queue.json or the same database."""
    opened: list[TaskQueue] = []
    url = request.getfixturevalue("database_url") if backend == "postgres" else None
    journaled: dict[str, Any] = {}
    if backend == "journal":
        monkeypatch.setattr(queue_store, "COMPACT_RATIO", 0)
        journaled = {"small_queue_bytes": 0, "fold_after_seconds": 3600.0}

    def open_one(**options: Any) -> TaskQueue:
        options.setdefault("clock", clock)
        store: TaskQueue
        if url is None:
            store = QueueStore(workspace, **journaled, **options)
        else:
            from swarm_runtime.queue.postgres import PostgresQueueStore
            from swarm_runtime.store.database import Database

            store = PostgresQueueStore(Database.connect(url), **options)
        opened.append(store)
        return store

    yield open_one
    if backend == "journal" and opened:
        a_fresh_reader_sees_the_journaled_queue(opened[0], workspace, clock)
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Opener) -> TaskQueue:
    return open_store()


def add_all(store: TaskQueue, *tasks: dict[str, Any]) -> None:
    for task in tasks:
        store.add(task)


def claim_id(store: TaskQueue, worker: WorkerIdentity = ME) -> str | None:
    task = store.claim(worker, lease_seconds=30).task
    return task.id if task else None


def executed() -> ExecutionRecord:
    return ExecutionRecord(attempt=1, status=Status.COMPLETED, result_summary="done")


# --- adding and reading -------------------------------------------------------------------


def test_a_task_round_trips_with_every_field_unknown_ones_kept(open_store: Opener) -> None:
    store = open_store()
    store.add({"id": "a", "prompt": "p", "owner": "ops", "labels": {"team": ["x", 1]}})
    task = open_store().load().find("a")
    assert task is not None
    assert task.model_dump(exclude_unset=True) == store.load().tasks[0].model_dump(
        exclude_unset=True
    )
    extra = task.model_extra or {}
    assert (extra["owner"], extra["labels"]) == ("ops", {"team": ["x", 1]})
    assert (task.type, task.depends_on, task.parallel_safe, task.status) == (
        "cycle",
        [],
        True,
        Status.PENDING,
    )


def test_a_duplicate_id_is_refused_and_a_batch_adds_all_or_nothing(store: TaskQueue) -> None:
    store.add({"id": "a", "prompt": "p"})
    with pytest.raises(DuplicateTaskError, match="'a' is already in the queue"):
        store.add({"id": "a", "prompt": "other"})
    with pytest.raises(DuplicateTaskError):
        store.add_many([{"id": "b", "prompt": "p"}, {"id": "b", "prompt": "p"}])
    assert [t.id for t in store.load().tasks] == ["a"]


@pytest.mark.parametrize(
    ("record", "error"),
    [
        ({"id": "a", "prompt": "p", "parallel_safe": "maybe"}, ValidationError),
        ({"id": "", "prompt": "p"}, ValidationError),
        ({"prompt": "no id"}, ValidationError),
        ({"id": "a", "prompt": "p", "depends_on": 7}, ValidationError),
    ],
)
def test_malformed_tasks_are_refused_and_leave_the_queue_as_it_was(
    store: TaskQueue, record: dict[str, Any], error: type[Exception]
) -> None:
    store.add({"id": "kept", "prompt": "p"})
    with pytest.raises(error):
        store.add(record)
    assert [t.id for t in store.load().tasks] == ["kept"]


def test_the_api_endpoint_is_shared_and_the_version_moves_with_each_change(
    open_store: Opener,
) -> None:
    store, other = open_store(), open_store()
    before = other.version()
    store.set_api_endpoint("http://127.0.0.1:9999")
    assert other.version() != before
    assert other.load().api_endpoint == "http://127.0.0.1:9999"
    seen = other.version()
    assert store.claim(ME, 30).task is None  # a claim that finds nothing changes nothing
    assert other.version() == seen


# --- claims, dependencies, parallel-unsafe tasks ----------------------------------------


def test_claims_in_queue_order_once_dependencies_are_satisfied(store: TaskQueue) -> None:
    add_all(store, {"id": "b", "prompt": "p", "depends_on": ["a"]}, {"id": "a", "prompt": "p"})
    assert claim_id(store) == "a"
    assert claim_id(store) is None
    store.finish("a", ME, Status.COMPLETED)
    assert claim_id(store) == "b"
    store.finish("b", ME, Status.COMPLETED)
    outcome = store.claim(ME, 30)
    assert outcome.task is None and outcome.drained
    assert store.load().completed == ["a", "b"]


@pytest.mark.parametrize("ending", [Status.FAILED, Status.SAFETY_BLOCKED])
def test_an_ending_that_is_not_success_fails_the_chain_naming_the_dependency(
    store: TaskQueue, ending: Status
) -> None:
    add_all(
        store,
        {"id": "a", "prompt": "p"},
        {"id": "b", "prompt": "p", "depends_on": ["a"]},
        {"id": "c", "prompt": "p", "depends_on": "b"},  # one id alone is a list of one
    )
    claim_id(store)
    store.finish("a", ME, ending)
    outcome = store.claim(ME, 30)
    assert outcome.task is None and outcome.drained
    reasons = {p.task_id: p.reason for p in outcome.propagated}
    assert reasons == {
        "b": f"dependency 'a' ended {ending.value}",
        "c": "dependency 'b' ended failed",
    }
    assert store.load().failed == ["a", "b", "c"]


def test_a_cancelled_dependency_fails_its_dependents(store: TaskQueue) -> None:
    add_all(store, {"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "depends_on": ["a"]})
    store.cancel("a")
    outcome = store.claim(ME, 30)
    assert {p.task_id: p.reason for p in outcome.propagated} == {
        "b": "dependency 'a' ended cancelled"
    }


def test_unknown_dependencies_self_references_and_cycles_fail(store: TaskQueue) -> None:
    add_all(
        store,
        {"id": "u", "prompt": "p", "depends_on": ["ghost"]},
        {"id": "s", "prompt": "p", "depends_on": ["s"]},
        {"id": "x", "prompt": "p", "depends_on": ["y"]},
        {"id": "y", "prompt": "p", "depends_on": ["x"]},
        {"id": "behind", "prompt": "p", "depends_on": ["x"]},
        {"id": "free", "prompt": "p"},
    )
    outcome = store.claim(ME, 30)
    reasons = {p.task_id: p.reason for p in outcome.propagated}
    assert reasons["u"] == "unknown dependency 'ghost': no task with that id exists"
    assert reasons["s"] == "task depends on itself ('s')"
    assert reasons["x"].startswith("dependency cycle") and reasons["y"] == reasons["x"]
    assert reasons["behind"] in (reasons["x"], "dependency 'x' ended failed")
    assert outcome.task is not None and outcome.task.id == "free"


def test_a_parallel_unsafe_task_runs_alone(open_store: Opener) -> None:
    first, second = open_store(), open_store()
    add_all(
        first,
        {"id": "a", "prompt": "p"},
        {"id": "solo", "prompt": "p", "parallel_safe": False},
        {"id": "c", "prompt": "p"},
    )
    assert claim_id(first) == "a"
    assert claim_id(second, OTHER) == "c"
    first.finish("a", ME, Status.COMPLETED)
    second.finish("c", OTHER, Status.COMPLETED)
    assert claim_id(second) == "solo"
    first.add({"id": "d", "prompt": "p"})
    assert claim_id(first, OTHER) is None
    second.finish("solo", ME, Status.COMPLETED)
    assert claim_id(first, OTHER) == "d"


def test_a_task_due_later_waits_for_its_time(store: TaskQueue, clock: Clock) -> None:
    add_all(store, {"id": "later", "prompt": "p", "not_before": clock.now + 60})
    assert claim_id(store) is None
    clock.now += 61
    assert claim_id(store) == "later"


# --- where a task may run ------------------------------------------------------------------

ON_A = WorkerIdentity("a1", pid=ME.pid, host="host-a")
ON_B = WorkerIdentity("b1", pid=ME.pid, host="host-b")
ON_B_WITH_GPU = WorkerIdentity("b2", pid=ME.pid, host="host-b", labels=frozenset({"gpu", "x"}))


def test_a_pinned_task_is_claimed_only_on_its_host_and_others_go_past_it(
    open_store: Opener,
) -> None:
    first, second = open_store(), open_store()
    add_all(
        first,
        {"id": "for-b", "prompt": "p", "host": "host-b"},
        {"id": "anywhere", "prompt": "p"},
        {"id": "also-for-b", "prompt": "p", "host": "host-b"},
    )
    assert claim_id(first, ON_A) == "anywhere"
    outcome = first.claim(ON_A, 30)
    assert outcome.task is None and outcome.drained  # nothing left that host-a may run
    assert claim_id(second, ON_B) == "for-b"
    assert claim_id(second, ON_B) == "also-for-b"


def test_a_task_needing_labels_waits_for_a_worker_serving_all_of_them(store: TaskQueue) -> None:
    add_all(
        store,
        {"id": "gpu", "prompt": "p", "worker_labels": "gpu, x"},
        {"id": "plain", "prompt": "p"},
    )
    assert store.load().tasks[0].worker_labels == ["gpu", "x"]
    assert claim_id(store, ON_B) == "plain"
    assert claim_id(store, ON_B) is None
    assert claim_id(store, ON_B_WITH_GPU) == "gpu"


def test_a_task_that_must_run_alone_elsewhere_does_not_hold_back_this_host(
    open_store: Opener,
) -> None:
    store = open_store()
    add_all(
        store,
        {"id": "solo-on-b", "prompt": "p", "parallel_safe": False, "host": "host-b"},
        {"id": "a", "prompt": "p"},
        {"id": "b", "prompt": "p"},
    )
    assert claim_id(store, ON_A) == "a"
    assert claim_id(open_store(), ON_A) == "b"
    assert claim_id(store, ON_B) is None  # it runs alone: not beside a and b
    store.finish("a", ON_A, Status.COMPLETED)
    store.finish("b", ON_A, Status.COMPLETED)
    assert claim_id(store, ON_B) == "solo-on-b"


def test_a_malformed_host_or_label_is_refused(store: TaskQueue) -> None:
    for bad in ({"host": "two words"}, {"worker_labels": ["ok", "-dash-first"]}):
        with pytest.raises(ValidationError):
            store.add({"id": "a", "prompt": "p", **bad})
    assert store.load().tasks == []


# --- leases -------------------------------------------------------------------------------


def test_an_expired_lease_is_reclaimed_once_and_its_holder_cannot_finish(
    open_store: Opener, clock: Clock
) -> None:
    store, rival = open_store(), open_store()
    store.add({"id": "a", "prompt": "p"})
    assert claim_id(store, ELSEWHERE) == "a"
    assert claim_id(rival) is None
    clock.now += 31
    outcome = rival.claim(ME, 30)
    assert outcome.task is not None and (outcome.task.id, outcome.task.attempts) == ("a", 2)
    assert [(r.task_id, r.reason) for r in outcome.reclaimed] == [("a", "lease expired")]
    assert outcome.reclaimed[0].previous["worker_id"] == "ghost"
    assert store.claim(OTHER, 30).reclaimed == []  # reclaimed once, by one claimer
    with pytest.raises(LeaseLostError):
        store.finish("a", ELSEWHERE, Status.COMPLETED)
    assert not store.heartbeat("a", ELSEWHERE, 30)


def test_a_heartbeat_keeps_the_lease_alive(open_store: Opener, clock: Clock) -> None:
    store, rival = open_store(), open_store()
    store.add({"id": "a", "prompt": "p"})
    claim_id(store, ELSEWHERE)
    for _ in range(5):
        clock.now += 20
        assert store.heartbeat("a", ELSEWHERE, 30)
    assert claim_id(rival) is None
    assert not rival.heartbeat("a", ME, 30)
    lease = rival.load().tasks[0].lease
    assert lease is not None and lease.expires_at == clock.now + 30


def test_a_dead_holder_on_this_host_is_reclaimed_at_once(store: TaskQueue) -> None:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    store.add({"id": "a", "prompt": "p"})
    assert claim_id(store, WorkerIdentity("dead", pid=int(child.stdout))) == "a"
    outcome = store.claim(ME, 30)
    assert outcome.task is not None and outcome.task.id == "a"
    assert outcome.reclaimed[0].reason == "lease holder process no longer exists"


def test_an_orphaned_review_is_resumed_without_a_new_attempt(
    open_store: Opener, clock: Clock
) -> None:
    store = open_store(review_enabled=True)
    store.add({"id": "a", "prompt": "p"})
    claim_id(store)
    store.record_execution("a", ME, executed())
    clock.now += 60
    claim = open_store(review_enabled=True).claim(OTHER, lease_seconds=30)
    assert [r.task_id for r in claim.reclaimed] == ["a"]
    assert claim.task is not None
    assert (claim.task.status, claim.task.attempts) == (Status.PENDING_REVIEW, 1)
    assert claim.task.execution is not None and claim.task.execution.result_summary == "done"


# --- plans and operator actions -----------------------------------------------------------


def test_a_plan_inserts_subtasks_before_the_parent_which_waits(open_store: Opener) -> None:
    store = open_store()
    add_all(store, {"id": "first", "prompt": "p"}, {"id": "p", "prompt": "big"})
    store.cancel("first")
    claim_id(store)
    store.plan(
        "p",
        ME,
        [{"id": "p__1", "prompt": "one"}, {"id": "p__2", "prompt": "two"}],
        {"depends_on": ["p__1", "p__2"], "phase4_planned": True},
    )
    store.add({"id": "after", "prompt": "p"})
    doc = open_store().load()
    assert [t.id for t in doc.tasks] == ["first", "p__1", "p__2", "p", "after"]
    parent = doc.find("p")
    assert parent is not None
    assert (parent.status, parent.attempts, parent.lease) == (Status.QUEUED, 0, None)
    assert [claim_id(store) for _ in range(3)] == ["p__1", "p__2", "after"]
    with pytest.raises(DuplicateTaskError):
        store.plan("p__1", ME, [{"id": "p", "prompt": "x"}], {})


def test_a_plan_by_a_worker_without_the_lease_is_refused(store: TaskQueue) -> None:
    store.add({"id": "p", "prompt": "big"})
    claim_id(store)
    with pytest.raises(LeaseLostError):
        store.plan("p", OTHER, [{"id": "s", "prompt": "x"}], {})
    with pytest.raises(TypeError, match="has no field 'colour'"):
        store.plan("p", ME, [{"id": "s", "prompt": "x", "colour": 1}], {})
    assert [t.id for t in store.load().tasks] == ["p"]


def test_requeue_and_cancel_refuse_the_wrong_status_and_an_unknown_id(store: TaskQueue) -> None:
    add_all(store, {"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p"})
    with pytest.raises(InvalidTransition, match="cannot requeue task 'a': it is pending"):
        store.requeue("a")
    store.cancel("a")
    doc = store.load()
    assert doc.find("a").status == Status.CANCELLED and doc.failed == ["a"]  # type: ignore[union-attr]
    with pytest.raises(InvalidTransition, match="cannot cancel task 'a': it is cancelled"):
        store.cancel("a")
    with pytest.raises(UnknownTaskError):
        store.cancel("nope")
    with pytest.raises(UnknownTaskError):
        store.requeue("nope")


def test_requeue_failed_takes_every_failed_task_and_nothing_else(store: TaskQueue) -> None:
    add_all(store, *({"id": i, "prompt": "p"} for i in ("f1", "f2", "ok", "blocked")))
    for task_id, status in (
        ("f1", Status.FAILED),
        ("f2", Status.FAILED),
        ("ok", Status.COMPLETED),
        ("blocked", Status.SAFETY_BLOCKED),
    ):
        assert claim_id(store) == task_id
        store.finish(task_id, ME, status)
    requeued = store.requeue_failed()
    assert sorted(t.id for t in requeued) == ["f1", "f2"]
    doc = store.load()
    assert doc.failed == ["blocked"] and doc.completed == ["ok"]
    assert [t.status for t in doc.tasks] == [
        Status.REQUEUE,
        Status.REQUEUE,
        Status.COMPLETED,
        Status.SAFETY_BLOCKED,
    ]
    assert [claim_id(store) for _ in range(2)] == ["f1", "f2"]


def test_a_parked_review_and_its_dependents_wait_for_an_operator(open_store: Opener) -> None:
    store = open_store(review_enabled=True)
    add_all(store, {"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "depends_on": ["a"]})
    claim_id(store)
    store.record_execution("a", ME, executed())
    store.finish("a", ME, Status.PENDING_REVIEW, review=ReviewRecord(error="critic down"))
    claim = store.claim(ME, lease_seconds=30)
    assert claim.task is None and claim.drained
    store.requeue("a")
    task = store.load().find("a")
    assert task is not None
    assert (task.status, task.review, task.last_error) == (Status.REQUEUE, None, None)
    assert claim_id(store) == "a"


def test_finished_tasks_past_retention_leave_the_queue_but_keep_their_ids(
    open_store: Opener,
) -> None:
    store = open_store(retain=10)
    for index in range(30):
        store.add({"id": f"t{index}", "prompt": "p"})
        claim_id(store)
        store.finish(f"t{index}", ME, Status.COMPLETED)
    doc = open_store(retain=10).load()
    assert len(doc.tasks) <= 11 and len(doc.completed) == 30
    store.add({"id": "late", "prompt": "p", "depends_on": ["t0"]})
    assert claim_id(store) == "late"
    with pytest.raises(DuplicateTaskError):
        store.add({"id": "t0", "prompt": "again"})


# --- concurrency --------------------------------------------------------------------------


def test_concurrent_claimers_in_threads_never_claim_a_task_twice(open_store: Opener) -> None:
    open_store().add_many([{"id": f"t{i}", "prompt": "p"} for i in range(40)])
    stores = [open_store(clock=None) for _ in range(4)]
    claimed: list[str] = []
    guard = threading.Lock()

    def drain(store: TaskQueue, name: str) -> None:
        me = WorkerIdentity(name)
        while (task := store.claim(me, 60).task) is not None:
            with guard:
                claimed.append(task.id)
            store.finish(task.id, me, Status.COMPLETED)

    threads = [threading.Thread(target=drain, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(claimed) == sorted(f"t{i}" for i in range(40))
    assert len(stores[0].load().completed) == 40


@pytest.mark.slow
def test_concurrent_processes_lose_no_task_and_run_none_twice(
    backend: str, workspace: Workspace, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    extra = (
        {"SWARM_DATABASE_URL": request.getfixturevalue("database_url")}
        if backend == "postgres"
        else {}
    )
    env = child_env(workspace, **extra)
    actor = [sys.executable, ACTOR, str(workspace.root)]
    adders = [subprocess.Popen([*actor, "add", f"p{i}", "20"], env=env) for i in range(2)]
    assert [proc.wait(timeout=60) for proc in adders] == [0, 0]
    outputs = [tmp_path / f"drain{i}.txt" for i in range(3)]
    drainers = [
        subprocess.Popen([*actor, "drain", f"d{i}", str(out)], env=env)
        for i, out in enumerate(outputs)
    ]
    assert [proc.wait(timeout=120) for proc in drainers] == [0, 0, 0]
    claimed = [line for out in outputs for line in out.read_text().split()]
    expected = {f"p{i}-{n}" for i in range(2) for n in range(20)}
    assert sorted(claimed) == sorted(expected)


# --- the contract, visible ----------------------------------------------------------------


def test_a_queue_json_moves_in_and_out_unchanged(
    open_store: Opener, workspace: Workspace, tmp_path: Path, clock: Clock
) -> None:
    """Built on queue.json, exported, imported into the store under test, exported again:
    the same bytes, and a valid queue.json."""
    elsewhere = Workspace(tmp_path / "source")
    elsewhere.ensure_layout()
    source = QueueStore(elsewhere, clock=clock)
    source.add_many(
        [
            {"id": "done", "prompt": "p", "owner": "ops"},
            {"id": "held", "prompt": "p", "depends_on": ["done"]},
            {"id": "dead", "prompt": "p"},
            {"id": "waiting", "prompt": "p", "labels": ["a", "b"]},
        ]
    )
    source.set_api_endpoint("http://127.0.0.1:8555")
    for task_id, status in (("done", Status.COMPLETED), ("held", None), ("dead", Status.FAILED)):
        assert claim_id(source) == task_id
        if status is not None:
            source.finish(task_id, ME, status)
    exported = export_queue(source, review_enabled=False)
    assert validate_queue_contract(json.loads(exported)) == []
    path = tmp_path / "queue.json"
    path.write_bytes(exported)
    store = open_store()
    assert import_queue_file(store, path) == 4
    assert export_queue(open_store(), review_enabled=False) == exported
    with pytest.raises(QueueNotEmpty):
        import_queue_file(store, path)
    assert claim_id(store) == "waiting"


# --- waking idle workers ------------------------------------------------------------------


def test_an_idle_worker_wakes_when_work_is_added_not_at_the_end_of_its_wait(
    open_store: Opener,
) -> None:
    waiting, adder = open_store(clock=None), open_store(clock=None)
    stop = threading.Event()
    waiting.wait_for_change(0.05, stop)  # listening from here on
    woke: list[float] = []

    def wait() -> None:
        started = time.monotonic()
        waiting.wait_for_change(20.0, stop)
        woke.append(time.monotonic() - started)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.3)
    adder.add({"id": "new", "prompt": "p"})
    thread.join(timeout=20)
    assert woke and 0.25 < woke[0] < 2.0
    assert claim_id(waiting) == "new"


def test_a_stop_ends_the_wait_at_once(store: TaskQueue) -> None:
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    store.wait_for_change(20.0, stop)
    assert time.monotonic() - started < 1.0


def test_a_store_following_changes_sees_the_queue_a_fresh_reader_sees(
    open_store: Opener,
) -> None:
    """Each store catches up on what the others wrote (the journal, or the rows changed
    since): after every kind of change it must see exactly what a new store reads whole."""
    writer, follower = open_store(retain=4), open_store(retain=4)

    def same() -> None:
        followed = follower.load().model_dump()
        assert followed == open_store(retain=4).load().model_dump()
        assert not follower.heartbeat("none", OTHER, 30)  # a transaction catches up too
        assert follower.load().model_dump() == open_store(retain=4).load().model_dump()

    writer.add_many([{"id": f"t{i}", "prompt": "p", "extra": i} for i in range(6)])
    same()
    assert claim_id(writer) == "t0"
    writer.plan("t0", ME, [{"id": "s1", "prompt": "a"}, {"id": "s2", "prompt": "b"}], {})
    same()
    for _ in range(8):
        task = writer.claim(ME, 30).task
        if task is not None:
            writer.finish(task.id, ME, Status.FAILED if task.id == "t3" else Status.COMPLETED)
    same()
    writer.requeue_failed()
    writer.set_api_endpoint("http://127.0.0.1:9")
    same()


def test_work_added_between_an_empty_claim_and_the_wait_wakes_it(open_store: Opener) -> None:
    """The window a worker lives in: its claim found nothing, and before it starts to
    wait another process adds a task. The wait must end at once, not sleep its interval."""
    worker, adder = open_store(), open_store()
    assert worker.claim(ME, 30).task is None
    adder.add({"id": "late", "prompt": "p"})
    started = time.monotonic()
    worker.wait_for_change(10.0, threading.Event())
    assert time.monotonic() - started < 5.0
    assert worker.claim(ME, 30).task is not None
