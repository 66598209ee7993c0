"""Small shared state documents (the budget ledger, the pause switch): read whole, and
changed by one read-modify-write under a lock that binds every process.

In the workspace each is a JSON file changed under its `.lock`; in the database each is
one row of `swarm_documents`, changed under that row's lock (`SELECT ... FOR UPDATE`),
so processes on any number of hosts see one document and change it one at a time.
The reward ledger and the balances are the exception there: rows of their own, a grant
at a time (store.reward_rows), which their readers still read as these documents.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from swarm_runtime.settings import Settings
from swarm_runtime.store.private import read_private
from swarm_runtime.store.reward_rows import RewardRows
from swarm_runtime.store.state_files import (
    EncodingMemo,
    Workspace,
    atomic_write_bytes,
    file_version,
    parse_json,
    read_json,
)

if TYPE_CHECKING:
    from swarm_runtime.store.database import Database

T = TypeVar("T")
Mutation = Callable[[Any], tuple[Any, T]]
Default = Callable[[], Any]


class SharedDocument(Protocol):
    # What errors name: the file, or the file's name for a database row.
    path: Path

    def read(self, default: Callable[[], Any]) -> Any: ...

    def peek(self, default: Callable[[], Any]) -> Any:
        """`read`, for a caller that changes nothing in what it is given, which may be
        kept and given again while the document is unchanged."""
        ...

    def update(self, mutate: Mutation[T], default: Callable[[], Any]) -> T:
        """`mutate(doc)` returns (new_doc, result); a new_doc of None writes nothing."""
        ...

    def write(self, document: Any) -> None:
        """Replace the document whatever it held, even something unreadable."""
        ...

    def version(self) -> Hashable:
        """Changes whenever the document may have: a cheap test before `read`."""
        ...


class FileDocument:
    """Long-lived in a process (the gate and the rewards hold theirs), so its memo spares
    each write the encoding of the records the last write already encoded, and `update`
    and `peek` spare parsing a file that still holds exactly what this object last read
    or wrote."""

    def __init__(self, workspace: Workspace, path: Path):
        self.workspace = workspace
        self.path = path
        self._memo = EncodingMemo()
        self._last: tuple[bytes, Any] | None = None

    def read(self, default: Callable[[], Any]) -> Any:
        return read_json(self.path, default)

    def read_bytes(self) -> bytes | None:
        """The file as it is (None if there is none), for a caller that remembers what it
        last wrote and need not parse the same bytes again."""
        try:
            return read_private(self.path)
        except FileNotFoundError:
            return None

    def update(self, mutate: Mutation[T], default: Callable[[], Any]) -> T:
        """Read-modify-write under the file's lock (`SharedDocument.update`). When it holds
        the bytes this object last read or wrote, `mutate` gets the document it had for
        them instead of a parse of them (`peek`): so `mutate` must change nothing it is
        given (it builds what it returns), and nothing may change what it returned."""
        with self.workspace.lock(self.path):
            document = self.peek(default)
            new_document, result = mutate(document)
            if new_document is not None:
                data = self._memo.dump(new_document)
                atomic_write_bytes(self.path, data)
                self._last = (data, new_document)
            return result

    def peek(self, default: Callable[[], Any]) -> Any:
        """The document as the file holds it now, without its lock (it is replaced whole,
        never changed in place); kept for the next call while the file holds the same
        bytes, so the caller must change nothing in it."""
        raw = self.read_bytes()
        if raw is not None and self._last is not None and self._last[0] == raw:
            return self._last[1]
        document = self.parse(raw, default)
        if raw is not None:
            self._last = (raw, document)
        return document

    def parse(self, raw: bytes | None, default: Callable[[], Any]) -> Any:
        """`raw` (what `read_bytes` gave) as JSON; no file reads as `default()`."""
        return default() if raw is None else parse_json(self.path, raw)

    def write(self, document: Any) -> None:
        self.write_returning_bytes(document)

    def write_returning_bytes(self, document: Any) -> bytes:
        """Replace the file atomically with `document`; returns the bytes it became."""
        data = self._memo.dump(document)
        with self.workspace.lock(self.path):
            atomic_write_bytes(self.path, data)
        return data

    def version(self) -> Hashable:
        return file_version(self.path)


class DatabaseDocument:
    """The row named after the file it stands for (budget_ledger.json, pause.json)."""

    def __init__(self, database: Database, path: Path):
        self.database = database
        self.path = Path(path.name)

    def read(self, default: Callable[[], Any]) -> Any:
        with self.database.transaction() as conn:
            row = conn.execute(
                "SELECT doc FROM swarm_documents WHERE name = %s", (self.path.name,)
            ).fetchone()
        return default() if row is None else row[0]

    def peek(self, default: Callable[[], Any]) -> Any:
        return self.read(default)

    def update(self, mutate: Mutation[T], default: Callable[[], Any]) -> T:
        from psycopg.types.json import Json

        name = self.path.name
        with self.database.transaction() as conn:
            conn.execute(
                "INSERT INTO swarm_documents (name, doc) VALUES (%s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (name, Json(default())),
            )
            row = conn.execute(
                "SELECT doc FROM swarm_documents WHERE name = %s FOR UPDATE", (name,)
            ).fetchone()
            assert row is not None
            new_document, result = mutate(row[0])
            if new_document is not None:
                conn.execute(
                    "UPDATE swarm_documents SET doc = %s WHERE name = %s",
                    (Json(new_document), name),
                )
            return result

    def version(self) -> Hashable:
        """The row's transaction id: a new one with every update."""
        with self.database.transaction() as conn:
            row = conn.execute(
                "SELECT xmin::text FROM swarm_documents WHERE name = %s", (self.path.name,)
            ).fetchone()
        return None if row is None else row[0]

    def write(self, document: Any) -> None:
        from psycopg.types.json import Json

        with self.database.transaction() as conn:
            conn.execute(
                "INSERT INTO swarm_documents (name, doc) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
                (self.path.name, Json(document)),
            )


