"""Phase 5 rewards: the formula, the split, and exactly-once grants across crashes and races."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, child_env

from swarm_runtime.contract import RewardFields
from swarm_runtime.errors import StateFileError
from swarm_runtime.panel.outcomes import rewards_of
from swarm_runtime.panel.state import Panel
from swarm_runtime.phases.rewards import (
    HISTORY_LIMIT,
    Reason,
    RewardBook,
    RewardOutcome,
    is_under_budget,
    not_approved_fields,
    reward_tokens,
    split_grant,
)
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace

BUDGET = {"max_budget": 0.20, "budget_used": 0.05, "review_confidence": 0.9}
BUDGET_TOKENS = 8  # 0.75 * 8 + 0.9 * 2 = 7.8
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

GRANT_SCRIPT = """
import json, sys
from swarm_runtime.store.state_files import Workspace
from swarm_runtime.phases.rewards import RewardBook
root, task_id, identity_id = sys.argv[1:4]
book = RewardBook(Workspace(root))
outcome = book.grant(task_id, identity_id, max_budget=0.2, budget_used=0.05,
                     review_confidence=0.9)
print(outcome.model_dump_json(), flush=True)
"""

APPLY_SCRIPT = """
import json, sys
from swarm_runtime.store.state_files import Workspace
from swarm_runtime.phases.rewards import RewardBook
root, payloads = sys.argv[1:3]
RewardBook(Workspace(root)).apply(json.loads(open(payloads).read()))
"""

RACING_SCRIPT = """
import os, sys, time
from swarm_runtime.store.state_files import Workspace
from swarm_runtime.phases.rewards import RewardBook
root, go, own_task = sys.argv[1:4]
book = RewardBook(Workspace(root))
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
for task_id in ("shared", own_task):
    outcome = book.grant(task_id, "ada", max_budget=0.2, budget_used=0.05, review_confidence=0.9)
    print(outcome.model_dump_json(), flush=True)
