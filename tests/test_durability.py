"""The fsync counter: each state write counts exactly the fsyncs it makes, under the kind
that names what they made durable; a local task through the worker counts its own; and
a process asked to report writes its totals when it exits."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, child_env, read_events
from test_worker_in_process import completed, make_harness

from swarm_runtime.contract import Status
from swarm_runtime.store import durability
from swarm_runtime.store.documents import FileDocument
from swarm_runtime.store.state_files import (
    Workspace,
    append_line,
    append_lines,
    atomic_write_json,
    create_secret_file,
    remove_durably,
)

Write = Callable[[Workspace], object]
RECORD = {"task_id": "t1", "status": "approved"}


@pytest.fixture(autouse=True)
def fresh_tallies() -> Iterator[None]:
    durability.reset()
    yield
    durability.reset()


def counts() -> dict[str, int]:
    return {kind: tally.count for kind, tally in durability.totals().items()}


def presence_write(ws: Workspace) -> None:
    ws.workers_dir.mkdir(mode=0o700, exist_ok=True)
    atomic_write_json(ws.workers_dir / "w1.json", {"worker_id": "w1"})


def removal(ws: Workspace) -> None:
    ws.pause_path.write_text("{}")
    remove_durably(ws.pause_path)


def gate_document(ws: Workspace) -> FileDocument:
    return FileDocument(ws, ws.quality_gate_path)


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (lambda ws: atomic_write_json(ws.queue_path, {}), {"queue rewrite": 1, "folder": 1}),
        (lambda ws: append_line(ws, ws.log_path, RECORD), {"event append": 1}),
        (lambda ws: append_line(ws, ws.api_audit_path, RECORD, durable=False), {}),
        (lambda ws: append_lines(ws, ws.queue_archive_path, [RECORD] * 3), {"archive append": 1}),
        (lambda ws: append_lines(ws, ws.queue_archive_path, []), {}),
        (lambda ws: gate_document(ws).update(lambda d: (None, 0), dict), {}),
        (
            lambda ws: gate_document(ws).update(lambda d: ({"n": 1}, 0), dict),
            {"gate rewrite": 1, "folder": 1},
        ),
        (presence_write, {"presence rewrite": 1, "folder": 1}),
        (removal, {"folder": 1}),
        (lambda ws: remove_durably(ws.pause_path), {}),
        (lambda ws: create_secret_file(ws.token_path, "s"), {"token create": 1, "folder": 1}),
    ],
)
def test_each_write_counts_its_own_fsyncs(
    workspace: Workspace, write: Write, expected: dict[str, int]
) -> None:
    write(workspace)
    assert counts() == expected


def test_a_known_sequence_gives_known_counts_and_times(workspace: Workspace) -> None:
    for number in range(5):
        atomic_write_json(workspace.balances_path, {"n": number})
        append_line(workspace, workspace.log_path, RECORD)
        append_line(workspace, workspace.log_path, RECORD)
    totals = durability.totals()
    assert counts() == {"balances rewrite": 5, "folder": 5, "event append": 10}
    assert all(0 <= tally.cpu_seconds <= tally.seconds + 0.001 for tally in totals.values())
    assert all(tally.seconds > 0 for tally in totals.values())


def test_threads_appending_at_once_lose_no_count(workspace: Workspace) -> None:
    def append_many() -> None:
        for _ in range(20):
            append_line(workspace, workspace.log_path, RECORD)

    threads = [threading.Thread(target=append_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts() == {"event append": 80}
    assert len(read_events(workspace)) == 80


def test_every_state_file_has_a_kind_of_its_own(workspace: Workspace) -> None:
    paths = [*workspace.state_files(), workspace.token_path, workspace.api_endpoint_path]
    kinds = {durability.kind_of(path, durability.REWRITE) for path in paths}
    assert len(kinds) == len(paths)
    assert "other rewrite" not in kinds


# The first queue transaction starts the journal (a rewrite and its folder's fsync);
# every later one appends to it, carrying the transition's events with it, and the
# review's gate vote and reward, written without an fsync, vouched for in the verdict's.
# The execution and the verdict wait for no fsync: the worker's next step (here the
# store's close) makes both durable with one.
@pytest.mark.parametrize(("review", "final"), [(True, Status.APPROVED), (False, Status.COMPLETED)])
def test_a_local_task_through_the_worker_counts_each_durable_step(
    workspace: Workspace, review: bool, final: Status
) -> None:
    """Pinned on purpose: a new fsync on a local task's path costs about a millisecond
    per task on a typical disk (BENCHMARKS.md, section 10), so it should be a decision."""
    harness = make_harness(workspace, review=review)
    harness.queue({"id": "echo", "command": "echo hi"})
    harness.client.answers = [completed("hi", output="hi\n", exit_code=0, budget_used=0.0001)]
    durability.reset()
    try:
        assert harness.step() is not None
        assert harness.task("echo").status == final
    finally:
        harness.worker.store.close()
        harness.worker.documents.close()
    found = counts()
    assert found == {"journal rewrite": 1, "journal append": 1, "folder": 1}  # claim, close
    assert len(read_events(workspace)) == (4 if review else 2)  # with no fsync of their own
    rewrites = sum(n for kind, n in found.items() if kind.endswith(durability.REWRITE))
    assert found["folder"] == rewrites  # each rename is made durable by its folder's fsync


def test_a_process_asked_to_report_writes_its_totals_at_exit(
    workspace: Workspace, tmp_path: Path
) -> None:
    script = (
        "from pathlib import Path\n"
        "from swarm_runtime.store.state_files import atomic_write_json\n"
        f"atomic_write_json(Path({str(workspace.queue_path)!r}), {{}})\n"
    )
    report = tmp_path / "fsyncs-{pid}.json"
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=child_env(workspace, **{durability.REPORT_ENV: str(report)}),
    )
    assert child.wait(timeout=60) == 0
    totals = json.loads((tmp_path / f"fsyncs-{child.pid}.json").read_text())
    assert {kind: entry["count"] for kind, entry in totals.items()} == {
        "queue rewrite": 1,
        "folder": 1,
    }
    assert all(entry["seconds"] > 0 <= entry["cpu_seconds"] for entry in totals.values())
