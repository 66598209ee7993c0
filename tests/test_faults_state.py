"""Fault injection on the state files: killed writers, malformed files, a full disk.

Each test damages a real workspace the way the world does (SIGKILL inside the atomic
writer, a hand-edited file, a filesystem with no space left) and then checks three
things: the file is valid and holds the old content or the new, never a mix; the error
names the file and the place; and the runtime carries on once the cause is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import (
    ROOT,
    RunningProcess,
    child_env,
    read_events,
    run_worker,
    wait_until,
    write_queue,
)
from fake_llm_server import FakeLLMServer
from helpers.faults_state_writer import IDENTITY, SETTLED_COST, write
from pydantic import BaseModel

from swarm_runtime.contract import TOKEN_HEADER
from swarm_runtime.errors import StateFileError
from swarm_runtime.llm.budget import BudgetLedger, LedgerDocument
from swarm_runtime.phases import quality_gate
from swarm_runtime.phases.rewards import Balances, RewardBook, RewardLedger, parse_state
from swarm_runtime.queue.store import QueueStore
from swarm_runtime.store.state_files import Workspace, read_json

WRITER = ROOT / "tests" / "helpers" / "faults_state_writer.py"
INSTANTS = ("partial", "before_rename", "renamed")
FAST_POLL = {"SWARM_POLL_INTERVAL": "0.05"}


# --- a writer killed inside the atomic write ------------------------------------------


def queue_ids(ws: Workspace) -> list[str]:
    return [task.id for task in QueueStore(ws).load().tasks]


def gate_ids(ws: Workspace) -> list[str]:
    return sorted(quality_gate.load(ws).changes)


def reward_ids(ws: Workspace) -> list[str]:
    """The granted tasks, after checking that ledger and balances agree grant by grant."""
    book = RewardBook(ws)
    ledger, balances = book.ledger(), book.balances()
    grants = ledger.grants.values()
    paid = [payment.grant for payment in balances.of(IDENTITY).history]
    assert sorted(paid) == sorted(ledger.grants), "a grant paid twice or never"
    assert all(grant.state == "applied" for grant in grants)
    awarded = sum(grant.tokens_awarded for grant in grants)
    assert balances.of(IDENTITY).total_tokens == awarded
    return sorted(grant.task_id for grant in grants)


def budget_ids(ws: Workspace) -> list[str]:
    """Settled writes as task ids; open holds must be gone and spent must add up."""
    document = LedgerDocument.model_validate_json(ws.budget_ledger_path.read_bytes())
    snapshot = BudgetLedger(ws, 10.0).snapshot()
    assert snapshot.reserved == 0 and document.reservations == {}
    settled = round(snapshot.spent / SETTLED_COST)
    assert snapshot.spent == pytest.approx(settled * SETTLED_COST)
    return [f"settled-{n}" for n in range(settled)]


def parsed(model: type[BaseModel], path: Path) -> Any:
    """Read-only validation (constructing a store would sweep the leftovers under test)."""
    return parse_state(model, read_json(path, dict), path)


def budget_in_flight(ws: Workspace) -> list[str]:
    document = LedgerDocument.model_validate_json(ws.budget_ledger_path.read_bytes())
    return sorted(str(held.task_id) for held in document.reservations.values())


@dataclass(frozen=True)
class StateFile:
    name: str
    kind: str
    path: Callable[[Workspace], Path]
    ids: Callable[[Workspace], list[str]]
    # After a kill, what the file says was written: validates the file as it goes.
    seen: Callable[[Workspace], list[str]]
    # The ids the next successful write leaves when the killed write did / did not land.
    expect_landed: list[str]
    expect_lost: list[str]


ALL_THREE = ["task-1", "task-2", "task-3"]
WITHOUT_2 = ["task-1", "task-3"]
STATE_FILES = [
    StateFile(
        "queue.json", "queue", lambda ws: ws.queue_path, queue_ids, queue_ids, ALL_THREE, WITHOUT_2
    ),
    StateFile(
        "quality_gate_queue.json",
        "quality_gate",
        lambda ws: ws.quality_gate_path,
        gate_ids,
        gate_ids,
        ALL_THREE,
        WITHOUT_2,
    ),
    # The balances are paid before the ledger is written, and the payment names its
    # grant, so the next grant ledgers it whichever instant the ledger writer died at.
    StateFile(
        "phase5_reward_ledger.json",
        "reward",
        lambda ws: ws.reward_ledger_path,
        reward_ids,
        lambda ws: sorted(parsed(RewardLedger, ws.reward_ledger_path).grants),
        ALL_THREE,
        ALL_THREE,
    ),
    # A grant whose payment never landed was not paid, nor ledgered: it is lost whole.
    StateFile(
        "free_time_balances.json",
        "reward",
        lambda ws: ws.balances_path,
        reward_ids,
        lambda ws: [
            payment.grant for payment in parsed(Balances, ws.balances_path).of(IDENTITY).history
        ],
        ALL_THREE,
        WITHOUT_2,
    ),
    # A reservation of a dead writer is released by the next reserve; nothing was settled.
    StateFile(
        "budget_ledger.json",
        "budget",
        lambda ws: ws.budget_ledger_path,
        budget_ids,
        budget_in_flight,
        ["settled-0", "settled-1"],
        ["settled-0", "settled-1"],
    ),
]


def private_mode(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def temp_files(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.*.tmp"))


def start_killed_writer(ws: Workspace, state: StateFile, instant: str) -> subprocess.Popen:
    env = child_env(ws, SWARM_FAILPOINTS=f"write:{state.name}:{instant}")
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(ws.root), state.kind, "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("state", STATE_FILES, ids=[s.name for s in STATE_FILES])
def test_a_writer_killed_mid_write_leaves_a_valid_file_and_the_next_write_works(
    tmp_path: Path, state: StateFile
) -> None:
    """SIGKILL with half the temp file on disk, after its fsync, and right after the
    rename: the file is the old one or the new one, and the leftover temp is swept."""
    workspaces = {instant: Workspace(tmp_path / instant) for instant in INSTANTS}
    before = {}
    for instant, ws in workspaces.items():
        ws.ensure_layout()
        write(ws, state.kind, "task-1")
        before[instant] = state.path(ws).read_bytes()
    writers = {i: start_killed_writer(ws, state, i) for i, ws in workspaces.items()}
    for instant, writer in writers.items():
        output = writer.communicate(timeout=30)[0]
        assert writer.returncode == -signal.SIGKILL, f"{instant}: never reached\n{output}"

    for instant, ws in workspaces.items():
        path = state.path(ws)
        seen = state.seen(ws)  # parses and validates, or raises naming the file
        leftovers = temp_files(path.parent, path.name)
        if instant == "renamed":
            assert any("task-2" in item for item in seen), "the completed rename was lost"
            assert leftovers == []
        else:
            assert path.read_bytes() == before[instant], f"{instant}: the old file changed"
            assert len(leftovers) == 1, "the failpoint did not fire inside the writer"
            assert private_mode(leftovers[0]), "a dead writer's half-written temp is readable"
        assert private_mode(path), "the state file is readable by other users"

        restarted = Workspace(ws.root)
        restarted.ensure_layout()
        assert temp_files(path.parent, path.name) == [], "a dead writer's temp was kept"
        write(restarted, state.kind, "task-3")
        landed = instant == "renamed"
        expected = state.expect_landed if landed else state.expect_lost
        assert state.ids(restarted) == expected, instant


def run_killed_writer(ws: Workspace, kind: str, failpoint: str) -> None:
    env = child_env(ws, SWARM_FAILPOINTS=failpoint)
    writer = subprocess.run(
        [sys.executable, str(WRITER), str(ws.root), kind, "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert writer.returncode == -signal.SIGKILL, f"never reached\n{writer.stderr}"


def journal_lines(ws: Workspace) -> list[dict[str, Any]]:
    raw = ws.queue_journal_path.read_bytes()
    assert raw.endswith(b"\n"), "the journal ends in a torn line"
    return [json.loads(line) for line in raw.splitlines()]


def test_a_writer_killed_mid_append_to_the_queue_journal_commits_nothing(
    workspace: Workspace,
) -> None:
    """A large queue appends to its journal: SIGKILL with half a record on disk. The half
    record was never committed: readers skip it, and the next append cuts it off."""
    # A queue.json large enough that two records do not yet trigger a fold.
    QueueStore(workspace).add({"id": "task-0", "prompt": "many words " * 2000})
    write(workspace, "queue_journal", "task-1")  # starts the journal that continues it
    run_killed_writer(workspace, "queue_journal", "append:queue_journal.jsonl:partial")
    assert not workspace.queue_journal_path.read_bytes().endswith(b"\n"), "nothing was torn"
    assert queue_ids(workspace) == ["task-0", "task-1"]

    write(workspace, "queue_journal", "task-3")
    assert queue_ids(workspace) == ["task-0", "task-1", "task-3"]
    records = journal_lines(workspace)[1:]
    assert [task["id"] for record in records for task in record["tasks"]] == ["task-1", "task-3"]


def test_a_writer_killed_between_a_fold_and_dropping_the_journal_replays_nothing(
    workspace: Workspace,
) -> None:
    """The fold renamed the new queue.json into place and died before removing the
    journal: the journal now continues an older queue.json, so it is ignored, and every
    task is in the queue exactly once."""
    write(workspace, "queue_journal", "task-1")
    run_killed_writer(workspace, "queue_fold", "write:queue.json:renamed")
    unfolded = [task["id"] for record in journal_lines(workspace)[1:] for task in record["tasks"]]
    assert unfolded == ["task-2"], "the journal should still hold the folded record"
    assert queue_ids(workspace) == ["task-1", "task-2"]
    write(workspace, "queue_fold", "task-3")
    assert queue_ids(workspace) == ["task-1", "task-2", "task-3"]
    assert not workspace.queue_journal_path.exists()
    on_disk = json.loads(workspace.queue_path.read_text())["tasks"]
    assert [task["id"] for task in on_disk] == ["task-1", "task-2", "task-3"]


def test_a_worker_killed_writing_the_quality_gate_is_finished_by_the_next_exactly_once(
    api: RunningProcess, workspace: Workspace
) -> None:
    """The real worker dies with half of quality_gate_queue.json in its temp file: in the
    fold on its way out, after the verdict committed with the vote in its journal record.
    The next worker sweeps the temp and folds the journal, writing the vote once."""
    write_queue(workspace, [{"id": "echo", "command": "echo once"}], api.url)
    armed = "write:quality_gate_queue.json:partial"
    killed = run_worker(workspace, "--once", SWARM_FAILPOINTS=armed)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert len(temp_files(workspace.root, workspace.quality_gate_path.name)) == 1
    assert not workspace.quality_gate_path.exists()

    finished = run_worker(workspace, "--once", **FAST_POLL)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert temp_files(workspace.root, workspace.quality_gate_path.name) == []
    history = [e["status"] for e in read_events(workspace) if e["task_id"] == "echo"]
    assert history == ["in_progress", "completed", "pending_review", "approved"]
    assert gate_ids(workspace) == ["echo"]
    assert [grant.task_id for grant in RewardBook(workspace).ledger().grants.values()] == ["echo"]


# --- malformed state files --------------------------------------------------------------

BROKEN_QUEUE = '{\n  "version": "1.1",\n  "tasks": [\n    {"id": "a", "prompt": "x"},,\n  ]\n}\n'
BROKEN_LEDGER = '{\n  "version": 1,\n  "grants": {\n    "t": {"task_id": "t"\n  }\n'
BROKEN_TOOLS = '{\n  "greeter": {\n    "description": "says hello"\n    "keywords": []\n  }\n}\n'


def get(url: str, path: str) -> tuple[int, dict[str, Any]]:
    response = requests.get(url + path, timeout=10)
    return response.status_code, response.json()


def json_place(text: str) -> str:
    """Where Python's JSON parser stops on `text`: what a good error message must repeat."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"line {exc.lineno}, column {exc.colno}"
    raise AssertionError("the sample parses")