"""


@pytest.fixture
def book(workspace: Workspace) -> RewardBook:
    return RewardBook(workspace)


def total_tokens(book: RewardBook, identity_id: str) -> int:
    return book.balances().identities[identity_id].total_tokens


def write_balance(workspace: Workspace, identity_id: str, **fields: Any) -> None:
    document = {"version": 1, "identities": {identity_id: fields}}
    workspace.balances_path.write_text(json.dumps(document))


def run_grant(
    workspace: Workspace, task_id: str, identity_id: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", GRANT_SCRIPT, str(workspace.root), task_id, identity_id],
        cwd=ROOT,
        env=child_env(workspace, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- the formula -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_budget", "used", "confidence", "tokens"),
    [
        (0.20, 0.05, 0.9, 8),  # 6 + 1.8
        (1.0, 0.0, 1.0, 10),  # everything saved, fully sure: the top
        (1.0, 0.0, 5.0, 10),  # confidence above 1 is clamped
        (1.0, 0.5, 0.5, 5),  # 4 + 1
        (1.0, 0.75, 0.25, 3),  # 2 + 0.5: halves round up
        (1.0, 0.99, 0.0, 1),  # 0.08 rounds to 0, the floor is 1
        (1.0, 0.99, -3.0, 1),  # negative confidence counts as 0
        (1.0, 0.5, None, 5),  # no confidence counts as 0.5
        (1.0, 0.5, float("nan"), 5),
        (0.10, 0.12, 0.9, 0),  # over budget
        (0.10, 0.10, 0.9, 0),  # exactly on budget saved nothing
        (0.0, 0.0, 0.9, 0),  # no budget
        (-1.0, 0.0, 0.9, 0),
        (None, 0.01, 0.9, 0),
        (0.10, None, 0.9, 0),  # unknown spend
        (0.10, -0.01, 0.9, 0),  # impossible spend
        (float("inf"), 0.0, 0.9, 0),
    ],
)
def test_reward_tokens(
    max_budget: float | None, used: float | None, confidence: float | None, tokens: int
) -> None:
    assert reward_tokens(max_budget, used, confidence) == tokens
    assert is_under_budget(max_budget, used) == (tokens > 0)


@pytest.mark.parametrize(
    ("tokens", "free_room", "journal_room", "shares"),
    [
        (10, 500, 200, (7, 3)),
        (8, 500, 200, (6, 2)),
        (5, 500, 200, (4, 1)),  # 3.5 rounds up
        (1, 500, 200, (1, 0)),
        (0, 500, 200, (0, 0)),
        (10, 4, 200, (4, 3)),  # the free-time pool is nearly full; no spill to journal
        (10, 500, 1, (7, 1)),
        (10, 0, 0, (0, 0)),
        (10, -5, -1, (0, 0)),  # a pool over its cap has no room
    ],
)
def test_split_grant(
    tokens: int, free_room: int, journal_room: int, shares: tuple[int, int]
) -> None:
    assert split_grant(tokens, free_room, journal_room) == shares


# --- outcomes and event fields -------------------------------------------------------------


def test_event_fields_carry_every_reward_key_with_null_where_empty() -> None:
    fields = RewardOutcome(identity="ada", reason=Reason.NOT_UNDER_BUDGET).event_fields()
    assert set(fields) == set(RewardFields.model_fields)
    assert fields["phase5_reward_reason"] == "not_under_budget"
    assert fields["phase5_reward_applied"] is False
    assert fields["phase5_reward_tokens_awarded"] is None
    assert not_approved_fields("ada") == fields | {"phase5_reward_reason": "review_not_approved"}


def test_a_grant_applies_once_and_a_second_review_reports_already_granted(
    book: RewardBook,
) -> None:
    first = book.grant("t1", "resident_default", **BUDGET, now=NOW)
    assert first.event_fields() == {
        "phase5_reward_applied": True,
        "phase5_reward_tokens_requested": BUDGET_TOKENS,
        "phase5_reward_tokens_awarded": BUDGET_TOKENS,
        "phase5_reward_identity": "resident_default",
        "phase5_reward_reason": "worker_approved_under_budget:t1",
        "phase5_reward_granted_at": NOW.isoformat(),
        "phase5_reward_ledger_recorded": True,
        "phase5_reward_error": None,
    }
    balances_before = book.balances_path.read_bytes()
    again = book.grant("t1", "resident_default", **BUDGET)
    assert (again.applied, again.reason) == (False, "already_granted")
    assert (again.tokens_awarded, again.granted_at) == (BUDGET_TOKENS, NOW.isoformat())
    assert again.ledger_recorded is True
    assert book.balances_path.read_bytes() == balances_before
    ledger = json.loads(book.ledger_path.read_text())
    assert ledger["version"] == 1
    assert list(ledger["grants"]) == ["t1::resident_default"]
    assert ledger["grants"]["t1::resident_default"]["state"] == "applied"
    balance = book.balances().identities["resident_default"]
    assert (balance.free_time_tokens, balance.journal_tokens) == (6, 2)


def test_each_identity_earns_its_own_grant_for_the_same_task(book: RewardBook) -> None:
    assert book.grant("t1", "ada", **BUDGET).applied
    assert book.grant("t1", "grace@lab:2", **BUDGET).applied
    assert set(book.ledger().grants) == {"t1::ada", "t1::grace@lab:2"}
    assert total_tokens(book, "ada") == total_tokens(book, "grace@lab:2") == BUDGET_TOKENS


def test_not_under_budget_writes_nothing(book: RewardBook, workspace: Workspace) -> None:
    outcome = book.grant("t1", "ada", max_budget=0.10, budget_used=0.12, review_confidence=0.9)
    assert (outcome.applied, outcome.reason, outcome.ledger_recorded) == (
        False,
        "not_under_budget",
        None,
    )
    assert not workspace.reward_ledger_path.exists()
    assert not workspace.balances_path.exists()


def test_a_full_pool_is_not_ledgered_so_the_task_can_earn_once_there_is_room(
    book: RewardBook, workspace: Workspace
) -> None:
    write_balance(
        workspace, "ada", free_time_tokens=10, journal_tokens=5, free_time_cap=10, journal_cap=5
    )
    full = book.grant("t1", "ada", **BUDGET)
    assert (full.applied, full.reason, full.tokens_requested, full.tokens_awarded) == (
        False,
        "pool_full",
        BUDGET_TOKENS,
        0,
    )
    assert full.ledger_recorded is False
    assert book.ledger().grants == {}
    write_balance(
        workspace, "ada", free_time_tokens=8, journal_tokens=5, free_time_cap=10, journal_cap=5
    )
    partial = book.grant("t1", "ada", **BUDGET)
    assert (partial.applied, partial.tokens_requested, partial.tokens_awarded) == (
        True,
        BUDGET_TOKENS,
        2,
    )
    balance = book.balances().identities["ada"]
    assert (balance.free_time_tokens, balance.journal_tokens) == (10, 5)


def test_history_keeps_only_the_latest_payments(book: RewardBook, workspace: Workspace) -> None:
    old = [
        {"grant": f"old{i}::ada", "free_time": 1, "journal": 0, "paid_at": "then"}
        for i in range(HISTORY_LIMIT)
    ]
    write_balance(workspace, "ada", free_time_tokens=HISTORY_LIMIT, history=old)
    book.grant("t1", "ada", **BUDGET)
    history = book.balances().identities["ada"].history
    assert len(history) == HISTORY_LIMIT
    assert history[0].grant == "old1::ada"
    assert history[-1].grant == "t1::ada"


@pytest.mark.parametrize(
    ("task_id", "identity_id"),
    [
        ("t1", ""),
        ("t1", "has space"),
        ("t1", "x" * 129),
        ("t1", "idé"),
        ("t1", "a/b"),
        ("", "ada"),
        ("t:1", "ada"),
        ("..", "ada"),
    ],
)
def test_invalid_ids_are_refused_and_reported_without_writing(
    book: RewardBook, workspace: Workspace, task_id: str, identity_id: str
) -> None:
    with pytest.raises(ValueError):
        book.grant(task_id, identity_id, **BUDGET)
    outcome = book.grant_safely(task_id, identity_id, **BUDGET)
    assert (outcome.applied, outcome.reason) == (False, "reward_error")
    assert outcome.error
    assert not workspace.reward_ledger_path.exists()


# --- malformed files ----------------------------------------------------------------------

VALID_GRANT = {
    "task_id": "t0",
    "identity_id": "ada",
    "tokens_requested": 3,
    "free_time_awarded": 2,
    "journal_awarded": 1,
    "tokens_awarded": 3,
    "reason": "worker_approved_under_budget:t0",
    "granted_at": "then",
}


@pytest.mark.parametrize(
    ("which", "content", "problem"),
    [
        ("ledger", "{not json", "invalid JSON"),
        ("ledger", "[]", "must be a JSON object"),
        ("ledger", json.dumps({"version": 2, "grants": {}}), "version"),
        ("ledger", json.dumps({"version": 1, "grants": []}), "grants"),
        (
            "ledger",
            json.dumps(
                {"version": 1, "grants": {"t0::ada": {**VALID_GRANT, "tokens_awarded": "many"}}}
            ),
            "grants.t0::ada.tokens_awarded",
        ),
        ("ledger", json.dumps({"version": 1, "grants": {"t0::bob": VALID_GRANT}}), "t0::ada"),
        (
            "ledger",
            json.dumps({"version": 1, "grants": {"t0::ada": {**VALID_GRANT, "tokens_awarded": 9}}}),
            "tokens_awarded must equal",
        ),
        ("balances", "\xff", "invalid JSON"),
        (
            "balances",
            json.dumps({"version": 1, "identities": {"ada": {"free_time_tokens": -1}}}),
            "identities.ada.free_time_tokens",
        ),
        ("balances", json.dumps({"version": 1, "identities": {"a b": {}}}), "identities"),
        (
            "balances",
            json.dumps({"version": 1, "identities": {"ada": {"history": [{}]}}}),
            "identities.ada.history.0.grant",
        ),
    ],
)
def test_a_malformed_file_is_reported_and_left_untouched(
    book: RewardBook, workspace: Workspace, which: str, content: str, problem: str
) -> None:
    broken = workspace.reward_ledger_path if which == "ledger" else workspace.balances_path
    other = workspace.balances_path if which == "ledger" else workspace.reward_ledger_path
    broken.write_text(content)
    with pytest.raises(StateFileError) as caught:
        book.grant("t1", "ada", **BUDGET)
    assert caught.value.path == broken
    assert problem in str(caught.value)
    assert broken.read_text() == content
    assert not other.exists(), "nothing may be written when either file is unusable"
    outcome = book.grant_safely("t1", "ada", **BUDGET)
    assert (outcome.applied, outcome.reason) == (False, "reward_error")
    assert str(broken) in (outcome.error or "")
    assert outcome.event_fields()["phase5_reward_error"] == outcome.error


# --- processes: races and crashes -----------------------------------------------------------


def test_racing_processes_pay_a_shared_task_exactly_once(
    workspace: Workspace, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACING_SCRIPT, str(workspace.root), str(go), f"own{i}"],
            cwd=ROOT,
            env=child_env(workspace),
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    for racer in racers:
        assert racer.stdout is not None and racer.stdout.readline().strip() == "ready"
    go.touch()
    outcomes = []
    for racer in racers:
        out, _ = racer.communicate(timeout=60)
        assert racer.returncode == 0
        outcomes += [RewardOutcome.model_validate_json(line) for line in out.splitlines()]
    shared = [o for o in outcomes if o.reason.endswith(":shared") or o.reason == "already_granted"]
    assert sum(o.applied for o in shared) == 1
    assert len(shared) == len(racers)
    book = RewardBook(workspace)
    assert len(book.ledger().grants) == len(racers) + 1
    assert total_tokens(book, "ada") == BUDGET_TOKENS * (len(racers) + 1)


@pytest.mark.parametrize(
    "crash_at", ["reward.after_balances", "write:phase5_reward_ledger.json:before_rename"]
)
@pytest.mark.parametrize("first_back", ["same_task", "other_task"])
def test_a_grant_killed_between_its_writes_pays_exactly_once(
    book: RewardBook, workspace: Workspace, crash_at: str, first_back: str
) -> None:
    crashed = run_grant(workspace, "t1", "ada", SWARM_FAILPOINTS=crash_at)
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    assert "t1::ada" not in book.ledger().grants  # paid, not yet ledgered
    assert total_tokens(book, "ada") == BUDGET_TOKENS
    if first_back == "same_task":
        redo = book.grant("t1", "ada", **BUDGET)
        assert (redo.applied, redo.tokens_awarded) == (True, BUDGET_TOKENS)
        assert book.grant("t2", "ada", **BUDGET).applied
    else:
        assert book.grant("t2", "ada", **BUDGET).applied
        assert book.grant("t1", "ada", **BUDGET).reason == "already_granted"
    ledger = book.ledger()
    assert {g.state for g in ledger.grants.values()} == {"applied"}
    assert total_tokens(book, "ada") == sum(g.tokens_awarded for g in ledger.grants.values())
    assert total_tokens(book, "ada") == 2 * BUDGET_TOKENS


def test_recover_finishes_a_grant_left_pending_even_behind_a_full_history(
    book: RewardBook, workspace: Workspace
) -> None:
    old = [
        {"grant": f"old{i}::ada", "free_time": 0, "journal": 0, "paid_at": "then"}
        for i in range(HISTORY_LIMIT)
    ]
    write_balance(workspace, "ada", history=old)
    crashed = run_grant(workspace, "t1", "ada", SWARM_FAILPOINTS="reward.after_balances")
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    assert total_tokens(book, "ada") == BUDGET_TOKENS
    assert book.recover() == 1
    assert book.recover() == 0
    assert total_tokens(book, "ada") == BUDGET_TOKENS
    recovered = book.ledger().grants["t1::ada"]
    assert recovered.state == "applied" and recovered.tokens_awarded == BUDGET_TOKENS


@pytest.mark.parametrize("paid_before_the_crash", [False, True])
def test_a_pending_grant_from_the_earlier_write_order_is_finished_once(
    book: RewardBook, workspace: Workspace, paid_before_the_crash: bool
) -> None:
    """Ledgers written when the intent was ledgered first may hold a pending grant; it
    is paid unless its identity's history already names it, then marked applied."""
    pending = {
        "task_id": "t1",
        "identity_id": "ada",
        "tokens_requested": 8,
        "free_time_awarded": 6,
        "journal_awarded": 2,
        "tokens_awarded": 8,
        "reason": "worker_approved_under_budget:t1",
        "granted_at": "2026-12-01T10:00:00+00:00",
        "state": "pending",
    }
    ledger = {"version": 1, "grants": {"t1::ada": pending}}
    workspace.reward_ledger_path.write_text(json.dumps(ledger))
    paid = [{"grant": "t1::ada", "free_time": 6, "journal": 2, "paid_at": "then"}]
    history = paid if paid_before_the_crash else []
    paid_tokens = {"free_time_tokens": 6 * len(history), "journal_tokens": 2 * len(history)}
    write_balance(workspace, "ada", **paid_tokens, history=history)
    assert book.recover() == 1
    assert book.recover() == 0
    assert total_tokens(book, "ada") == 8
    assert book.ledger().grants["t1::ada"].state == "applied"


