"""Events committed with their transition on the file store: one journal append holds
both, the log gets the lines after it, and a log that lacks a committed record's lines
(its writer died in between, or could not write them) gets exactly what it lacks."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import read_events, wait_until
from test_worker_in_process import Harness, completed, make_harness

from swarm_runtime.contract import ExecutionRecord, Status, Verdict
from swarm_runtime.errors import LeaseLostError
from swarm_runtime.phases.critic import Review
from swarm_runtime.phases.quality_gate import GATE_APPLIER
from swarm_runtime.phases.quality_gate import load as load_gate
from swarm_runtime.phases.rewards import REWARD_APPLIER, RewardBook
from swarm_runtime.queue import log_apply
from swarm_runtime.queue import store as queue_store
from swarm_runtime.queue.group_commit import GroupCommit, Mark, Owed
from swarm_runtime.queue.log_apply import LogTail, Repair, repair_for
from swarm_runtime.queue.store import QueueStore, WorkerIdentity
from swarm_runtime.queue.transition_events import EffectResult, Outstanding
from swarm_runtime.store import durability
from swarm_runtime.store.events import build_event
from swarm_runtime.store.state_files import FileLock, Workspace, overwrite_in_place

ME = WorkerIdentity("w-1")
OTHER = WorkerIdentity("w-2", pid=ME.pid)
LINES = b'{"a": 1}\n{"b": 2}\n'


# --- the repair, decided ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tail", "repair"),
    [
        (LogTail(100 + len(LINES), LINES, True), None),  # all there
        (LogTail(100, b"", True), Repair(100, LINES)),  # none written
        (LogTail(105, LINES[:5], False), Repair(105, LINES[5:])),  # cut short
        (LogTail(40, b"", True), Repair(40, LINES)),  # log cut back by hand
        (LogTail(40, b"", False), Repair(40, b"\n" + LINES)),  # ... mid-line
        (LogTail(130, b'{"c": 3}\n{"d"', False), Repair(130, b"\n" + LINES)),  # other bytes
    ],
)
def test_the_log_gets_exactly_what_it_lacks_of_a_record(
    tail: LogTail, repair: Repair | None
) -> None:
    assert repair_for(LINES, 100, tail) == repair


# --- the store ------------------------------------------------------------------------------


@pytest.fixture
def store(workspace: Workspace) -> Iterator[QueueStore]:
    store = QueueStore(workspace, keep_current=False)
    store.add_many([{"id": f"t{n}", "command": f"echo {n}"} for n in range(3)])
    yield store
    store.close()


def event(task_id: str, status: Status, worker: WorkerIdentity = ME) -> dict[str, Any]:
    return build_event(task_id, worker.worker_id, status, attempt=1)


def journal_records(workspace: Workspace) -> list[dict[str, Any]]:
    lines = workspace.queue_journal_path.read_text().splitlines()[1:]
    return [json.loads(line) for line in lines]


def test_a_transition_and_its_events_are_one_journal_append(
    store: QueueStore, workspace: Workspace
) -> None:
    durability.reset()
    claimed = store.claim(ME, 60).task  # the journal's first record: its start's fsync
    assert claimed is not None
    store.finish(claimed.id, ME, Status.COMPLETED, events=[event(claimed.id, Status.COMPLETED)])
    store.close()  # the finish waits for the worker's next step to make it durable
    fsyncs = {kind: tally.count for kind, tally in durability.totals().items()}
    assert sum(fsyncs.values()) - fsyncs.get("folder", 0) - fsyncs.get("journal rewrite", 0) == 1
    assert [e["status"] for e in read_events(workspace)] == ["in_progress", "completed"]
    last = journal_records(workspace)[-1]
    assert [e["status"] for e in last["events"]] == ["completed"]
    assert last["tasks"][0]["status"] == "completed"


def journal_fsyncs() -> int:
    tally = durability.totals().get("journal append")
    return 0 if tally is None else tally.count


@pytest.mark.parametrize("next_step", ["claim", "wait_for_change", "flush", "close"])
def test_a_worker_step_is_made_durable_by_its_next_one(
    store: QueueStore, workspace: Workspace, next_step: str
) -> None:
    """The execution and the verdict are appended without fsyncs of their own: the
    worker's next step, whatever it is, waits for one fsync that covers both (an fsync
    makes everything appended before it durable)."""
    claimed = store.claim(ME, 60).task
    assert claimed is not None
    durability.reset()
    execution = ExecutionRecord(attempt=1, status=Status.COMPLETED, output="0")
    store.record_execution(claimed.id, ME, execution, events=[event(claimed.id, Status.COMPLETED)])
    store.finish(claimed.id, ME, Status.APPROVED, events=[event(claimed.id, Status.APPROVED)])
    assert durability.totals() == {}
    recorded = [record["tasks"][0]["status"] for record in journal_records(workspace)[-2:]]
    assert recorded == ["pending_review", "approved"]
    steps = {
        "claim": lambda: store.claim(ME, 60),
        "wait_for_change": lambda: store.wait_for_change(0, threading.Event()),
        "flush": store.flush,
        "close": store.close,
    }
    steps[next_step]()
    assert journal_fsyncs() == 1
    store.close()
    assert journal_fsyncs() == 1  # nothing is owed twice


def test_a_refused_transition_commits_none_of_its_events(
    store: QueueStore, workspace: Workspace
) -> None:
    claimed = store.claim(ME, 60).task
    assert claimed is not None
    with pytest.raises(LeaseLostError):
        store.finish(
            claimed.id, OTHER, Status.COMPLETED, events=[event(claimed.id, Status.COMPLETED)]
        )
    assert not store.log_events([event(claimed.id, Status.IN_PROGRESS, OTHER)], holder=OTHER)
    assert [e["status"] for e in read_events(workspace)] == ["in_progress"]


def test_a_finish_and_the_next_claim_are_one_journal_record_and_one_fsync(
    store: QueueStore, workspace: Workspace
) -> None:
    """Where each took a transaction of its own: a lock, a record and, for the claim, an
    fsync that the finish had been waiting for anyway."""
    claimed = store.claim(ME, 60).task
    assert claimed is not None
    durability.reset()
    finished, claim = store.finish_and_claim(
        claimed.id, ME, Status.COMPLETED, 60, events=[event(claimed.id, Status.COMPLETED)]
    )
    assert finished.status == Status.COMPLETED and finished.lease is None
    assert claim.task is not None and claim.task.id == "t1" and claim.task.lease is not None
    assert journal_fsyncs() == 1
    record = journal_records(workspace)[-1]
    assert [(t["id"], t["status"]) for t in record["tasks"]] == [
        ("t0", "completed"),
        ("t1", "in_progress"),
    ]
    assert [(e["task_id"], e["status"]) for e in record["events"]] == [
        ("t0", "completed"),
        ("t1", "in_progress"),
    ]
    logged = [e["status"] for e in read_events(workspace)]
    assert logged == ["in_progress", "completed", "in_progress"]


def test_a_finish_refused_for_a_lost_lease_claims_nothing(
    store: QueueStore, workspace: Workspace
) -> None:
    claimed = store.claim(ME, 60).task
    assert claimed is not None
    records = len(journal_records(workspace))
    with pytest.raises(LeaseLostError):
        store.finish_and_claim(claimed.id, OTHER, Status.COMPLETED, 60)
    assert len(journal_records(workspace)) == records
    assert [t.status for t in store.load().tasks] == [
        Status.IN_PROGRESS,
        Status.PENDING,
        Status.PENDING,
    ]


def test_events_a_dead_writer_left_out_of_the_log_are_written_once_by_the_next(
    store: QueueStore, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a kill between the journal append and the log write leaves them; the next
    transaction, by another process, settles the log before it commits anything."""
    monkeypatch.setattr(queue_store, "bring_up_to", lambda path, record: None)
    claimed = store.claim(ME, 60).task
    assert claimed is not None and read_events(workspace) == []
    monkeypatch.undo()
    other = QueueStore(workspace, keep_current=False)
    other.finish(claimed.id, ME, Status.COMPLETED, events=[event(claimed.id, Status.COMPLETED)])
    assert [e["status"] for e in read_events(workspace)] == ["in_progress", "completed"]
    store.claim(ME, 60)  # catches up with both records: writes nothing again
    other.flush()
    assert [e["status"] for e in read_events(workspace)] == [
        "in_progress",
        "completed",
        "in_progress",
    ]