def test_a_malformed_queue_is_named_with_its_place_left_untouched_and_the_rest_serves(
    spawn: Callable[..., RunningProcess], workspace: Workspace
) -> None:
    workspace.queue_path.write_text(BROKEN_QUEUE)
    place = json_place(BROKEN_QUEUE)
    api = spawn(["swarm.py", "--port", "0"], child_env(workspace))
    panel = spawn(["control_panel.py", "--port", "0"], child_env(workspace))
    worker = spawn(["worker.py"], child_env(workspace, **FAST_POLL), wait_for_url=False)

    wait_until(lambda: "queue.json is malformed" in worker.output, timeout=20)
    report = next(line for line in worker.lines if "queue.json is malformed" in line)
    assert str(workspace.queue_path) in report and place in report
    added = run_worker(workspace, "add", "more", "echo hi", "--mode", "local")
    assert added.returncode == 2
    assert str(workspace.queue_path) in added.stderr and place in added.stderr

    status, body = get(api.url, "/status")
    assert status == 503 and place in body["error"] and "queue.json" in body["error"]
    token = workspace.token_path.read_text().strip()
    direct = requests.post(
        api.url + "/cycle",
        json={"mode": "local", "task": "echo still here"},
        headers={TOKEN_HEADER: token},
        timeout=30,
    )
    assert direct.status_code == 200 and direct.json()["output"] == "still here\n"
    status, body = get(panel.url, "/api/tasks")
    assert status == 503 and "queue.json" in body["error"] and place in body["error"]
    status, summary = get(panel.url, "/api/summary")
    assert status == 200, summary
    assert workspace.queue_path.read_text() == BROKEN_QUEUE
    assert worker.proc.poll() is None, "the worker gave up instead of waiting for a fix"
    assert worker.output.count("queue.json is malformed") == 1, "reported on every poll"

    write_queue(workspace, [{"id": "fixed", "command": "echo fixed"}], api.url)
    wait_until(lambda: queue_status(workspace, "fixed") == "approved", timeout=30)
    assert get(api.url, "/status")[0] == 200


