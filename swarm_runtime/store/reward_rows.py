"""The reward ledger and the balances in the database: a row per grant in
`swarm_reward_grants`, keyed by (task, identity), and a row per identity in
`swarm_reward_balances`.

A grant is paid exactly once because its key says so, not because of a lock: its row
goes in with `ON CONFLICT`, and the identity is paid only if the row went in, in the
same transaction. A second grant for the key, from any process on any host, is refused
by the database and pays nothing. The identity's row is locked first so that two
grants to one identity never both count on the same room under its caps; a second grant
for a key therefore usually sees the first before it tries, but nothing depends on that.

The row and the payment commit together or not at all, so a crash cannot leave a grant
half done: the pending and applied steps the files need have no counterpart here.

Readers see the two documents the files hold, assembled from the rows
(`RewardRows.ledger`, `RewardRows.balances`), so the control panel reads either store
the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from swarm_runtime.store.failpoints import failpoint

if TYPE_CHECKING:
    from psycopg import Connection

    from swarm_runtime.store.database import Database

T = TypeVar("T")
KEY_SEPARATOR = "::"
DOCUMENT_VERSION = 1
GRANTS, BALANCES = "swarm_reward_grants", "swarm_reward_balances"


@dataclass(frozen=True)
class Paid:
    """What a grant writes: its ledger entry, and the identity's balance once paid."""

    grant: dict[str, Any]
    balance: dict[str, Any]


# `decide(earlier entry for the key or None, the identity's balance)` -> (what to write
# or None, the result to return).
Decide = Callable[[Any | None, Any], tuple[Paid | None, T]]


def grant_key(task_id: str, identity_id: str) -> str:
    """Unambiguous because task ids cannot contain ':' (identities may)."""
    return f"{task_id}{KEY_SEPARATOR}{identity_id}"


class RewardRows:
    """The two tables, changed only by `grant`, and read as the two documents."""

    def __init__(self, database: Database, ledger_path: Path, balances_path: Path):
        self.database = database
        self.ledger = RowsDocument(self, Path(ledger_path.name), GRANTS, self._ledger)
        self.balances = RowsDocument(self, Path(balances_path.name), BALANCES, self._balances)

    def grant(self, task_id: str, identity_id: str, decide: Decide[T]) -> T:
        """One transaction: the identity's row locked, `decide` asked, the entry inserted
        and, only if the key let it in, the identity paid. When the key refuses it, what
        `decide` wanted is dropped and it is asked again, now seeing the entry that won."""
        with self.database.transaction() as conn:
            balance = _locked_balance(conn, identity_id)
            paid, result = decide(_entry(conn, task_id, identity_id), balance)
            if paid is None:
                return result
            if not _insert_entry(conn, task_id, identity_id, paid.grant):
                return decide(_entry(conn, task_id, identity_id), balance)[1]
            failpoint("reward.after_grant_row")
            _pay(conn, identity_id, paid.balance)
            return result

    def version(self, table: str) -> Hashable:
        """Every commit adds a row or raises a row's revision, so (rows, sum of revisions)
        changes with each, in whatever order concurrent transactions commit."""
        with self.database.transaction() as conn:
            row = conn.execute(
                f"SELECT count(*), coalesce(sum(revision), 0) FROM {table}"
            ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def _ledger(self) -> dict[str, Any]:
        with self.database.transaction() as conn:
            rows = conn.execute(
                "SELECT task_id, identity_id, doc FROM swarm_reward_grants ORDER BY listed"
            ).fetchall()
        keyed = {grant_key(task_id, identity_id): doc for task_id, identity_id, doc in rows}
        return {"version": DOCUMENT_VERSION, "grants": keyed}

    def _balances(self) -> dict[str, Any]:
        with self.database.transaction() as conn:
            rows = conn.execute(
                "SELECT identity_id, doc FROM swarm_reward_balances ORDER BY identity_id"
            ).fetchall()
        return {"version": DOCUMENT_VERSION, "identities": dict(rows)}


class RowsDocument:
    """One of the two reward documents as its readers know it, in the shape of its file,
    read in one snapshot. Only `RewardRows.grant` changes it, a grant at a time: it is
    never replaced whole."""

    def __init__(
        self, rows: RewardRows, path: Path, table: str, export: Callable[[], dict[str, Any]]
    ):
        self.rows = rows
        self.path = path
        self.table = table
        self._export = export

    def read(self, default: Callable[[], Any]) -> Any:
        return self._export()

    def peek(self, default: Callable[[], Any]) -> Any:
        return self.read(default)

    def version(self) -> Hashable:
        return self.rows.version(self.table)

    def update(self, mutate: Callable[[Any], tuple[Any, T]], default: Callable[[], Any]) -> T:
        raise TypeError(f"{self.path} is kept as rows: only a grant changes it")

    def write(self, document: Any) -> None:
        raise TypeError(f"{self.path} is kept as rows: only a grant changes it")


def _locked_balance(conn: Connection[Any], identity_id: str) -> Any:
    conn.execute(
        "INSERT INTO swarm_reward_balances (identity_id, doc) VALUES (%s, '{}')"
        " ON CONFLICT (identity_id) DO NOTHING",
        (identity_id,),
    )
    row = conn.execute(
        "SELECT doc FROM swarm_reward_balances WHERE identity_id = %s FOR UPDATE", (identity_id,)
    ).fetchone()
    assert row is not None, "the row was just made sure of"
    return row[0]


def _entry(conn: Connection[Any], task_id: str, identity_id: str) -> Any | None:
    row = conn.execute(
        "SELECT doc FROM swarm_reward_grants WHERE task_id = %s AND identity_id = %s",
        (task_id, identity_id),
    ).fetchone()
    return None if row is None else row[0]


def _insert_entry(conn: Connection[Any], task_id: str, identity_id: str, grant: Any) -> bool:
    """Whether the key let the entry in. It refuses it when the key holds an entry that
    paid something; one that paid nothing (a full pool, in the reference's ledger) is
    replaced, as in the files."""
    from psycopg.types.json import Json

    cursor = conn.execute(
        "INSERT INTO swarm_reward_grants (task_id, identity_id, tokens_awarded, doc)"
        " VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (task_id, identity_id) DO UPDATE"
        " SET tokens_awarded = excluded.tokens_awarded, doc = excluded.doc,"
        " revision = swarm_reward_grants.revision + 1"
        " WHERE swarm_reward_grants.tokens_awarded = 0",
        (task_id, identity_id, grant["tokens_awarded"], Json(grant)),
    )
    return cursor.rowcount == 1


def _pay(conn: Connection[Any], identity_id: str, balance: Any) -> None:
    from psycopg.types.json import Json

    conn.execute(
        "UPDATE swarm_reward_balances SET doc = %s, revision = revision + 1 WHERE identity_id = %s",
        (Json(balance), identity_id),
    )