def test_a_payment_whose_ledger_entry_was_lost_is_ledgered_from_its_history_line(
    book: RewardBook, workspace: Workspace
) -> None:
    """Only what was paid is known: the rebuilt entry asks for what it paid and says
    when it was ledgered. A history line naming another identity is not ours to ledger."""
    history = [{"grant": "t1::ada", "free_time": 6, "journal": 2, "paid_at": "then"}]
    write_balance(workspace, "ada", free_time_tokens=6, journal_tokens=2, history=history)
    assert book.recover() == 1
    rebuilt = book.ledger().grants["t1::ada"]
    assert (rebuilt.tokens_requested, rebuilt.tokens_awarded, rebuilt.shares) == (8, 8, (6, 2))
    assert rebuilt.granted_at == "then" and "ledgered_after_a_crash_at" in rebuilt.model_extra
    assert book.grant("t1", "ada", **BUDGET).reason == "already_granted"
    assert total_tokens(book, "ada") == 8
    foreign = [{"grant": "t2::bob", "free_time": 1, "journal": 0, "paid_at": "then"}]
    write_balance(workspace, "ada", free_time_tokens=1, history=foreign)
    assert book.recover() == 0
    assert "t2::bob" not in book.ledger().grants


def test_a_grant_sees_what_another_process_wrote_since_this_one_last_wrote(
    book: RewardBook, workspace: Workspace
) -> None:
    """A book takes up the models it last wrote only while both files are exactly as it
    wrote them: another writer's grant, or an operator's edit, is read, never lost."""
    assert book.grant("t1", "ada", **BUDGET).applied
    assert run_grant(workspace, "t2", "bob").returncode == 0
    assert book.grant("t3", "ada", **BUDGET).applied
    assert set(book.ledger().grants) == {"t1::ada", "t2::bob", "t3::ada"}
    assert total_tokens(book, "bob") == BUDGET_TOKENS
    balances = json.loads(workspace.balances_path.read_text())
    balances["identities"]["ada"]["free_time_cap"] = 0
    balances["identities"]["ada"]["journal_cap"] = 0
    workspace.balances_path.write_text(json.dumps(balances))
    assert book.grant("t4", "ada", **BUDGET).reason == "pool_full"  # writes nothing
    balances["identities"]["ada"]["free_time_cap"] = 500
    balances["identities"]["ada"]["journal_cap"] = 200
    workspace.balances_path.write_text(json.dumps(balances))
    assert book.grant("t6", "ada", **BUDGET).applied
    assert total_tokens(book, "ada") == 3 * BUDGET_TOKENS


