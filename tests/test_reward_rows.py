"""Rewards in a real PostgreSQL database: a grant is a row keyed by (task, identity),
inserted in the transaction that pays the identity. The races and the once-only answers
both stores share are in test_documents_conformance; here is what only rows can show."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ROOT, child_env
from pydantic import SecretStr

from swarm_runtime.contract import BALANCES_FILE, REWARD_LEDGER_FILE
from swarm_runtime.panel.outcomes import rewards_of
from swarm_runtime.panel.state import Panel, state_cache
from swarm_runtime.phases.rewards import RewardBook, RewardLedger
from swarm_runtime.settings import Settings
from swarm_runtime.store import reward_rows
from swarm_runtime.store.database import Database
from swarm_runtime.store.documents import reward_documents
from swarm_runtime.store.reward_rows import Paid, RewardRows
from swarm_runtime.store.schema import MIGRATIONS
from swarm_runtime.store.state_files import Workspace

GRANT: dict[str, Any] = {"max_budget": 0.20, "budget_used": 0.05, "review_confidence": 0.9}
GRANT_TOKENS = 8
GRANTER = ROOT / "tests" / "helpers" / "reward_granter.py"


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = Database.connect(database_url, pool_size=2)
    yield database
    database.close()


@pytest.fixture
def book(database: Database, workspace: Workspace) -> RewardBook:
    return RewardBook(workspace, *reward_documents(workspace, database))


def rows_held(database: Database) -> tuple[int, int]:
    """(grant rows, balance rows), counted by the database itself."""
    with database.transaction() as conn:
        grants = conn.execute("SELECT count(*) FROM swarm_reward_grants").fetchone()
        balances = conn.execute("SELECT count(*) FROM swarm_reward_balances").fetchone()
    assert grants is not None and balances is not None
    return int(grants[0]), int(balances[0])


class Injected(Exception):
    pass


def test_a_failure_after_the_insert_leaves_neither_the_grant_nor_the_payment(
    book: RewardBook, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The regression this guards against: a grant recorded but never paid (or the reverse),
    which the files must repair afterwards and rows must never produce."""

    def fail_after_insert(name: str) -> None:
        if name == "reward.after_grant_row":
            raise Injected(name)

    monkeypatch.setattr(reward_rows, "failpoint", fail_after_insert)
    with pytest.raises(Injected):
        book.grant("t1", "ada", **GRANT)
    assert rows_held(database) == (0, 0)
    assert book.ledger().grants == {} and book.balances().identities == {}
    monkeypatch.undo()
    assert book.grant("t1", "ada", **GRANT).applied
    assert book.grant("t1", "ada", **GRANT).reason == "already_granted"
    assert book.balances().identities["ada"].total_tokens == GRANT_TOKENS


