from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from swarm_runtime.contract import QualityGateFields, QualityGateStatus, Verdict
from swarm_runtime.errors import StateFileError
from swarm_runtime.panel.outcomes import gate_of
from swarm_runtime.panel.state import Panel
from swarm_runtime.phases import quality_gate
from swarm_runtime.phases.critic import Review
from swarm_runtime.phases.quality_gate import GATE_APPLIER, GateDocument, QualityGate
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace, dump_json

APPROVE = Review(verdict=Verdict.APPROVE, confidence=0.95)
REJECT = Review(verdict=Verdict.REJECT, confidence=0.9, issues=["output is empty"])
MORNING = datetime(2026, 1, 2, 9, 0, tzinfo=UTC)
EVENING = datetime(2026, 1, 2, 18, 0, tzinfo=UTC)
LATER = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # after everything in the reference file


def test_a_rejection_then_an_approval_update_the_same_change(workspace: Workspace) -> None:
    gate = QualityGate(workspace)
    text = "Write a haiku about message queues\nMake it calm."
    rejected = gate.record("haiku", text, "model-a", REJECT, 1, now=MORNING)
    assert rejected == QualityGateFields(
        quality_gate_status=QualityGateStatus.REJECTED,
        quality_gate_decision="rejected",
        quality_gate_change_id="haiku",
    )
    approved = gate.record("haiku", text, "model-b", APPROVE, 1, now=EVENING)
    assert approved.model_dump(mode="json") == {
        "quality_gate_status": "needs_qa",
        "quality_gate_decision": "approved",
        "quality_gate_change_id": "haiku",
        "quality_gate_error": None,
    }
    document = quality_gate.load(workspace)
    assert list(document.changes) == ["haiku"]
    change = document.changes["haiku"]
    assert change.title == "Write a haiku about message queues"
    assert change.description == text and change.author_id == "model-b"
    assert (change.created_at, change.updated_at) == (MORNING.isoformat(), EVENING.isoformat())
    assert change.status == QualityGateStatus.NEEDS_QA
    assert change.vote.model_dump(mode="json") == {
        "decision": "approved",
        "verdict": "APPROVE",
        "confidence": 0.95,
        "issues": [],
        "attempt": 1,
        "voted_at": EVENING.isoformat(),
    }


def test_the_file_is_plain_json_matching_the_model(workspace: Workspace) -> None:
    QualityGate(workspace).record("t1", "x" * 5000, "author", REJECT, 2, now=MORNING)
    raw = json.loads(workspace.quality_gate_path.read_text())
    assert raw["version"] == 1 and raw["created_at"] == MORNING.isoformat()
    change = raw["changes"]["t1"]
    assert change["status"] == "rejected" and change["change_id"] == "t1"
    assert change["vote"]["decision"] == "rejected" and change["vote"]["issues"] == REJECT.issues
    assert len(change["title"]) == 240 and len(change["description"].encode()) < 2100
    assert GateDocument.model_validate(raw).model_dump(mode="json") == raw


def test_an_empty_task_text_still_gets_a_title(workspace: Workspace) -> None:
    QualityGate(workspace).record("t9", "\n  \n", "author", APPROVE, 0)
    assert quality_gate.load(workspace).changes["t9"].title == "Task t9"


def test_keys_added_by_other_tools_survive_a_record(workspace: Workspace) -> None:
    gate = QualityGate(workspace)
    gate.record("t1", "task", "author", REJECT, 1)
    raw = json.loads(workspace.quality_gate_path.read_text())
    raw["changes"]["t1"]["qa"] = {"assigned_to": "ops"}
    workspace.quality_gate_path.write_text(json.dumps(raw))
    gate.record("t1", "task", "author", APPROVE, 1)
    assert json.loads(workspace.quality_gate_path.read_text())["changes"]["t1"]["qa"] == {
        "assigned_to": "ops"
    }


def test_load_of_a_missing_file_is_empty(workspace: Workspace) -> None:
    assert quality_gate.load(workspace).changes == {}
    assert not workspace.quality_gate_path.exists()


