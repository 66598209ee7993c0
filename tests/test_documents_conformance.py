"""The shared documents, the budget ledger, the pause switch, the quality gate and the
rewards, in the workspace and in a real PostgreSQL database: the same answers, and the
same guarantees: no number of processes reserving at once holds more than the limit, and
no number of them granting at once pays a task to an identity twice."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import ROOT

from swarm_runtime.errors import GlobalBudgetExceeded, StateFileError, TaskBudgetExceeded
from swarm_runtime.llm.budget import BudgetLedger
from swarm_runtime.phases.rewards import RewardBook, RewardOutcome
from swarm_runtime.store.documents import SharedDocument, reward_documents, shared_document
from swarm_runtime.store.pause import read_pause, set_pause
from swarm_runtime.store.state_files import Workspace

Opener = Callable[[str], SharedDocument]


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(backend: str, request: pytest.FixtureRequest) -> str | None:
    return str(request.getfixturevalue("database_url")) if backend == "postgres" else None


@pytest.fixture
def open_database(url: str | None) -> Iterator[Callable[[], Any]]:
    """Each database opened is another process's view: its own connections (None: files)."""
    databases: list[Any] = []

    def open_one() -> Any:
        if url is None:
            return None
        from swarm_runtime.store.database import Database

        databases.append(Database.connect(url, pool_size=1))
        return databases[-1]

    yield open_one
    for database in databases:
        database.close()


@pytest.fixture
def open_document(open_database: Callable[[], Any], workspace: Workspace) -> Opener:
    return lambda name: shared_document(
        workspace, workspace.root / ".swarm" / name, open_database()
    )


def ledger(open_document: Opener, workspace: Workspace, limit: float) -> BudgetLedger:
    return BudgetLedger(workspace, limit, open_document("budget_ledger.json"))


def test_reserve_settle_refund_and_the_snapshot(
    open_document: Opener, workspace: Workspace
) -> None:
    book = ledger(open_document, workspace, 1.0)
    first = book.reserve(0.4, task_id="a")
    second = book.reserve(0.3, task_id="b")
    other = ledger(open_document, workspace, 1.0)
    assert (other.snapshot().spent, round(other.snapshot().reserved, 6)) == (0.0, 0.7)
    other.settle(first, 0.1)
    other.refund(second)
    other.refund(second)  # a second refund changes nothing
    snapshot = book.snapshot()
    assert (round(snapshot.spent, 6), snapshot.reserved, round(snapshot.remaining, 6)) == (
        0.1,
        0.0,
        0.9,
    )


def test_the_global_and_the_task_limits_refuse_and_hold_nothing(
    open_document: Opener, workspace: Workspace
) -> None:
    book = ledger(open_document, workspace, 1.0)
    book.reserve(0.6, task_id="a", task_limit=0.7)
    with pytest.raises(TaskBudgetExceeded):
        book.reserve(0.2, task_id="a", task_limit=0.7)
    with pytest.raises(GlobalBudgetExceeded):
        book.reserve(0.5, task_id="b")
    assert round(book.snapshot().reserved, 6) == 0.6


def test_a_malformed_ledger_stops_spending_instead_of_starting_afresh(
    open_document: Opener, workspace: Workspace
) -> None:
    document = open_document("budget_ledger.json")
    document.write({"version": 1, "spent": -3})
    book = BudgetLedger(workspace, 1.0, document)
    with pytest.raises(StateFileError, match="budget_ledger.json"):
        book.reserve(0.1, task_id="a")
    with pytest.raises(StateFileError):
        book.snapshot()


def test_reservations_from_many_threads_never_hold_more_than_the_limit(
    open_document: Opener, workspace: Workspace
) -> None:
    books = [ledger(open_document, workspace, 1.0) for _ in range(4)]
    granted: list[str] = []
    guard = threading.Lock()

    def spend(book: BudgetLedger) -> None:
        for _ in range(10):
            try:
                hold = book.reserve(0.0625, task_id=None)
            except GlobalBudgetExceeded:
                continue
            with guard:
                granted.append(hold)

    threads = [threading.Thread(target=spend, args=(book,)) for book in books]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(granted) == 16  # exactly the limit in holds of 1/16, out of 40 asked
    assert round(books[0].snapshot().reserved, 6) == 1.0