# --- grants beside the queue journal -----------------------------------------------------
# A worker on the files decides a grant inside its verdict's transaction and writes
# nothing: the journal record vouches for it, and the journal's fold applies it.


def decided(book: RewardBook, task_id: str, outstanding: list[Any]) -> dict[str, Any] | None:
    """The grant as the journal would vouch for it (None if nothing was paid)."""
    outcome = book.grant(task_id, "ada", **BUDGET, outstanding=outstanding)
    return None if outcome.paid is None else outcome.paid.model_dump(mode="json")


def test_a_grant_beside_the_journal_writes_nothing_and_counts_what_is_outstanding(
    book: RewardBook, workspace: Workspace
) -> None:
    write_balance(workspace, "ada", free_time_cap=6, journal_cap=2)
    before = workspace.balances_path.read_bytes()
    first = decided(book, "t1", [])
    assert first is not None and first["tokens_awarded"] == BUDGET_TOKENS
    assert workspace.balances_path.read_bytes() == before
    assert not workspace.reward_ledger_path.exists()
    assert book.grant("t1", "ada", **BUDGET, outstanding=[first]).reason == "already_granted"
    assert book.grant("t2", "ada", **BUDGET, outstanding=[first]).reason == "pool_full"
    book.apply([first])
    book.apply([first])  # again, as after a crash in the fold: paid once
    assert total_tokens(book, "ada") == BUDGET_TOKENS
    assert book.ledger().grants["t1::ada"].state == "applied"