MALFORMED = [
    ("{not json", "invalid JSON at line 1"),
    ("[]", "must be a JSON object"),
    ('{"version": 2, "created_at": "a", "updated_at": "a", "changes": {}}', "version"),
    (
        '{"version": 1, "created_at": "a", "updated_at": "a", "changes": {"t1": {"title": 1}}}',
        "changes.t1.title",
    ),
    (
        '{"version": 1, "created_at": "a", "updated_at": "a", "changes": {"t1": '
        '{"change_id": "t2", "title": "", "author_id": "a", "created_at": "a", "updated_at": "a",'
        ' "status": "needs_qa", "vote": {"decision": "approved", "verdict": "APPROVE",'
        ' "confidence": 1, "attempt": 0, "voted_at": "a"}}}}',
        "'t1' holds change_id 't2'",
    ),
    (
        '{"version": 1, "created_at": "a", "updated_at": "a", "changes": {"t1": '
        '{"change_id": "t1", "title": "", "author_id": "a", "created_at": "a", "updated_at": "a",'
        ' "status": "merged", "vote": {}}}}',
        "changes.t1.status",
    ),
]


@pytest.mark.parametrize(
    ("content", "problem"),
    MALFORMED,
    ids=["bad-json", "not-object", "version", "field", "key", "status"],
)
def test_a_malformed_file_is_reported_and_left_untouched(
    workspace: Workspace, content: str, problem: str
) -> None:
    path = workspace.quality_gate_path
    path.write_text(content)
    before = path.read_bytes()
    with pytest.raises(StateFileError) as raised:
        QualityGate(workspace).record("t1", "task", "author", APPROVE, 0)
    assert str(path) in str(raised.value) and problem in str(raised.value)
    assert path.read_bytes() == before
    with pytest.raises(StateFileError):
        quality_gate.load(workspace)


def test_a_change_spoiled_by_hand_after_a_vote_is_still_reported(workspace: Workspace) -> None:
    """A change is validated again once its JSON differs from what the gate last saw,
    even though an unchanged one is not."""
    gate = QualityGate(workspace)
    gate.record("first", "echo 1", "w", APPROVE, 0, now=MORNING)
    document = json.loads(workspace.quality_gate_path.read_text())
    document["changes"]["first"]["status"] = 42
    spoiled = json.dumps(document)
    workspace.quality_gate_path.write_text(spoiled)
    with pytest.raises(StateFileError, match="first"):
        gate.record("second", "echo 2", "w", APPROVE, 0, now=EVENING)
    assert workspace.quality_gate_path.read_text() == spoiled


def test_changes_a_vote_does_not_touch_are_written_back_as_read(workspace: Workspace) -> None:
    gate = QualityGate(workspace)
    gate.record("first", "echo 1", "w", APPROVE, 0, now=MORNING)
    document = json.loads(workspace.quality_gate_path.read_text())
    document["changes"]["first"]["qa_note"] = "looked at by hand"
    workspace.quality_gate_path.write_text(json.dumps(document))
    gate.record("second", "echo 2", "w", REJECT, 0, now=EVENING)
    written = json.loads(workspace.quality_gate_path.read_text())["changes"]
    assert written["first"] == document["changes"]["first"]
    assert list(written) == ["first", "second"]


@pytest.mark.parametrize("by_hand", [True, 1.0])
def test_a_number_retyped_by_hand_is_written_back_as_typed(
    workspace: Workspace, by_hand: float
) -> None:
    """The failure this guards against: the gate's next write reusing the text it wrote
    for the change before, because `1 == True == 1.0` in Python."""
    gate = QualityGate(workspace)
    gate.record("first", "echo 1", "w", REJECT, 1, now=MORNING)
    gate.record("second", "echo 2", "w", REJECT, 1, now=MORNING)
    document = json.loads(workspace.quality_gate_path.read_text())
    document["changes"]["first"]["vote"]["attempt"] = by_hand
    workspace.quality_gate_path.write_bytes(dump_json(document))
    gate.record("second", "echo 2", "w", APPROVE, 1, now=EVENING)
    first = json.loads(workspace.quality_gate_path.read_text())["changes"]["first"]
    assert type(first["vote"]["attempt"]) is type(by_hand)


@pytest.mark.parametrize("outstanding", [None, {}], ids=["database", "journal"])
def test_a_vote_that_fails_becomes_an_error_status(
    workspace: Workspace, outstanding: dict[str, list[Any]] | None
) -> None:
    path = workspace.quality_gate_path
    path.write_text("{not json")
    made = QualityGate(workspace).vote("t1", "task", "author", REJECT, 1)(outstanding)
    fields = QualityGateFields.model_validate(made.fields)
    assert fields.quality_gate_status == QualityGateStatus.ERROR
    assert fields.quality_gate_decision == "rejected"
    assert fields.quality_gate_change_id is None
    assert str(path) in fields.quality_gate_error
    assert path.read_text() == "{not json"
    assert made.vouch is None  # nothing to apply