SPENDER = """
import sys
from pathlib import Path
from swarm_runtime.errors import GlobalBudgetExceeded
from swarm_runtime.llm.budget import BudgetLedger
from swarm_runtime.settings import Settings
from swarm_runtime.store.documents import documents_for
from swarm_runtime.store.state_files import Workspace
settings = Settings.from_env()
workspace = Workspace(settings.workspace)
documents = documents_for(settings, workspace)
book = BudgetLedger(workspace, 1.0, documents.budget)
for _ in range(15):
    try:
        book.settle(book.reserve(0.0625, task_id=None), 0.0625)
        print("spent", flush=True)
    except GlobalBudgetExceeded:
        pass
documents.close()
"""


def test_processes_spending_at_once_never_spend_past_the_limit(
    url: str | None, workspace: Workspace
) -> None:
    from conftest import child_env

    env = child_env(workspace, **({"SWARM_DATABASE_URL": url} if url else {}))
    spenders = [
        subprocess.Popen(
            [sys.executable, "-c", SPENDER], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [proc.communicate(timeout=120)[0] for proc in spenders]
    assert [proc.returncode for proc in spenders] == [0, 0, 0]
    assert sum(out.count("spent") for out in outputs) == 16


def test_the_pause_switch_is_shared_and_a_broken_one_is_reported_then_replaced(
    open_document: Opener,
) -> None:
    switch, seen_by_other = open_document("pause.json"), open_document("pause.json")
    assert read_pause(seen_by_other).paused is False
    set_pause(switch, True, by="ops", reason="maintenance")
    state = read_pause(seen_by_other)
    assert (state.paused, state.by, state.reason) == (True, "ops", "maintenance")
    switch.write({"paused": "perhaps"})
    with pytest.raises(StateFileError, match="pause.json"):
        read_pause(seen_by_other)
    set_pause(switch, False, by="ops")
    assert read_pause(seen_by_other).paused is False
    assert json.dumps(read_pause(seen_by_other).model_dump())  # a plain document


# --- the quality gate and the rewards -------------------------------------------------------

GRANT = {"max_budget": 0.20, "budget_used": 0.05, "review_confidence": 0.9}
GRANT_TOKENS = 8
GRANT_REASON = "worker_approved_under_budget:"
GRANTER = ROOT / "tests" / "helpers" / "reward_granter.py"


def test_the_quality_gate_records_votes_on_one_shared_change(
    open_document: Opener, workspace: Workspace
) -> None:
    from swarm_runtime.contract import QualityGateStatus, Verdict
    from swarm_runtime.phases import quality_gate
    from swarm_runtime.phases.critic import Review
    from swarm_runtime.phases.quality_gate import QualityGate

    gate = QualityGate(workspace, open_document("quality_gate.json"))
    rejected = Review(verdict=Verdict.REJECT, confidence=0.9, issues=["empty"])
    gate.record("t", "Write a haiku", "model-a", rejected, 1)
    other = QualityGate(workspace, open_document("quality_gate.json"))
    other.record(
        "t", "Write a haiku", "model-b", Review(verdict=Verdict.APPROVE, confidence=0.9), 1
    )
    change = quality_gate.load(open_document("quality_gate.json")).changes["t"]
    assert change.status == QualityGateStatus.NEEDS_QA and change.author_id == "model-b"
    assert change.vote is not None and change.vote.verdict == Verdict.APPROVE


def reward_book(open_database: Callable[[], Any], workspace: Workspace) -> RewardBook:
    """A book as a process would hold it: the files, or the rows through its own pool."""
    return RewardBook(workspace, *reward_documents(workspace, open_database()))


def test_a_reward_is_granted_once_per_task_and_identity(
    open_database: Callable[[], Any], workspace: Workspace
) -> None:
    book = reward_book(open_database, workspace)
    first = book.grant("t1", "ada", **GRANT)
    again = reward_book(open_database, workspace).grant("t1", "ada", **GRANT)
    assert (first.applied, first.tokens_awarded) == (True, GRANT_TOKENS)
    assert (again.applied, again.reason) == (False, "already_granted")
    assert again.granted_at == first.granted_at
    assert book.grant("t1", "bob", **GRANT).applied  # another identity is another key
    balances = reward_book(open_database, workspace).balances()
    assert balances.identities["ada"].total_tokens == GRANT_TOKENS
    assert [p.grant for p in balances.identities["ada"].history] == ["t1::ada"]
    assert list(reward_book(open_database, workspace).ledger().grants) == ["t1::ada", "t1::bob"]


def paid_as_ledgered(book: RewardBook) -> None:
    """Every identity holds exactly what the ledger says its grants awarded it."""
    ledger, balances = book.ledger(), book.balances()
    for name, balance in balances.identities.items():
        grants = [g for g in ledger.grants.values() if g.identity_id == name]
        assert balance.free_time_tokens == sum(g.shares[0] for g in grants), name
        assert balance.journal_tokens == sum(g.shares[1] for g in grants), name
    assert {g.state for g in ledger.grants.values()} <= {"applied"}


def test_racing_grants_pay_each_key_exactly_once(
    open_database: Callable[[], Any], workspace: Workspace
) -> None:
    """Threads of separate books, all released at once: the shared task pays ada once and
    bob once, each thread's own task pays ada once more."""
    books = [reward_book(open_database, workspace) for _ in range(6)]
    start = threading.Barrier(len(books))
    outcomes: list[tuple[str, str, RewardOutcome]] = []
    guard = threading.Lock()

    def race(index: int, book: RewardBook) -> None:
        start.wait(timeout=30)
        for task, identity in (("shared", "ada"), ("shared", "bob"), (f"own{index}", "ada")):
            outcome = book.grant(task, identity, **GRANT)
            with guard:
                outcomes.append((task, identity, outcome))

    threads = [threading.Thread(target=race, args=pair) for pair in enumerate(books)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    applied = Counter((task, identity) for task, identity, o in outcomes if o.applied)
    assert len(outcomes) == 3 * len(books)
    assert applied == {("shared", "ada"): 1, ("shared", "bob"): 1} | {
        (f"own{i}", "ada"): 1 for i in range(len(books))
    }
    balances = books[0].balances()
    assert balances.identities["ada"].total_tokens == (len(books) + 1) * GRANT_TOKENS
    assert balances.identities["bob"].total_tokens == GRANT_TOKENS
    paid_as_ledgered(books[0])


def test_processes_granting_at_once_pay_a_shared_task_exactly_once(
    url: str | None, open_database: Callable[[], Any], workspace: Workspace
) -> None:
    from conftest import child_env

    env = child_env(workspace, **({"SWARM_DATABASE_URL": url} if url else {}))
    granters = [
        subprocess.Popen(
            [sys.executable, str(GRANTER), "shared", f"own{i}"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    for granter in granters:  # each is connected and waiting: release them together
        assert granter.stdout is not None and granter.stdout.readline().strip() == "ready"
    outputs = [granter.communicate("go\n", timeout=120)[0] for granter in granters]
    assert [granter.returncode for granter in granters] == [0, 0, 0]
    outcomes = [RewardOutcome.model_validate_json(line) for o in outputs for line in o.splitlines()]
    shared = [o for o in outcomes if o.reason in ("already_granted", GRANT_REASON + "shared")]
    assert (len(shared), sum(o.applied for o in shared)) == (3, 1)
    book = reward_book(open_database, workspace)
    assert book.balances().identities["ada"].total_tokens == 4 * GRANT_TOKENS
    paid_as_ledgered(book)


def test_an_update_sees_every_write_made_since_its_own(
    open_document: Opener, workspace: Workspace
) -> None:
    """A document that takes up what it last wrote (files: while the file holds those
    bytes) still reads another view's write, and a replacement of the whole document."""
    mine, theirs = open_document("pause.json"), open_document("pause.json")

    def add(key: str) -> Callable[[Any], tuple[dict[str, Any], list[str]]]:
        return lambda doc: ({**doc, key: True}, sorted({**doc, key: True}))

    assert mine.update(add("a"), dict) == ["a"]
    assert mine.update(add("b"), dict) == ["a", "b"]
    assert theirs.update(add("c"), dict) == ["a", "b", "c"]
    assert mine.update(add("d"), dict) == ["a", "b", "c", "d"]
    theirs.write({"by_hand": True})
    assert mine.update(add("e"), dict) == ["by_hand", "e"]