def queue_status(workspace: Workspace, task_id: str) -> str | None:
    try:
        tasks = QueueStore(workspace).load().tasks
    except StateFileError:
        return None
    return next((t.status.value for t in tasks if t.id == task_id), None)


def test_a_malformed_reward_ledger_or_tool_store_is_named_and_left_untouched(
    api: RunningProcess, spawn: Callable[..., RunningProcess], workspace: Workspace
) -> None:
    """The reward ledger broken: the work is still approved and the event says why nothing
    was paid. The tool store broken: llm tasks fail naming it, local commands still run."""
    workspace.reward_ledger_path.write_text(BROKEN_LEDGER)
    workspace.tool_store_path.write_text(BROKEN_TOOLS)
    write_queue(
        workspace,
        [
            {"id": "echo", "command": "echo paid"},
            {"id": "haiku", "prompt": "Write a haiku about queues"},
        ],
        api.url,
    )
    result = run_worker(workspace, "--once", **FAST_POLL)
    assert result.returncode == 0, result.stdout + result.stderr

    events = {(e["task_id"], e["status"]): e for e in read_events(workspace)}
    reward_error = events[("echo", "approved")]["phase5_reward_error"]
    assert str(workspace.reward_ledger_path) in reward_error
    assert json_place(BROKEN_LEDGER) in reward_error
    routing_error = events[("haiku", "failed")]["errors"]
    assert str(workspace.tool_store_path) in routing_error
    assert json_place(BROKEN_TOOLS) in routing_error
    assert workspace.reward_ledger_path.read_text() == BROKEN_LEDGER
    assert workspace.tool_store_path.read_text() == BROKEN_TOOLS
    assert not workspace.balances_path.exists(), "paid without a ledger entry"

    panel = spawn(["control_panel.py", "--port", "0"], child_env(workspace))
    status, body = get(panel.url, "/api/rewards")
    assert status == 503 and "phase5_reward_ledger.json" in body["error"]
    assert json_place(BROKEN_LEDGER) in body["error"]

    workspace.reward_ledger_path.unlink()
    workspace.tool_store_path.unlink()
    QueueStore(workspace).add({"id": "haiku-2", "prompt": "Write a haiku about queues"})
    assert run_worker(workspace, "--once", **FAST_POLL).returncode == 0
    assert queue_status(workspace, "haiku-2") == "approved"
    assert "task-2" not in RewardBook(workspace).ledger().grants
    assert get(panel.url, "/api/rewards")[0] == 200