def test_a_vote_that_succeeds_vouches_for_the_change_it_wrote(workspace: Workspace) -> None:
    made = QualityGate(workspace).vote("t1", "task", "author", APPROVE, 0)(None)
    fields = QualityGateFields.model_validate(made.fields)
    assert fields.quality_gate_status == QualityGateStatus.NEEDS_QA
    assert fields.quality_gate_error is None
    written = json.loads(workspace.quality_gate_path.read_text())["changes"]["t1"]
    assert made.vouch == (quality_gate.GATE_APPLIER, written)


def test_a_vote_beside_the_queue_journal_writes_nothing_until_applied(
    workspace: Workspace,
) -> None:
    gate = QualityGate(workspace)
    made = gate.vote("t1", "task", "author", APPROVE, 0)({})
    assert not workspace.quality_gate_path.exists()
    assert made.vouch is not None
    name, change = made.vouch
    gate.apply([change])
    assert json.loads(workspace.quality_gate_path.read_text())["changes"]["t1"] == change
    before = workspace.quality_gate_path.read_bytes()
    gate.apply([change])  # applied again, as after a crash in the fold: nothing changes
    assert workspace.quality_gate_path.read_bytes() == before


def test_a_vote_beside_the_queue_journal_builds_on_the_outstanding_change(
    workspace: Workspace,
) -> None:
    """A re-review whose first vote is still only in the journal keeps its created_at."""
    gate = QualityGate(workspace)
    gate.record("t0", "on file", "author", APPROVE, 0, now=MORNING)
    first = gate.vote("t1", "task", "author", REJECT, 0)({})
    assert first.vouch is not None
    later = QualityGate(workspace)  # another worker's
    second = later.vote("t1", "task", "author", APPROVE, 1)({GATE_APPLIER: [first.vouch[1]]})
    assert second.vouch is not None
    assert second.vouch[1]["created_at"] == first.vouch[1]["created_at"]
    assert second.vouch[1]["vote"]["attempt"] == 1
    later.apply([first.vouch[1], second.vouch[1]])
    changes = json.loads(workspace.quality_gate_path.read_text())["changes"]
    assert list(changes) == ["t0", "t1"]
    assert changes["t1"] == second.vouch[1]


def _record_many(root: str, prefix: str, count: int) -> None:
    gate = QualityGate(Workspace(root))
    for index in range(count):
        gate.record(f"{prefix}-{index}", f"task {index}", prefix, REJECT, 1)
        gate.record("shared", "shared task", prefix, APPROVE, index)


def test_concurrent_writers_in_several_processes_lose_nothing(workspace: Workspace) -> None:
    """Unlocked read-modify-writes by several workers used to drop each other's changes."""
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=_record_many, args=(str(workspace.root), f"w{n}", 15))
        for n in range(4)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
    assert [writer.exitcode for writer in writers] == [0, 0, 0, 0]
    changes = quality_gate.load(workspace).changes
    expected = {f"w{n}-{i}" for n in range(4) for i in range(15)} | {"shared"}
    assert set(changes) == expected
    assert changes["shared"].status == QualityGateStatus.NEEDS_QA
    assert not list(Path(workspace.root).glob(".quality_gate_queue.json.*.tmp"))


# --- a file the reference implementation wrote --------------------------------------------


def reference_change(change_id: str, status: str, ballot: str, vote: str) -> dict[str, Any]:
    """A change as the reference's submit_change_for_vote and record_change_vote leave it."""
    return {
        "change_id": change_id,
        "title": f"Prompt of {change_id}",
        "description": f"Prompt of {change_id}",
        "author_id": "resident_3f2a9c1d",
        "created_at": "2026-02-09T10:00:00.123456+00:00",
        "status": status,
        "gates": {"unit": "pending", "integration": "pending", "e2e": "pending"},
        "qa": {"assigned_to": None, "test_submission_id": None},
        "integration": {"batch_id": None, "status": "pending"},
        "e2e": {"status": "pending"},
        "blind_vote": {"ballot_id": ballot, "status": vote},
    }


def reference_ballot(ballot: str, change_id: str, vote: str) -> dict[str, Any]:
    return {
        "ballot_id": ballot,
        "subject_type": "change",
        "subject_id": change_id,
        "summary": f"Prompt of {change_id}",
        "created_at": "2026-02-09T10:00:00.234567+00:00",
        "status": vote,
    }


