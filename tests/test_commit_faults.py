"""The log agrees with the queue, always: a worker killed at any failpoint of a local
task's path leaves execution_log.jsonl and the queue telling one story once the next
worker has drained the queue.

On the file store a transition commits its events with the queue change in one append
to the queue journal; execution_log.jsonl gets the lines right after, without an fsync,
and the next transaction of any process writes what a dead writer left out. Each case
here arms one failpoint in a real worker.py (SIGKILL there, no cleanup), then drains the
queue with a second worker and reads every line of the log.

The tasks echo a few kilobytes each, so the worker's journal outgrows its fold
threshold after a task or two: the fold's failpoints (`queue.fold.log_synced`, the
gate's and the rewards' writes, `queue.fold.effects_applied`, `write:queue.json:*`) fire
mid-queue, with work left for the next worker, not only in
the fold a worker makes on its way out.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Backend, Clock, RunningProcess, child_env, read_events, write_queue
from helpers.counted_failpoints import AT_ENV, CENSUS_ENV
from test_worker_in_process import Harness, completed, make_harness

from swarm_runtime.contract import Status
from swarm_runtime.phases.rewards import RewardBook
from swarm_runtime.queue.store import QueueStore, WorkerIdentity
from swarm_runtime.store.log_index import LogIndex
from swarm_runtime.store.state_files import Workspace

COUNTED = ROOT / "tests" / "helpers" / "counted_failpoints.py"
DOOMED = "doomed"  # the killed worker's id, which names its presence file
TASKS = 6
# Each task's execution and events carry its output: three of them are about 64 KB of
# journal, which these workers fold at (SWARM_JOURNAL_BYTES; 1 MB by default).
PADDING = "x" * 5000
SMALL_JOURNAL = {"SWARM_JOURNAL_BYTES": "65536"}
FINAL = {"approved", "failed", "safety_blocked", "cancelled"}  # `completed` is not, under review

# Every failpoint a worker passes on a local task's path, roughly in the order it first
# passes them (`test_the_failpoints_below_are_every_one_on_a_local_tasks_path` keeps
# this list honest).
FAILPOINTS = [
    *(f"write:{DOOMED}.json:{instant}" for instant in ("partial", "before_rename", "renamed")),
    "write:queue_journal.jsonl:partial",
    "write:queue_journal.jsonl:before_rename",
    "write:queue_journal.jsonl:renamed",
    "queue.journal_appended",
    "append:queue_journal.jsonl:partial",
    "queue.before_group_sync",
    "write:quality_gate_queue.json:partial",
    "write:quality_gate_queue.json:before_rename",
    "write:quality_gate_queue.json:renamed",
    "worker.before_reward",
    "worker.after_reward",
    # the fold: the log made durable, the vouched effects applied, then queue.json
    "queue.fold.log_synced",
    "write:free_time_balances.json:partial",
    "write:free_time_balances.json:before_rename",
    "write:free_time_balances.json:renamed",
    "reward.after_balances",
    "write:phase5_reward_ledger.json:partial",
    "write:phase5_reward_ledger.json:before_rename",
    "write:phase5_reward_ledger.json:renamed",
    "queue.fold.effects_applied",
    "write:queue.json:partial",
    "write:queue.json:before_rename",
    "write:queue.json:renamed",
]
# A worker passes `queue.journal_appended` first committing its claim (its first journal
# record), then each transition that commits events: killed there, the log lacks them.
LATER_APPENDS = {
    "queue.journal_appended#2": "record_execution",
    "queue.journal_appended#3": "finish (review)",
    "queue.journal_appended#4": "the next claim, appended to a journal under way",
}
CASES = [*FAILPOINTS, *LATER_APPENDS]
# Killed here, a committed transaction's events are in the journal and not in the log.
BETWEEN_JOURNAL_AND_LOG = {
    "write:queue_journal.jsonl:renamed",
    "queue.journal_appended",
    *LATER_APPENDS,
}


def local_tasks() -> list[dict[str, Any]]:
    return [{"id": f"echo-{n}", "command": f"echo {n} {PADDING}"} for n in range(TASKS)]


def log_lines(ws: Workspace) -> list[bytes]:
    """Every line of the log, each checked to be one JSON object."""
    raw = ws.log_path.read_bytes() if ws.log_path.exists() else b""
    assert raw == b"" or raw.endswith(b"\n"), f"the log ends in a torn line: {raw[-200:]!r}"
    lines = raw.splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise AssertionError(f"log line {number} is not JSON ({exc}): {line[:200]!r}") from None
        assert isinstance(event, dict), f"log line {number} is not an object"
    return lines


def canonical(event: dict[str, Any]) -> str:
    return json.dumps(event, sort_keys=True)


def journal_events(ws: Workspace) -> list[dict[str, Any]]:
    """The events of every committed journal record (a torn last line was never committed)."""
    if not ws.queue_journal_path.exists():
        return []
    raw = ws.queue_journal_path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1].splitlines()[1:]  # the header names the journal
    return [event for line in complete for event in json.loads(line).get("events", [])]


def events_the_log_lacks(ws: Workspace) -> list[dict[str, Any]]:
    logged = {canonical(json.loads(line)) for line in log_lines(ws)}
    return [e for e in journal_events(ws) if canonical(e) not in logged]


def queue_statuses(ws: Workspace) -> dict[str, str]:
    """As any process reads the queue: queue.json and the journal that continues it."""
    return {task.id: task.status.value for task in QueueStore(ws).load().tasks}


@pytest.mark.slow
def test_the_failpoints_below_are_every_one_on_a_local_tasks_path(
    api: RunningProcess, backend: Backend, tmp_path: Path
) -> None:
    """A worker that passes every failpoint without dying, recording their names: a new
    failpoint on the path fails this test until it is added to FAILPOINTS."""
    write_queue(backend.workspace, local_tasks(), str(api.url))
    census = tmp_path / "census"
    result = counted_worker(backend, **{CENSUS_ENV: str(census)})
    assert result.returncode == 0, result.stdout + result.stderr
    passed = set(census.read_text().split())  # in an order that depends on timing
    unlisted, never_passed = sorted(passed - set(FAILPOINTS)), sorted(set(FAILPOINTS) - passed)
    assert (unlisted, never_passed) == ([], [])


def counted_worker(backend: Backend, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(COUNTED), "--once", "--worker-id", DOOMED],
        cwd=ROOT,
        env=child_env(backend.workspace, SWARM_FAILPOINTS="counted", **SMALL_JOURNAL, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def killed_worker(backend: Backend, case: str) -> subprocess.CompletedProcess[str]:
    """worker.py with `case` armed: a failpoint's name (killed the first time it passes
    it), or `name#n` (killed the n-th time)."""
    if "#" in case:
        return counted_worker(backend, **{AT_ENV: case})
    return backend.run_worker(
        "--once", "--worker-id", DOOMED, SWARM_FAILPOINTS=case, **SMALL_JOURNAL
    )


def killed_mid_queue(api: RunningProcess, backend: Backend, case: str) -> list[dict[str, Any]]:
    """Queue the tasks, run a worker killed at `case`; returns the committed events the
    log lacks, checked to be some exactly when the kill fell between journal and log."""
    ws = backend.workspace
    write_queue(ws, local_tasks(), str(api.url))
    killed = killed_worker(backend, case)
    assert killed.returncode == -signal.SIGKILL, f"{case} never reached:\n{killed.stderr}"
    at_kill = queue_statuses(ws)
    assert "pending" in at_kill.values(), f"killed with no work left: {at_kill}"
    lacking = events_the_log_lacks(ws)
    if case in BETWEEN_JOURNAL_AND_LOG:
        assert lacking, "the kill left the log complete: the window was not hit"
    else:
        assert lacking == [], "the log lacks committed events outside the window"
    return lacking


def drain(backend: Backend) -> None:
    """A worker without failpoints finishes the queue; the log only grows meanwhile."""
    log = backend.workspace.log_path
    before = log.read_bytes() if log.exists() else b""
    drained = backend.run_worker("--once", SWARM_POLL_INTERVAL="0.05")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert log.read_bytes().startswith(before), "the log's history was rewritten"


def assert_the_log_agrees_with_the_queue(backend: Backend, lacking: list[dict[str, Any]]) -> None:
    lines = log_lines(backend.workspace)
    duplicated = [line for line, count in Counter(lines).items() if count > 1]
    assert duplicated == [], f"lines logged twice: {duplicated[:3]}"
    events = read_events(backend.workspace)
    logged = {canonical(e) for e in events}
    assert all(canonical(e) in logged for e in lacking), "a committed event never reached the log"

    queue = backend.queue()  # queue.json itself: the draining worker folded on its way out
    statuses = {task["id"]: task["status"] for task in queue["tasks"]}
    assert statuses == {f"echo-{n}": "approved" for n in range(TASKS)}
    assert sorted(queue["completed"]) == sorted(statuses) and queue["failed"] == []
    for task in queue["tasks"]:
        own = [e for e in events if e["task_id"] == task["id"]]
        history = [e["status"] for e in own]
        assert [s for s in history if s in FINAL] == [task["status"]], (task["id"], history)
        told = [s for s in history if s != Status.RESULT_DISCARDED]
        assert told[-1] == task["status"], (task["id"], history)
        starts = Counter(e["attempt"] for e in own if e["status"] == "in_progress")
        assert starts and set(starts.values()) == {1}, (task["id"], history, starts)
        assert max(starts) <= task["attempts"], (task["id"], starts, task["attempts"])
    assert_each_verdict_voted_and_paid_once(backend.workspace, sorted(statuses))


def assert_each_verdict_voted_and_paid_once(ws: Workspace, task_ids: list[str]) -> None:
    """The gate and the rewards, applied at the folds: one approving vote and one grant
    per task, and the balances hold exactly what the ledger says was paid."""
    gate = json.loads(ws.quality_gate_path.read_text())["changes"]
    assert sorted(gate) == task_ids
    assert {change["vote"]["decision"] for change in gate.values()} == {"approved"}
    book = RewardBook(ws)
    grants = book.ledger().grants.values()
    assert sorted(grant.task_id for grant in grants) == task_ids
    paid = sum(grant.tokens_awarded for grant in grants)
    assert sum(b.total_tokens for b in book.balances().identities.values()) == paid > 0


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_a_worker_killed_at_any_failpoint_leaves_the_log_agreeing_with_the_queue(
    api: RunningProcess, backend: Backend, case: str
) -> None:
    """The next worker, new, checks the whole journal against the log at its first
    transaction and writes what a killed writer left out, once."""
    lacking = killed_mid_queue(api, backend, case)
    drain(backend)
    assert_the_log_agrees_with_the_queue(backend, lacking)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BETWEEN_JOURNAL_AND_LOG))
def test_a_process_already_running_writes_what_a_killed_writer_left_out(
    api: RunningProcess, backend: Backend, case: str
) -> None:
    """A process that transacted before the kill checks only the last record it reads
    (every writer settles the one before its own): its next transaction, even one that
    changes nothing, must still give the log what the killed writer left out."""
    running = QueueStore(backend.workspace, review_enabled=True, keep_current=False)
    nobody = WorkerIdentity("nobody")
    assert running.heartbeat("no-such-task", nobody, 1) is False  # its first transaction
    lacking = killed_mid_queue(api, backend, case)
    assert running.heartbeat("no-such-task", nobody, 1) is False
    assert events_the_log_lacks(backend.workspace) == []
    drain(backend)
    assert_the_log_agrees_with_the_queue(backend, lacking)


# --- a lease lost before the result is committed ------------------------------------------


# What the worker would have committed, by the transition a lost lease refuses.
REFUSED = {"record_execution": ["completed"], "finish": ["pending_review", "approved"]}
WORKER = "in-process"  # `make_harness`'s worker


def run_with_the_lease_stolen(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, commit: str
) -> Harness:
    """Run one local task while another worker reclaims it: during the execution, so
    that `record_execution` is refused, or during the review, so that `finish` is."""
    harness = make_harness(workspace)
    # The thief's clock is past the lease, as if this worker had stopped renewing it.
    thief = QueueStore(workspace, review_enabled=True, clock=Clock(4_000_000_000.0))

    def steal() -> None:
        claim = thief.claim(WorkerIdentity("thief"), 300)
        assert claim.task is not None and claim.task.id == "echo"
        assert [item.task_id for item in claim.reclaimed] == ["echo"]

    if commit == "record_execution":
        harness.client.while_running = steal
    else:
        review = harness.worker.critic.review

        def review_after_the_theft(*args: Any, **kwargs: Any) -> Any:
            steal()
            return review(*args, **kwargs)

        monkeypatch.setattr(harness.worker.critic, "review", review_after_the_theft)
    harness.queue({"id": "echo", "command": "echo hello"})
    harness.client.answers = [completed("hello", output="hello\n", exit_code=0)]
    harness.step()
    harness.worker.store.close()
    harness.worker.documents.close()
    return harness


def discarded_results(workspace: Workspace) -> list[dict[str, Any]]:
    return [e for e in read_events(workspace) if e["status"] == Status.RESULT_DISCARDED]


@pytest.mark.parametrize("commit", list(REFUSED))
def test_a_transition_refused_for_a_lost_lease_commits_nothing_and_logs_a_discarded_result(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, commit: str
) -> None:
    """The refused transition's events are neither in the log nor in the journal; what
    the worker computed is logged as `result_discarded`, which is never the status."""
    harness = run_with_the_lease_stolen(workspace, monkeypatch, commit)
    task = harness.task("echo")
    assert task.lease is not None and task.lease.worker_id == "thief"
    # The thief reclaimed it in the middle: the execution it resumes the review of, or
    # none, so it runs the task again.
    assert (task.status, task.execution is not None) == {
        "record_execution": (Status.IN_PROGRESS, False),
        "finish": (Status.PENDING_REVIEW, True),
    }[commit]
    own = [e for e in read_events(workspace) if e["task_id"] == "echo"]
    mine = [e["status"] for e in own if e["worker_id"] == WORKER]
    assert mine == [
        "in_progress",
        *(["completed"] if commit == "finish" else []),
        *["result_discarded"] * len(REFUSED[commit]),
    ]
    discarded = discarded_results(workspace)
    assert [e["discarded_status"] for e in discarded] == REFUSED[commit]
    assert all(e["worker_id"] == WORKER for e in discarded)
    assert all("no longer holds the lease" in e["errors"] for e in discarded)
    assert not any(
        e["worker_id"] == WORKER and e["status"] in REFUSED[commit]
        for e in journal_events(workspace)
    ), "a refused transition's event is in a journal record, to be logged later"
    told = [e["status"] for e in own if e["status"] != Status.RESULT_DISCARDED]
    assert told[-1] == ("in_progress" if commit == "record_execution" else "lease_expired")
    index = LogIndex(workspace.log_path)  # as the panel reads the log
    index.refresh()
    info = index.task("echo")
    assert info is not None and info.last_status == told[-1]


@pytest.mark.parametrize("commit", list(REFUSED))
def test_a_discarded_result_names_the_attempt_it_belonged_to(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, commit: str
) -> None:
    """A lease is fenced by attempt: a discarded result must say which attempt computed
    it. Regression: a review's events carry `attempt: null`, and `setdefault` kept it."""
    run_with_the_lease_stolen(workspace, monkeypatch, commit)
    discarded = discarded_results(workspace)
    assert discarded and [e["attempt"] for e in discarded] == [1] * len(discarded), [
        (e["discarded_status"], e["attempt"]) for e in discarded
    ]