def test_a_malformed_event_line_is_reported_by_number_and_new_events_stay_whole(
    api: RunningProcess, spawn: Callable[..., RunningProcess], workspace: Workspace
) -> None:
    """A torn last line (no newline) must not swallow the next event appended after it."""
    good = json.dumps(
        {
            "task_id": "old",
            "worker_id": "w",
            "status": "pending",
            "timestamp": "2026-01-01T00:00:00+00:00",
        }
    )
    torn = '{"task_id": "torn", "status": "compl'
    workspace.log_path.write_text(good + "\n" + torn)
    write_queue(workspace, [{"id": "echo", "command": "echo after the tear"}], api.url)
    assert run_worker(workspace, "--once", **FAST_POLL).returncode == 0

    lines = workspace.log_path.read_text().splitlines()
    assert lines[:2] == [good, torn], "the damaged line was rewritten"
    events = [json.loads(line) for line in lines[2:]]
    assert [e["status"] for e in events if e["task_id"] == "echo"] == [
        "in_progress",
        "completed",
        "pending_review",
        "approved",
    ]

    panel = spawn(["control_panel.py", "--port", "0"], child_env(workspace))

    def log_state() -> dict[str, Any] | None:
        summary = get(panel.url, "/api/summary")[1]["log"]
        return summary if summary["behind_bytes"] == 0 and summary["events"] else None

    log_summary = wait_until(log_state)
    assert log_summary["malformed_count"] == 1
    assert [m["line"] for m in log_summary["malformed"]] == [2]
    status, detail = get(panel.url, "/api/tasks/echo")
    assert status == 200 and len(detail["timeline"]) == 4