def test_what_a_writer_read_before_a_lock_it_never_got_is_settled_by_its_next(
    store: QueueStore, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer reads the journal before it takes the lock; a transaction that then
    cannot get the lock leaves what it read for the next one to settle, not forgotten."""
    monkeypatch.setattr(queue_store, "bring_up_to", lambda path, record: None)
    claimed = store.claim(ME, 60).task
    assert claimed is not None and read_events(workspace) == []
    monkeypatch.undo()
    other = QueueStore(workspace, keep_current=False)
    lock = workspace.lock(workspace.queue_path)
    monkeypatch.setattr(lock, "timeout", 0.05)
    with FileLock(f"{workspace.queue_path}.lock"), pytest.raises(TimeoutError):
        other.claim(OTHER, 60)  # read the dead writer's record, then gave up
    monkeypatch.undo()
    assert other.claim(OTHER, 60).task is not None
    assert [e["status"] for e in read_events(workspace)] == ["in_progress", "in_progress"]


def test_a_log_cut_short_mid_line_is_completed_not_duplicated(
    store: QueueStore, workspace: Workspace
) -> None:
    claimed = store.claim(ME, 60).task
    assert claimed is not None
    whole = workspace.log_path.read_bytes()
    workspace.log_path.write_bytes(whole[: len(whole) // 2])
    QueueStore(workspace, keep_current=False).claim(OTHER, 60)
    assert workspace.log_path.read_bytes().startswith(whole)
    assert [e["task_id"] for e in read_events(workspace)] == [claimed.id, "t1"]


def test_a_log_that_cannot_be_written_gets_the_events_at_the_next_transaction(
    store: QueueStore, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: the transaction is committed in the journal all the same."""
    real = log_apply.bring_up_to
    failures = iter([OSError(28, "No space left on device")])

    def full_once(path: Any, record: Any) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        real(path, record)

    monkeypatch.setattr(queue_store, "bring_up_to", full_once)
    claimed = store.claim(ME, 60).task
    assert claimed is not None and read_events(workspace) == []
    assert store.load().find(claimed.id).status == Status.IN_PROGRESS  # type: ignore[union-attr]
    store.heartbeat(claimed.id, ME, 60)
    assert [e["status"] for e in read_events(workspace)] == ["in_progress"]


def test_a_fold_makes_the_log_durable_before_it_drops_the_journal(
    store: QueueStore, workspace: Workspace
) -> None:
    store.claim(ME, 60)
    durability.reset()
    store.flush()
    kinds = list(durability.totals())
    assert "event checkpoint" in kinds and not workspace.queue_journal_path.exists()
    assert [e["status"] for e in read_events(workspace)] == ["in_progress"]


# --- the effects a review's verdict commits with it -----------------------------------------


def reviewed_and_paid(workspace: Workspace) -> Harness:
    """One local task approved under budget: its verdict's record vouches for the gate's
    vote and the reward, which reach their files when the journal is folded."""
    harness = make_harness(workspace)
    harness.queue({"id": "echo", "command": "echo hi", "identity_id": "ada"})
    harness.client.answers = [completed("hi", output="hi\n", exit_code=0, budget_used=0.0001)]
    assert harness.step() is not None
    assert harness.task("echo").status == Status.APPROVED
    return harness


def effect_files(workspace: Workspace) -> list[Path]:
    return [workspace.quality_gate_path, workspace.reward_ledger_path, workspace.balances_path]


def as_if_the_machine_crashed(workspace: Workspace) -> None:
    """The journal was written in an earlier boot, and the effects' files lost what was
    not durable: here, all of it."""
    lines = workspace.queue_journal_path.read_bytes().split(b"\n", 1)
    header = json.loads(lines[0]) | {"boot": "an-earlier-boot"}
    workspace.queue_journal_path.write_bytes(json.dumps(header).encode() + b"\n" + lines[1])
    for path in effect_files(workspace):
        path.unlink(missing_ok=True)


def the_verdict(harness: Harness) -> dict[str, Any]:
    """The one journal record that vouches for effects, the verdict's, made durable."""
    harness.worker.store.close()
    (verdict,) = [r for r in journal_records(harness.workspace) if r.get("vouches")]
    return verdict


def paid_tokens(verdict: dict[str, Any]) -> int:
    tokens: int = verdict["vouches"][REWARD_APPLIER]["tokens_awarded"]
    return tokens


def test_the_verdict_commits_the_vote_and_the_reward_in_its_own_record(
    workspace: Workspace,
) -> None:
    verdict = the_verdict(reviewed_and_paid(workspace))
    assert set(verdict["vouches"]) == {GATE_APPLIER, REWARD_APPLIER}
    assert [e["status"] for e in verdict["events"]] == ["pending_review", "approved"]
    approved = verdict["events"][-1]
    assert approved["quality_gate_change_id"] == "echo"
    assert approved["phase5_reward_applied"] is True


def assert_voted_and_paid_once(workspace: Workspace, tokens: int) -> None:
    assert load_gate(workspace).changes["echo"].vote is not None
    book = RewardBook(workspace)
    assert book.ledger().grants["echo::ada"].tokens_awarded == tokens
    assert book.balances().of("ada").total_tokens == tokens


def test_the_effects_reach_their_files_when_a_store_that_can_apply_them_folds(
    workspace: Workspace,
) -> None:
    harness = reviewed_and_paid(workspace)
    tokens = paid_tokens(the_verdict(harness))
    assert tokens > 0
    assert not any(path.exists() for path in effect_files(workspace))  # the journal holds them

    bystander = QueueStore(workspace)  # the panel's: it cannot apply them, so it keeps
    bystander.flush()  # the journal for a store that can
    assert workspace.queue_journal_path.exists()

    harness.worker.store.flush()
    assert not workspace.queue_journal_path.exists()
    assert_voted_and_paid_once(workspace, tokens)


def test_after_a_machine_crash_a_worker_applies_what_the_journal_vouches_for(
    workspace: Workspace,
) -> None:
    verdict = the_verdict(reviewed_and_paid(workspace))
    as_if_the_machine_crashed(workspace)

    second = make_harness(workspace)
    assert second.step() is None
    second.worker.store.flush()
    assert not workspace.queue_journal_path.exists()
    assert_voted_and_paid_once(workspace, paid_tokens(verdict))


def test_an_idle_fold_that_cannot_apply_the_effects_waits_on_and_tries_again(
    workspace: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken gate file stops the fold, not the worker's wait for work: the journal
    keeps the vote until the file is mended, and the warning comes once an interval."""
    harness = reviewed_and_paid(workspace)
    store = harness.worker.store
    tokens = paid_tokens(the_verdict(harness))
    workspace.quality_gate_path.write_text("{not json")
    store.fold_after_seconds = 0.2
    time.sleep(0.2)  # the journal's age, which the fold waits for: not a guess
    assert harness.step() is None  # nothing to claim: the worker waits for work
    store.wait_for_change(0.1, threading.Event())
    assert workspace.queue_journal_path.exists()
    assert [r.message for r in caplog.records].count(caplog.records[-1].message) == 1
    assert "could not fold" in caplog.records[-1].message

    workspace.quality_gate_path.unlink()

    def folded() -> bool:
        assert harness.step() is None
        store.wait_for_change(0.05, threading.Event())
        return not workspace.queue_journal_path.exists()

    wait_until(folded)
    assert_voted_and_paid_once(workspace, tokens)


def test_effects_applied_before_a_crash_in_the_fold_are_not_applied_twice(
    workspace: Workspace,
) -> None:
    """The fold applies the effects, then replaces queue.json: a crash in between leaves
    the journal, whose next fold finds them applied already."""
    harness = reviewed_and_paid(workspace)
    verdict = the_verdict(harness)
    for name, payload in sorted(verdict["vouches"].items()):
        harness.worker.store.appliers[name]([payload])
    gate_before = workspace.quality_gate_path.read_bytes()

    fresh = make_harness(workspace)
    fresh.worker.store.flush()
    assert not workspace.queue_journal_path.exists()
    assert workspace.quality_gate_path.read_bytes() == gate_before
    assert_voted_and_paid_once(workspace, paid_tokens(verdict))


def test_a_refused_verdict_votes_and_pays_nothing(workspace: Workspace) -> None:
    """A worker that lost the lease before its verdict committed must not have voted or
    paid either: the effects run inside the transaction, after the lease check."""
    harness = make_harness(workspace)
    harness.queue({"id": "echo", "command": "echo hi", "identity_id": "ada"})
    harness.client.answers = [completed("hi", output="hi\n", exit_code=0, budget_used=0.0001)]
    critic = harness.worker.critic
    review = critic.review

    def stolen_while_reviewing(*args: Any, **kwargs: Any) -> Any:
        QueueStore(workspace, clock=lambda: 4e9).claim(WorkerIdentity("thief"), 300)
        return review(*args, **kwargs)

    critic.review = stolen_while_reviewing  # type: ignore[method-assign]
    harness.step()
    assert not workspace.quality_gate_path.exists()
    assert not workspace.reward_ledger_path.exists()


# --- group commit -----------------------------------------------------------------------------


def test_a_mark_says_how_far_which_journal_is_durable() -> None:
    mark = Mark("0123456789abcdef", 4096)
    assert Mark.decode(mark.encode()) == mark
    assert len(mark.encode()) == len(Mark("x", 0).encode())  # rewritten in place whole
    assert mark.covers("0123456789abcdef", 4096) and not mark.covers("0123456789abcdef", 4097)
    assert not mark.covers("another-journal", 10)
    assert Mark.decode(b"") is None


def test_each_group_sync_advances_its_mark_in_the_same_file(workspace: Workspace) -> None:
    head = b'{"journal": "0123456789abcdef", "follows": null}\n'
    workspace.queue_journal_path.write_bytes(head + b"{}\n")
    group = GroupCommit(workspace)
    group.make_durable("0123456789abcdef", len(head) + 3)
    inode = group.mark_path.stat().st_ino
    with workspace.queue_journal_path.open("ab") as journal:
        journal.write(b"{}\n")
    group.make_durable("0123456789abcdef", len(head) + 6)
    mark = Mark.decode(group.mark_path.read_bytes())
    assert mark == Mark("0123456789abcdef", len(head) + 6)
    assert group.mark_path.stat().st_ino == inode
    assert group.mark_path.stat().st_size == len(mark.encode())


def test_a_write_in_place_leaves_what_lies_past_it(tmp_path: Path) -> None:
    path = tmp_path / "mark"
    overwrite_in_place(path, b"0123456789")
    assert path.stat().st_mode & 0o777 == 0o600
    overwrite_in_place(path, b"ab")
    assert path.read_bytes() == b"ab23456789"


def test_what_a_store_owes_is_synced_as_far_as_the_furthest_append() -> None:
    """A lease renewal on another thread may sync its own, earlier, record while the
    worker's deferred one is owed: taking what is owed gives the furthest end of each
    journal, so the sync made covers both, and nothing stays owed for a later step."""
    owed = Owed()
    owed.add("journal-a", 300)
    owed.add("journal-a", 200)
    assert owed.take(("journal-a", 250)) == [("journal-a", 300)]
    assert owed.take() == []
    owed.add("journal-a", 100)
    owed.add("journal-b", 50)  # the first journal was folded away meanwhile
    assert sorted(owed.take(("journal-b", 80))) == [("journal-a", 100), ("journal-b", 80)]


def test_one_fsync_makes_every_record_appended_before_it_durable(workspace: Workspace) -> None:
    """Two writers appended, then both wait for durability: the first one's fsync covers
    the second's record, which needs none of its own; a record appended after it does."""
    head = b'{"journal": "0123456789abcdef", "follows": null}\n'
    first, second = head + b"{}\n", head + b"{}\n{}\n"
    workspace.queue_journal_path.write_bytes(second)
    group = GroupCommit(workspace)
    durability.reset()
    group.make_durable("0123456789abcdef", len(first))
    group.make_durable("0123456789abcdef", len(second))
    assert {k: t.count for k, t in durability.totals().items()} == {"journal append": 1}
    workspace.queue_journal_path.write_bytes(second + b"{}\n")
    group.make_durable("0123456789abcdef", len(second) + 3)
    assert durability.totals()["journal append"].count == 2


def test_a_writer_that_lingers_shares_its_fsync_with_records_landing_meanwhile(
    workspace: Workspace,
) -> None:
    """While it lingers, another worker appends: the one fsync made after it covers both
    records, so the other worker's wait for durability needs none of its own."""
    head = b'{"journal": "0123456789abcdef", "follows": null}\n'
    workspace.queue_journal_path.write_bytes(head + b"{}\n")
    lingered: list[float] = []

    def another_worker_appends(seconds: float) -> None:
        lingered.append(seconds)
        with workspace.queue_journal_path.open("ab") as journal:
            journal.write(b"{}\n")

    group = GroupCommit(workspace, sleep=another_worker_appends)
    durability.reset()
    group.make_durable("0123456789abcdef", len(head) + 3, linger=0.002)
    group.make_durable("0123456789abcdef", len(head) + 6)
    assert lingered == [0.002]
    assert durability.totals()["journal append"].count == 1


def test_a_store_lingers_before_its_fsync_only_while_other_processes_write(
    workspace: Workspace,
) -> None:
    """Alone, a worker never waits for company; after another process appended, its
    next fsync waits a moment for that one's next record."""
    lingered: list[float] = []
    group = GroupCommit(workspace, sleep=lingered.append)
    mine = QueueStore(workspace, keep_current=False, group_commit=group)
    theirs = QueueStore(workspace, keep_current=False)
    mine.add_many([{"id": f"t{n}", "command": f"echo {n}"} for n in range(4)])
    assert mine.claim(ME, 60).task is not None
    assert lingered == []
    assert theirs.claim(OTHER, 60).task is not None
    assert mine.claim(ME, 60).task is not None
    assert lingered == [queue_store.LINGER_SECONDS]
    assert mine.claim(ME, 60).task is not None  # nobody else wrote since
    assert lingered == [queue_store.LINGER_SECONDS]


def test_a_worker_leaving_leaves_the_fold_to_another_still_at_work(workspace: Workspace) -> None:
    """Of two workers leaving one after the other, only the last folds the journal into
    queue.json."""
    mine = QueueStore(workspace, keep_current=False)
    theirs = QueueStore(workspace, keep_current=False)
    mine.add_many([{"id": f"t{n}", "command": f"echo {n}"} for n in range(2)])
    first, second = mine.claim(ME, 60).task, theirs.claim(OTHER, 60).task
    assert first is not None and second is not None
    mine.finish(first.id, ME, Status.COMPLETED)
    mine.flush(leaving=ME)
    assert workspace.queue_journal_path.exists()  # left to the other worker, at work
    theirs.finish(second.id, OTHER, Status.COMPLETED)
    theirs.flush(leaving=OTHER)
    assert not workspace.queue_journal_path.exists()
    on_disk = json.loads(workspace.queue_path.read_text())["tasks"]
    assert [task["status"] for task in on_disk] == ["completed", "completed"]


def test_a_worker_leaving_folds_when_the_only_other_lease_holder_is_gone(
    workspace: Workspace,
) -> None:
    """A lease whose holder's process is gone keeps nobody from folding."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    ghost = WorkerIdentity("w-gone", pid=gone.pid)
    mine = QueueStore(workspace, keep_current=False)
    mine.add_many([{"id": f"t{n}", "command": f"echo {n}"} for n in range(2)])
    assert mine.claim(ghost, 60).task is not None
    assert mine.claim(ME, 60).task is not None
    mine.flush(leaving=ME)
    assert not workspace.queue_journal_path.exists()


@pytest.mark.slow
def test_on_a_database_the_effects_commit_with_the_verdict_or_not_at_all(
    workspace: Workspace, database_url: str
) -> None:
    """The gate's vote and the reward join the queue transaction (as savepoints): when
    the transition fails after them, neither is kept."""
    harness = make_harness(workspace, database_url=database_url)
    worker = harness.worker
    try:
        harness.queue({"id": "echo", "command": "echo hi"})
        claimed = worker.store.claim(worker.identity, 60).task
        assert claimed is not None
        vote = worker.quality_gate.vote("echo", "echo hi", "w", approving(), 0)

        def fails_after_the_vote(outstanding: Outstanding | None) -> EffectResult:
            raise RuntimeError("the transition fails after its effects ran")

        with pytest.raises(RuntimeError):
            worker.store.finish(
                "echo", worker.identity, Status.FAILED, effects=[vote, fails_after_the_vote]
            )
        assert load_gate(worker.documents.quality_gate).changes == {}
        assert harness.task("echo").status == Status.IN_PROGRESS

        worker.store.finish("echo", worker.identity, Status.FAILED, effects=[vote])
        assert list(load_gate(worker.documents.quality_gate).changes) == ["echo"]
    finally:
        worker.store.close()
        worker.documents.close()


def approving() -> Review:
    return Review(verdict=Verdict.APPROVE, confidence=0.9)


def test_a_sync_lock_held_too_long_is_gone_around_not_reported(workspace: Workspace) -> None:
    """The step is committed already: failing it now would make its worker take it for
    one that failed (and try it again)."""
    head = b'{"journal": "0123456789abcdef", "follows": null}\n'
    workspace.queue_journal_path.write_bytes(head + b"{}\n")
    group = GroupCommit(workspace, lock_timeout=0.05)
    with FileLock(f"{group.mark_path}.lock"):  # another writer, stuck
        durability.reset()
        group.make_durable("0123456789abcdef", len(head) + 3)
    assert durability.totals()["journal append"].count == 1


def test_an_idle_worker_folds_its_last_steps_into_queue_json(workspace: Workspace) -> None:
    """queue.json is current soon after work stops, not at the worker's next claim (which
    an idle worker may not make for a whole poll interval)."""
    worker_store = QueueStore(workspace, keep_current=False, fold_after_seconds=0.05)
    worker_store.add({"id": "t0", "command": "echo 0"})
    assert worker_store.claim(ME, 60).task is not None
    assert worker_store.claim(ME, 60).task is None  # nothing left: the worker waits
    assert workspace.queue_journal_path.exists()
    started = time.monotonic()
    worker_store.wait_for_change(5.0, threading.Event())
    assert time.monotonic() - started < 2.0
    assert not workspace.queue_journal_path.exists()
    on_disk = json.loads(workspace.queue_path.read_text())["tasks"]
    assert [task["status"] for task in on_disk] == ["in_progress"]
