"""Fault injection on the state files: killed writers, malformed files, a full disk.

Each test damages a real workspace the way the world does (SIGKILL inside the atomic
writer, a hand-edited file, a filesystem with no space left) and then checks three
things: the file is valid and holds the old content or the new, never a mix; the error
names the file and the place; and the runtime carries on once the cause is gone.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, child_env
from helpers.faults_state_writer import IDENTITY, SETTLED_COST, write
from pydantic import BaseModel

import quality_gate
from budget_ledger import BudgetLedger, LedgerDocument
from queue_store import QueueStore
from state_store import Workspace, read_json
from swarm_enrichment import Balances, RewardBook, RewardLedger, parse_state

WRITER = ROOT / "tests" / "helpers" / "faults_state_writer.py"
INSTANTS = ("partial", "before_rename", "renamed")


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
    StateFile("queue.json", "queue", lambda ws: ws.queue_path, queue_ids, queue_ids,
              ALL_THREE, WITHOUT_2),
    StateFile("quality_gate_queue.json", "quality_gate", lambda ws: ws.quality_gate_path,
              gate_ids, gate_ids, ALL_THREE, WITHOUT_2),
    StateFile("phase5_reward_ledger.json", "reward", lambda ws: ws.reward_ledger_path,
              reward_ids, lambda ws: sorted(parsed(RewardLedger, ws.reward_ledger_path).grants),
              ALL_THREE, WITHOUT_2),
    # The ledger holds the pending grant before balances are written, so the next grant
    # finishes it whichever instant the balances writer died at.
    StateFile("free_time_balances.json", "reward", lambda ws: ws.balances_path,
              reward_ids, lambda ws: [payment.grant for payment in
                                     parsed(Balances, ws.balances_path).of(IDENTITY).history],
              ALL_THREE, ALL_THREE),
    # A reservation of a dead writer is released by the next reserve; nothing was settled.
    StateFile("budget_ledger.json", "budget", lambda ws: ws.budget_ledger_path,
              budget_ids, budget_in_flight, ["settled-0", "settled-1"],
              ["settled-0", "settled-1"]),
]


def temp_files(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.*.tmp"))


def start_killed_writer(ws: Workspace, state: StateFile, instant: str) -> subprocess.Popen:
    env = child_env(ws, SWARM_FAILPOINTS=f"write:{state.name}:{instant}")
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(ws.root), state.kind, "2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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

        restarted = Workspace(ws.root)
        restarted.ensure_layout()
        assert temp_files(path.parent, path.name) == [], "a dead writer's temp was kept"
        write(restarted, state.kind, "task-3")
        landed = instant == "renamed"
        expected = state.expect_landed if landed else state.expect_lost
        assert state.ids(restarted) == expected, instant