REFERENCE_GATE = {
    "version": "1.0",
    "created_at": "2026-02-09T09:59:59.000001+00:00",
    "updated_at": "2026-02-09T10:00:01.345678+00:00",
    "changes": {
        "t1": reference_change("t1", "needs_qa", "vote_0a1b2c3d4e", "approved"),
        "t2": reference_change("t2", "rejected", "vote_5f6a7b8c9d", "rejected"),
        "fix login": reference_change("fix login", "pending_vote", "vote_1e2d3c4b5a", "pending"),
        "chg_77aa88bb99": reference_change(
            "chg_77aa88bb99", "blocked", "vote_9a8b7c6d5e", "approved"
        ),
    },
    "residents": {},
    "test_submissions": {},
    "integration_tasks": {},
    "integration_batches": {},
    "votes": {
        "vote_0a1b2c3d4e": reference_ballot("vote_0a1b2c3d4e", "t1", "approved"),
        "vote_5f6a7b8c9d": reference_ballot("vote_5f6a7b8c9d", "t2", "rejected"),
        "vote_1e2d3c4b5a": reference_ballot("vote_1e2d3c4b5a", "fix login", "pending"),
        "vote_9a8b7c6d5e": reference_ballot("vote_9a8b7c6d5e", "chg_77aa88bb99", "approved"),
    },
    "vote_outbox": ["vote_0a1b2c3d4e", "vote_5f6a7b8c9d", "vote_1e2d3c4b5a", "vote_9a8b7c6d5e"],
}


@pytest.fixture
def reference_gate(workspace: Workspace) -> bytes:
    """Written as the reference writes it: json.dump(indent=2, ensure_ascii=False)."""
    raw = json.dumps(REFERENCE_GATE, indent=2, ensure_ascii=False).encode()
    workspace.quality_gate_path.write_bytes(raw)
    return raw


def test_a_reference_file_is_read_as_it_is(workspace: Workspace, reference_gate: bytes) -> None:
    changes = quality_gate.load(workspace).changes
    assert {key: change.status for key, change in changes.items()} == {
        "t1": "needs_qa",
        "t2": "rejected",
        "fix login": "pending_vote",
        "chg_77aa88bb99": "blocked",
    }
    assert changes["t1"].vote is None
    assert workspace.quality_gate_path.read_bytes() == reference_gate


def test_a_vote_on_a_reference_file_keeps_every_change_and_ballot(
    workspace: Workspace, reference_gate: bytes
) -> None:
    gate = QualityGate(workspace)
    gate.record("t9", "A new task", "author", REJECT, 1, now=LATER)
    assert gate.record("t2", "Prompt of t2", "author", APPROVE, 1, now=LATER) == (
        QualityGateFields(
            quality_gate_status=QualityGateStatus.NEEDS_QA,
            quality_gate_decision="approved",
            quality_gate_change_id="t2",
        )
    )
    after = json.loads(workspace.quality_gate_path.read_text())
    for key, value in REFERENCE_GATE.items():
        if key not in ("changes", "updated_at"):
            assert after[key] == value, f"{key} changed"
    assert after["updated_at"] == LATER.isoformat()
    assert set(after["changes"]) == set(REFERENCE_GATE["changes"]) | {"t9"}
    for change_id in ("t1", "fix login", "chg_77aa88bb99"):
        assert after["changes"][change_id].items() >= REFERENCE_GATE["changes"][change_id].items()
    revoted = after["changes"]["t2"]
    kept = {k: v for k, v in REFERENCE_GATE["changes"]["t2"].items() if k != "status"}
    assert revoted.items() >= kept.items(), "the reference's blind vote or QA fields were lost"
    assert (revoted["status"], revoted["vote"]["decision"]) == ("needs_qa", "approved")
    assert after["changes"]["t9"]["status"] == "rejected"


def test_the_review_tab_lists_reference_changes(
    workspace: Workspace, settings: Settings, reference_gate: bytes
) -> None:
    QualityGate(workspace).record("t9", "A new task", "author", REJECT, 1, now=LATER)
    panel = Panel(settings)
    try:
        everything = gate_of(panel, None)
        rejected = gate_of(panel, "rejected")
    finally:
        panel.close()
    assert everything["counts"] == {"needs_qa": 1, "rejected": 2, "pending_vote": 1, "blocked": 1}
    assert [row["change_id"] for row in rejected["changes"]] == ["t9", "t2"]
    reference_row = rejected["changes"][1]
    assert reference_row["blind_vote"] == {"ballot_id": "vote_5f6a7b8c9d", "status": "rejected"}
    assert reference_row["vote"] == {
        "decision": None,
        "verdict": None,
        "confidence": None,
        "issues": [],
    }
    assert reference_row["updated_at"] == REFERENCE_GATE["changes"]["t2"]["created_at"]