def shared_document(workspace: Workspace, path: Path, database: Database | None) -> SharedDocument:
    """The file `path` in the workspace, or its row in `database` when there is one."""
    if database is None:
        return FileDocument(workspace, path)
    return DatabaseDocument(database, path)


@contextmanager
def together(documents: list[FileDocument]) -> Iterator[None]:
    """Each file's lock, taken in the order given, held until the block ends, for a
    decision over several documents; the block reads and writes through the documents
    themselves (their locks, already held, only count again). Every write is atomic, so
    a reader sees each file before or after, never half of it."""
    with ExitStack() as stack:
        for document in documents:
            stack.enter_context(document.workspace.lock(document.path))
        yield


@dataclass(frozen=True)
class SharedDocuments:
    """The documents every process of one runtime shares, in one place for a process."""

    budget: SharedDocument
    pause: SharedDocument
    quality_gate: SharedDocument
    reward_ledger: SharedDocument
    balances: SharedDocument
    database: Database | None = None

    def close(self) -> None:
        if self.database is not None:
            self.database.close()


def documents_for(settings: Settings, workspace: Workspace) -> SharedDocuments:
    """In the database SWARM_DATABASE_URL names, else in the workspace."""
    database = None
    if settings.database_url is not None:
        from swarm_runtime.store.database import Database

        database = Database.connect(settings.database_url.get_secret_value(), pool_size=2)
    reward_ledger, balances = reward_documents(workspace, database)
    return SharedDocuments(
        budget=shared_document(workspace, workspace.budget_ledger_path, database),
        pause=shared_document(workspace, workspace.pause_path, database),
        quality_gate=shared_document(workspace, workspace.quality_gate_path, database),
        reward_ledger=reward_ledger,
        balances=balances,
        database=database,
    )


def reward_documents(
    workspace: Workspace, database: Database | None
) -> tuple[SharedDocument, SharedDocument]:
    """The reward ledger and the balances: the workspace's two files, or, in the database,
    views of the rows a grant is kept in (see store.reward_rows)."""
    if database is None:
        return (
            FileDocument(workspace, workspace.reward_ledger_path),
            FileDocument(workspace, workspace.balances_path),
        )
    rows = RewardRows(database, workspace.reward_ledger_path, workspace.balances_path)
    return rows.ledger, rows.balances