def test_a_grant_laid_over_in_memory_is_forgotten_when_its_transaction_failed(
    book: RewardBook,
) -> None:
    """The grant reached no journal record, so it is not outstanding the next time: the
    next transaction decides it again instead of finding it paid."""
    assert decided(book, "t1", []) is not None
    again = decided(book, "t1", [])
    assert again is not None and again["tokens_awarded"] == BUDGET_TOKENS


def test_a_batch_killed_between_its_writes_pays_each_grant_exactly_once(
    book: RewardBook, workspace: Workspace, tmp_path: Path
) -> None:
    """More grants for one identity than its history keeps: the fold applies them a
    history's worth at a time, so a crash between a chunk's two writes still finds
    each of its payments named in the history."""
    outstanding: list[Any] = []
    for number in range(HISTORY_LIMIT + 30):
        grant = decided(book, f"t{number}", outstanding)
        assert grant is not None
        outstanding.append(grant)
    payloads = tmp_path / "payloads.json"
    payloads.write_text(json.dumps(outstanding))
    command = [sys.executable, "-c", APPLY_SCRIPT, str(workspace.root), str(payloads)]
    env = child_env(workspace, SWARM_FAILPOINTS="reward.after_balances")
    crashed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert crashed.returncode == -9, crashed.stderr
    assert not workspace.reward_ledger_path.exists()
    assert total_tokens(book, "ada") == HISTORY_LIMIT * BUDGET_TOKENS
    RewardBook(workspace).apply(outstanding)
    ledger = book.ledger()
    assert len(ledger.grants) == len(outstanding)
    assert total_tokens(book, "ada") == len(outstanding) * BUDGET_TOKENS