# --- a full disk ----------------------------------------------------------------------

DISK_SIZE = "4m"
PRICED_MODEL = "fault-model"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of a few MB to hold the workspace, unmounted afterwards; skipped where the
    test may not mount filesystems (not root, no tmpfs, a locked-down container)."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0755", "tmpfs", str(mountpoint)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("disk-full test needs the `mount` command to create a small tmpfs")
    if mounted.returncode != 0:
        pytest.skip(
            f"disk-full test cannot mount a {DISK_SIZE} tmpfs for the workspace "
            f"(needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}"
        )
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode:
            subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


def fill(folder: Path) -> Path:
    """Write zeros until the filesystem refuses even one more byte."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 4096, 1):
            chunk = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
    finally:
        os.close(fd)
    return filler


def cycle(api: RunningProcess, workspace: Workspace, body: dict[str, Any]) -> requests.Response:
    token = workspace.token_path.read_text().strip()
    return requests.post(api.url + "/cycle", json=body, headers={TOKEN_HEADER: token}, timeout=30)


LLM_BODY = {"prompt": "Write a haiku about disks", "model": PRICED_MODEL, "max_tokens": 50}


def state_snapshot(workspace: Workspace) -> dict[str, bytes]:
    paths = [
        workspace.queue_path,
        workspace.quality_gate_path,
        workspace.reward_ledger_path,
        workspace.balances_path,
        workspace.budget_ledger_path,
    ]
    return {path.name: path.read_bytes() for path in paths}


def test_a_full_disk_fails_writes_cleanly_corrupts_nothing_and_work_resumes_with_space(
    small_disk: Path, tmp_path: Path, spawn: Callable[..., RunningProcess]
) -> None:
    workspace = Workspace(small_disk / "ws")
    workspace.ensure_layout()
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({PRICED_MODEL: {"input": 1.0, "output": 2.0}}))
    with FakeLLMServer() as provider:
        env = child_env(
            workspace,
            SWARM_LLM_BASE_URL=provider.url,
            SWARM_LLM_MODEL=PRICED_MODEL,
            SWARM_PRICES_FILE=str(prices),
            SWARM_LLM_RETRIES="0",
        )
        api = spawn(["swarm.py", "--port", "0"], env)
        write_queue(workspace, [{"id": "before", "command": "echo before"}], api.url)
        assert run_worker(workspace, "--once", **FAST_POLL).returncode == 0
        assert cycle(api, workspace, LLM_BODY).status_code == 200
        QueueStore(workspace).add({"id": "during", "command": "echo during"})
        spent = BudgetLedger(workspace, 5.0).snapshot().spent
        assert spent > 0
        provider.gate = threading.Event()
        in_flight: list[requests.Response] = []
        caller = threading.Thread(target=lambda: in_flight.append(cycle(api, workspace, LLM_BODY)))
        caller.start()
        wait_until(lambda: len(provider.requests) == 2)
        before = state_snapshot(workspace)

        filler = fill(small_disk)
        provider.gate.set()
        caller.join(timeout=30)
        [answered] = in_flight
        assert answered.status_code == 200, "a paid answer was lost to an unwritable ledger"
        assert BudgetLedger(workspace, 5.0).snapshot().reserved > 0, "the hold was dropped"
        added = run_worker(workspace, "add", "late", "echo late", "--mode", "local")
        assert added.returncode == 2
        assert "No space left on device" in added.stderr
        assert str(workspace.queue_journal_path) in added.stderr  # where it commits
        refused = cycle(api, workspace, LLM_BODY)
        assert refused.status_code == 503, refused.text
        assert "No space left on device" in refused.json()["error"]
        assert refused.json()["retryable"] is True
        assert len(provider.requests) == 2, "called the provider without holding its cost"
        assert get(api.url, "/status")[0] == 200

        worker = spawn(["worker.py"], child_env(workspace, **FAST_POLL), wait_for_url=False)
        wait_until(lambda: "cannot write runtime state" in worker.output, timeout=20)
        report = next(line for line in worker.lines if "cannot write runtime state" in line)
        assert str(workspace.queue_journal_path) in report and "No space left" in report
        assert state_snapshot(workspace) == before, "a state file changed on a full disk"
        assert queue_status(workspace, "during") == "pending"
        assert list(workspace.root.glob(".*.tmp")) + list(workspace.state_dir.glob(".*.tmp")) == []
        assert worker.proc.poll() is None, "the worker died instead of waiting for space"

        filler.unlink()
        wait_until(lambda: queue_status(workspace, "during") == "approved", timeout=30)
        assert cycle(api, workspace, LLM_BODY).status_code == 200
    assert worker.output.count("cannot write runtime state") == 1, "reported on every poll"
    assert "writable again" in worker.output
    history = [e["status"] for e in read_events(workspace) if e["task_id"] == "during"]
    assert history == ["in_progress", "completed", "pending_review", "approved"]
    ledger = BudgetLedger(workspace, 5.0).snapshot()
    assert ledger.reserved == 0 and ledger.spent == pytest.approx(3 * spent)
