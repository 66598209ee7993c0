"""Processes that share the queue with busy workers: a feeder and a lock-free reader.

    faults_queue_churn.py feed REPORT FIRST TOTAL
        adds tasks t<FIRST>..t<TOTAL-1> in batches while workers drain the queue (every
        tenth task is a command that exits non-zero), requeues each such task once after
        it fails, as an operator would, then writes what it did to REPORT and exits 0.
    faults_queue_churn.py read REPORT
        reads the queue without its lock in a loop (queue.json's bytes, or the database's
        queue as `swarm export` writes it), validating each copy against the contract,
        until SIGTERM; then writes the reads and any problems to REPORT.

Both take the workspace, the database if any, and the queue's retention and review
settings from the environment, like every runtime process.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from swarm_runtime.contract import (
    CLAIMABLE_STATUSES,
    FAILED_STATUSES,
    OperatorAction,
    OperatorEvent,
    QueueDocument,
    Status,
    Task,
    final_statuses,
    normalize_queue,
    validate_queue_contract,
)
from swarm_runtime.errors import InvalidTransition, QueueFileError, UnknownTaskError
from swarm_runtime.queue.select import store_for
from swarm_runtime.queue.state import QueueState
from swarm_runtime.settings import Settings
from swarm_runtime.store.events import EventLog
from swarm_runtime.store.state_files import Workspace

FEEDER_ID = "fault-feeder"
BATCH = 25
BACKLOG_LOW = 60
PACE_SECONDS = 0.05
READ_PACE_SECONDS = 0.002


def task_spec(index: int) -> dict[str, Any]:
    """Task `index`; every tenth one fails (exit code 2), so there is work to requeue."""
    if index % 10 == 7:
        return {"id": f"t{index:03d}", "command": f"ls missing-{index}"}
    return {"id": f"t{index:03d}", "command": f"echo {index}"}


def is_failing(task_id: str) -> bool:
    return int(task_id[1:]) % 10 == 7


class TaskMix(NamedTuple):
    """Which task each index is, and which of them fail, so they are requeued."""

    spec: Callable[[int], dict[str, Any]]
    failing: Callable[[str], bool]


ECHOES = TaskMix(task_spec, is_failing)


def feed(settings: Settings, report: Path, first: int, total: int, mix: TaskMix = ECHOES) -> int:
    workspace = Workspace(settings.workspace)
    store = store_for(settings, workspace)
    events = EventLog(FEEDER_ID)

    def note(task: Task) -> dict[str, Any]:
        return events.build(
            task.id, task.status, OperatorEvent, operator_action=OperatorAction.REQUEUE
        )

    pace = threading.Event()
    added: list[str] = []
    requeued: set[str] = set()
    unreachable: set[str] = set()
    following = first
    while True:
        doc = store.load()
        backlog = sum(t.status in CLAIMABLE_STATUSES for t in doc.tasks)
        if following < total and backlog < BACKLOG_LOW:
            batch = [mix.spec(i) for i in range(following, min(total, following + BATCH))]
            added += [t.id for t in store.add_many(batch)]
            following += len(batch)
        for task_id in failed_once(doc, requeued, mix):
            try:
                store.requeue(task_id, note)
            except (UnknownTaskError, InvalidTransition):
                unreachable.add(task_id)  # archived meanwhile: it stays failed
                continue
            requeued.add(task_id)
        if following >= total and every_failure_handled(doc, total, requeued, mix):
            break
        pace.wait(PACE_SECONDS)
    report.write_text(
        json.dumps(
            {"added": added, "requeued": sorted(requeued), "left_failed": sorted(unreachable)}
        )
    )
    return 0


def failed_once(doc: QueueDocument, requeued: set[str], mix: TaskMix) -> list[str]:
    return [
        t.id
        for t in doc.tasks
        if t.status == Status.FAILED and mix.failing(t.id) and t.id not in requeued
    ]


def every_failure_handled(doc: QueueDocument, total: int, requeued: set[str], mix: TaskMix) -> bool:
    """Each failing task has been requeued, or was archived as failed before we could."""
    live = {t.id for t in doc.tasks}
    failing = [mix.spec(i)["id"] for i in range(total) if mix.failing(mix.spec(i)["id"])]
    return all(tid in requeued or (tid in doc.failed and tid not in live) for tid in failing)


def queue_reader(settings: Settings) -> Callable[[], bytes]:
    """The queue as every reader sees it (queue.json with its journal, or the database's
    queue as one snapshot), encoded as queue.json; read without the queue's lock. A
    torn queue.json or journal record would fail the read, and is reported as a problem."""
    store = store_for(settings, Workspace(settings.workspace))
    return lambda: QueueState(store.load(), settings.review).encode()


def read_loop(settings: Settings, report: Path) -> int:
    read = queue_reader(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    reads, versions, problems = 0, set(), []
    print("reading", flush=True)
    while not stop.is_set():
        try:
            raw = read()
        except QueueFileError as exc:
            problems.append({"problems": [str(exc)], "bytes": 0})
            continue
        reads += 1
        digest = hashlib.sha1(raw).hexdigest()
        if digest not in versions:  # a torn copy would be new bytes too: each is checked
            versions.add(digest)
            found = queue_problems(raw, settings.review)
            if found and len(problems) < 20:
                problems.append({"problems": found[:5], "bytes": len(raw)})
        stop.wait(READ_PACE_SECONDS)
    report.write_text(json.dumps({"reads": reads, "versions": len(versions), "problems": problems}))
    return 0


def queue_problems(raw: bytes, review_enabled: bool) -> list[str]:
    """Parse and validate one copy of queue.json as any reader would, plus its invariants."""
    try:
        document = json.loads(raw)
    except ValueError as exc:
        return [f"not JSON: {exc}"]
    problems = validate_queue_contract(document)
    if problems:
        return problems
    try:
        doc = QueueDocument.model_validate(normalize_queue(document))
    except ValidationError as exc:
        return [str(exc)]
    return list_problems(doc, review_enabled)


def list_problems(doc: QueueDocument, review_enabled: bool) -> list[str]:
    """`completed` and `failed` agree with the statuses: each finished task in exactly one."""
    completed, failed = set(doc.completed), set(doc.failed)
    problems = [
        f"{name} repeats an id"
        for name, ids in (("completed", doc.completed), ("failed", doc.failed))
        if len(set(ids)) != len(ids)
    ]
    problems += [f"{tid} is both completed and failed" for tid in completed & failed]
    final = final_statuses(review_enabled)
    for task in doc.tasks:
        expected = (
            failed
            if task.status in FAILED_STATUSES
            else completed
            if task.status in final
            else set()
        )
        listed = [
            name for name, ids in (("completed", completed), ("failed", failed)) if task.id in ids
        ]
        if (task.id in expected) != bool(listed) or len(listed) > 1:
            problems.append(f"{task.id} is {task.status.value} but listed in {listed}")
    return problems


def main() -> int:
    settings, report = Settings.from_env(), Path(sys.argv[2])
    if sys.argv[1] == "feed":
        return feed(settings, report, int(sys.argv[3]), int(sys.argv[4]))
    return read_loop(settings, report)


if __name__ == "__main__":
    sys.exit(main())