# --- files the reference implementation wrote -----------------------------------------------

# Its ledger and balances, in its key order and its json.dump(indent=2) formatting.
REFERENCE_GRANT = {
    "task_id": "t1",
    "identity_id": "resident_default",
    "tokens_requested": 8,
    "tokens_awarded": 8,
    "budget_used": 0.05,
    "max_budget": 0.2,
    "review_confidence": 0.9,
    "reason": "worker_approved_under_budget:t1",
    "granted_at": "2026-02-09T10:00:00.123456+00:00",
}
REFERENCE_FREE_TEXT_GRANT = {
    **REFERENCE_GRANT,
    "task_id": "Fix the login page",
    "tokens_requested": 3,
    "tokens_awarded": 3,
    "reason": "worker_approved_under_budget:Fix the login page",
}
REFERENCE_LEDGER = {
    "version": 1,
    "grants": {
        "t1::resident_default": REFERENCE_GRANT,
        "Fix the login page::resident_default": REFERENCE_FREE_TEXT_GRANT,
    },
}
REFERENCE_HISTORY_LINE = {
    "granted_total": 8,
    "free_time_granted": 5,
    "journal_granted": 3,
    "reason": "worker_approved_under_budget:t1",
    "timestamp": "2026-02-09T11:00:00.654321",
    "free_capped": False,
    "journal_capped": False,
}
REFERENCE_BALANCES = {
    "resident_default": {
        "tokens": 8,
        "journal_tokens": 3,
        "free_time_cap": 500,
        "history": [REFERENCE_HISTORY_LINE],
        "spending_history": [],
    },
    "identity_7f3a": {
        "tokens": 120,
        "journal_tokens": 40,
        "free_time_cap": 650,
        "history": [],
        "spending_history": [{"tokens": 30, "activity": "creative_writing"}],
    },
}


def write_reference_files(workspace: Workspace, ledger: dict[str, Any] = REFERENCE_LEDGER) -> None:
    workspace.reward_ledger_path.write_text(json.dumps(ledger, indent=2, ensure_ascii=False))
    workspace.balances_path.write_text(json.dumps(REFERENCE_BALANCES, indent=2))