# --- a repair that failed once --------------------------------------------------------------


def test_a_log_repair_that_failed_is_made_by_the_next_transaction_before_any_fold(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two faults: a writer dies between its journal append and the log write (as at
    `queue.journal_appended`), and the next transaction, a running worker's, cannot write
    the missing lines (a full disk). That transaction fails, as it must; but once there
    is space, the same worker's next transactions and its fold must write them, not drop
    the journal that holds them."""
    running = QueueStore(workspace, review_enabled=True, keep_current=False)
    running.add({"id": "t1", "command": "echo 1"})
    # From its first transaction on, it checks only the last journal record it reads.
    running.add({"id": "t2", "command": "echo 2"})
    dying = QueueStore(workspace, review_enabled=True, keep_current=False)
    monkeypatch.setattr(dying, "_apply_events", lambda record: None)  # killed right here
    claim = dying.claim(WorkerIdentity("dying"), 300)
    assert claim.task is not None
    assert events_the_log_lacks(workspace), "the dead writer's lines reached the log"

    def disk_full(path: Path, record: Any) -> None:
        raise OSError(28, "No space left on device", str(path))

    with monkeypatch.context() as full:
        full.setattr("swarm_runtime.queue.store.bring_up_to", disk_full)
        with pytest.raises(OSError):
            running.add({"id": "t3", "command": "echo 3"})
    running.add({"id": "t4", "command": "echo 4"})
    running.flush()

    assert not workspace.queue_journal_path.exists()
    statuses = [(e["task_id"], e["status"]) for e in read_events(workspace)]
    assert statuses == [("t1", "in_progress")], "a committed event was lost with the journal"