def test_a_process_killed_after_the_insert_pays_nothing_and_the_next_grant_pays_once(
    book: RewardBook, database: Database, database_url: str, workspace: Workspace
) -> None:
    env = child_env(
        workspace, SWARM_DATABASE_URL=database_url, SWARM_FAILPOINTS="reward.after_grant_row"
    )
    killed = subprocess.run(
        [sys.executable, str(GRANTER), "t1"],
        cwd=ROOT,
        env=env,
        input="go\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -9, killed.stderr
    assert book.ledger().grants == {}
    assert book.recover() == 0  # nothing was left half done
    assert book.grant("t1", "ada", **GRANT).applied
    assert book.balances().identities["ada"].total_tokens == GRANT_TOKENS
    assert rows_held(database) == (1, 1)


def test_the_key_refuses_a_second_entry_whatever_the_caller_decided(
    database: Database, workspace: Workspace
) -> None:
    """Exactly once is the key's doing, not the decision's: a caller that pays regardless
    of what it sees gets its second entry refused, and nothing paid for it."""
    rows = RewardRows(database, workspace.reward_ledger_path, workspace.balances_path)
    seen: list[Any] = []

    def always_pay(earlier: Any, balance: Any) -> tuple[Paid | None, int]:
        seen.append(earlier)
        paid = balance.get("free_time_tokens", 0) + 1
        entry = {"task_id": "t1", "identity_id": "ada", "tokens_awarded": 1, "call": len(seen)}
        return Paid(entry, {"free_time_tokens": paid}), len(seen)

    assert rows.grant("t1", "ada", always_pay) == 1
    assert rows.grant("t1", "ada", always_pay) == 3  # asked again, seeing the winner
    winner = {"task_id": "t1", "identity_id": "ada", "tokens_awarded": 1, "call": 1}
    assert seen == [None, winner, winner]
    assert rows.ledger.read(dict)["grants"] == {"t1::ada": winner}
    assert rows.balances.read(dict)["identities"] == {"ada": {"free_time_tokens": 1}}


def test_the_documents_readers_see_follow_every_grant(
    book: RewardBook, database: Database, workspace: Workspace
) -> None:
    """The control panel reads the rows as the two documents, through its version cache."""
    ledger, balances = reward_documents(workspace, database)
    assert (ledger.path.name, balances.path.name) == (REWARD_LEDGER_FILE, BALANCES_FILE)
    cached = state_cache(ledger, RewardLedger)
    assert cached.get().grants == {}
    versions = ledger.version(), balances.version()
    book.grant("t1", "ada", **GRANT)
    assert list(cached.get().grants) == ["t1::ada"]
    book.grant("t2", "ada", **GRANT)
    assert list(cached.get().grants) == ["t1::ada", "t2::ada"]
    assert ledger.version() != versions[0] and balances.version() != versions[1]
    assert balances.version() == balances.version()
    with pytest.raises(TypeError, match="only a grant changes it"):
        ledger.write({"version": 1, "grants": {}})
    with pytest.raises(TypeError, match="only a grant changes it"):
        balances.update(lambda doc: (doc, None), dict)


def test_the_control_panel_on_the_database_shows_what_was_granted(
    book: RewardBook, database_url: str, workspace: Workspace
) -> None:
    book.grant("t1", "ada", **GRANT)
    book.grant("t1", "bob", **GRANT)
    settings = Settings(workspace=workspace.root, database_url=SecretStr(database_url))
    panel = Panel(settings)
    try:
        shown = rewards_of(panel)
        book.grant("t2", "ada", **GRANT)
        shown_after = rewards_of(panel)
    finally:
        panel.close()
    assert shown["total_grants"] == 2 and shown_after["total_grants"] == 3
    assert shown["identities"]["bob"]["total"] == GRANT_TOKENS
    assert shown_after["identities"]["ada"]["total"] == 2 * GRANT_TOKENS


# --- the migration from the documents of earlier versions ---------------------------------

REFERENCE_ZERO = {  # a grant a full pool let pay nothing: the next grant replaces it
    "task_id": "t0",
    "identity_id": "resident_default",
    "tokens_requested": 3,
    "tokens_awarded": 0,
    "reason": "worker_approved_under_budget:t0",
    "granted_at": "2026-02-09T09:00:00+00:00",
}
REFERENCE_LEDGER = {
    "version": 1,
    "grants": {
        "t1::resident_default": {
            "task_id": "t1",
            "identity_id": "resident_default",
            "tokens_requested": 8,
            "tokens_awarded": 8,
            "reason": "worker_approved_under_budget:t1",
            "granted_at": "2026-02-09T10:00:00.123456+00:00",
        },
        "t0::resident_default": REFERENCE_ZERO,
    },
}
REFERENCE_BALANCES = {  # identities at the top level, the free-time pool named `tokens`
    "resident_default": {"tokens": 8, "journal_tokens": 0, "free_time_cap": 500, "history": []},
}


def database_at_documents(url: str, ledger: Any, balances: Any) -> None:
    """A database as the version before rows left it: its reward documents in
    swarm_documents, the migration that carries them not yet run."""
    import psycopg
    from psycopg.types.json import Json

    before = next(n for n, step in enumerate(MIGRATIONS) if "swarm_reward_grants" in step)
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("CREATE TABLE swarm_schema (version integer NOT NULL)")
        for step in MIGRATIONS[:before]:
            conn.execute(step)
        conn.execute("INSERT INTO swarm_schema (version) VALUES (%s)", (before,))
        for name, doc in ((REWARD_LEDGER_FILE, ledger), (BALANCES_FILE, balances)):
            conn.execute(
                "INSERT INTO swarm_documents (name, doc) VALUES (%s, %s)", (name, Json(doc))
            )


def leftover_documents(database: Database) -> list[str]:
    with database.transaction() as conn:
        return [row[0] for row in conn.execute("SELECT name FROM swarm_documents").fetchall()]


def test_the_migration_carries_the_documents_a_grant_wrote_into_rows(
    database_url: str, workspace: Workspace, tmp_path: Any
) -> None:
    written = Workspace(tmp_path / "written")  # documents written as the files are
    earlier = RewardBook(written)
    for task, identity in (("t2", "ada"), ("t1", "ada"), ("t1", "bob")):
        earlier.grant(task, identity, **GRANT)
    database_at_documents(
        database_url,
        json.loads(written.reward_ledger_path.read_text()),
        json.loads(written.balances_path.read_text()),
    )
    database = Database.connect(database_url, pool_size=1)
    try:
        book = RewardBook(workspace, *reward_documents(workspace, database))
        assert book.ledger() == earlier.ledger()
        assert list(book.ledger().grants) == ["t2::ada", "t1::ada", "t1::bob"]
        assert book.balances() == earlier.balances()
        assert leftover_documents(database) == []
        assert book.grant("t1", "ada", **GRANT).reason == "already_granted"
        assert book.grant("t3", "bob", **GRANT).applied
        assert book.balances().identities["bob"].total_tokens == 2 * GRANT_TOKENS
    finally:
        database.close()


def test_the_migration_carries_the_references_documents_and_their_rules(
    database_url: str, workspace: Workspace
) -> None:
    database_at_documents(database_url, REFERENCE_LEDGER, REFERENCE_BALANCES)
    database = Database.connect(database_url, pool_size=1)
    try:
        book = RewardBook(workspace, *reward_documents(workspace, database))
        assert book.balances().identities["resident_default"].free_time_tokens == 8
        assert book.grant("t1", "resident_default", **GRANT).reason == "already_granted"
        replacing = book.grant("t0", "resident_default", **GRANT)  # the entry paid nothing
        assert (replacing.applied, replacing.tokens_awarded) == (True, GRANT_TOKENS)
        entry = book.ledger().grants["t0::resident_default"]
        assert entry.model_extra is not None
        assert entry.model_extra["replaces"] == REFERENCE_ZERO
        assert list(book.ledger().grants) == ["t1::resident_default", "t0::resident_default"]
        assert book.balances().identities["resident_default"].total_tokens == 8 + GRANT_TOKENS
    finally:
        database.close()