def test_a_grant_the_reference_ledger_holds_is_not_paid_again(
    book: RewardBook, workspace: Workspace
) -> None:
    write_reference_files(workspace)
    files_before = [workspace.reward_ledger_path.read_bytes(), workspace.balances_path.read_bytes()]
    again = book.grant("t1", "resident_default", **BUDGET)
    assert again.event_fields() == {
        "phase5_reward_applied": False,
        "phase5_reward_tokens_requested": 8,
        "phase5_reward_tokens_awarded": 8,
        "phase5_reward_identity": "resident_default",
        "phase5_reward_reason": "already_granted",
        "phase5_reward_granted_at": REFERENCE_GRANT["granted_at"],
        "phase5_reward_ledger_recorded": True,
        "phase5_reward_error": None,
    }
    assert [workspace.reward_ledger_path.read_bytes(), workspace.balances_path.read_bytes()] == (
        files_before
    ), "a reference file was rewritten though nothing was paid"
    assert total_tokens(book, "resident_default") == 8 + 3


def test_a_new_grant_joins_the_reference_files_and_loses_nothing(
    book: RewardBook, workspace: Workspace
) -> None:
    write_reference_files(workspace)
    assert book.grant("t2", "resident_default", **BUDGET).applied
    grants = json.loads(workspace.reward_ledger_path.read_text())["grants"]
    assert set(grants) == set(REFERENCE_LEDGER["grants"]) | {"t2::resident_default"}
    for key, entry in REFERENCE_LEDGER["grants"].items():
        assert grants[key].items() >= entry.items(), f"{key} lost a field or a value"
    assert book.grant("t1", "resident_default", **BUDGET).reason == "already_granted"
    assert book.grant("t2", "resident_default", **BUDGET).reason == "already_granted"

    identities = json.loads(workspace.balances_path.read_text())["identities"]
    ours = identities["resident_default"]
    assert (ours["free_time_tokens"], ours["journal_tokens"]) == (8 + 6, 3 + 2)
    assert ours["free_time_cap"] == 500 and ours["spending_history"] == []
    assert ours["reference_history"] == [REFERENCE_HISTORY_LINE]
    assert [payment["grant"] for payment in ours["history"]] == ["t2::resident_default"]
    assert identities["identity_7f3a"] == {
        "free_time_tokens": 120,
        "journal_tokens": 40,
        "free_time_cap": 650,
        "journal_cap": 200,
        "history": [],
        "reference_history": [],
        "spending_history": [{"tokens": 30, "activity": "creative_writing"}],
    }


def test_a_reference_grant_that_awarded_nothing_does_not_block_the_task_forever(
    book: RewardBook, workspace: Workspace
) -> None:
    """The reference ledgered a grant its full pools cut to 0, so the task could never earn."""
    empty = {**REFERENCE_GRANT, "tokens_awarded": 0}
    write_reference_files(workspace, {"version": 1, "grants": {"t1::resident_default": empty}})
    paid = book.grant("t1", "resident_default", **BUDGET)
    assert (paid.applied, paid.tokens_awarded) == (True, BUDGET_TOKENS)
    entry = json.loads(workspace.reward_ledger_path.read_text())["grants"]["t1::resident_default"]
    assert entry["replaces"] == empty
    assert total_tokens(book, "resident_default") == 8 + 3 + BUDGET_TOKENS


def test_the_panel_shows_the_reference_grants_and_balances(
    workspace: Workspace, settings: Settings
) -> None:
    write_reference_files(workspace)
    panel = Panel(settings)
    try:
        rewards = rewards_of(panel)
    finally:
        panel.close()
    assert rewards["total_grants"] == 2
    assert {grant["task_id"] for grant in rewards["grants"]} == {"t1", "Fix the login page"}
    assert rewards["identities"]["identity_7f3a"]["total"] == 120 + 40


def test_a_grant_killed_beside_reference_entries_pays_once_and_keeps_them(
    book: RewardBook, workspace: Workspace
) -> None:
    write_reference_files(workspace)
    crashed = run_grant(
        workspace, "t2", "resident_default", SWARM_FAILPOINTS="reward.after_balances"
    )
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    assert book.recover() == 1
    assert total_tokens(book, "resident_default") == 8 + 3 + BUDGET_TOKENS
    grants = book.ledger().grants
    assert grants["t1::resident_default"].state == grants["t2::resident_default"].state == "applied"
    assert book.grant("t1", "resident_default", **BUDGET).reason == "already_granted"
