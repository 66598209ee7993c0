"""Workers say they are alive in `.swarm/workers/<id>.json` (or, with a database, in its
`swarm_workers` table, seen from every host), so an idle one is visible.

A worker holding a lease is visible through queue.json; one waiting for work holds
nothing. Each writes its own small file (no shared lock, no contention) every few
seconds and removes it on a clean exit; a reader trusts a file only while it is fresh
and, on this host, while its process exists.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from swarm_runtime.contract import Lease, WorkerPresence, utc_now
from swarm_runtime.errors import StoreUnavailable
from swarm_runtime.queue.store import WorkerIdentity, holder_is_alive
from swarm_runtime.store.state_files import Workspace, atomic_write_json

if TYPE_CHECKING:
    from swarm_runtime.store.database import Database

ANNOUNCE_EVERY_SECONDS = 5.0
FRESH_FOR_SECONDS = 30.0


class PresenceBeacon:
    def __init__(
        self, workspace: Workspace, identity: WorkerIdentity, database: Database | None = None
    ):
        self._path = workspace.workers_dir / f"{identity.worker_id}.json"
        self._rows = PresenceRows(database) if database is not None else None
        self._presence = WorkerPresence(
            worker_id=identity.worker_id,
            pid=identity.pid,
            host=identity.host,
            labels=sorted(identity.labels),
            started_at=utc_now().isoformat(),
            last_seen=0.0,
        )
        if database is None:
            workspace.workers_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def announce(self, *, paused: bool, now: float | None = None) -> None:
        """Rewrite the file when it is due or the paused state changed."""
        now = time.time() if now is None else now
        due = now - self._presence.last_seen >= ANNOUNCE_EVERY_SECONDS
        if not due and paused == self._presence.paused:
            return
        self._presence = self._presence.model_copy(update={"last_seen": now, "paused": paused})
        if self._rows is not None:
            self._rows.announce(self._presence)
            return
        atomic_write_json(self._path, self._presence.model_dump(mode="json"))

    def withdraw(self) -> None:
        if self._rows is not None:
            with contextlib.suppress(ConnectionError):  # unseen once stale, in any case
                self._rows.withdraw(self._presence.worker_id)
            return
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


class PresenceRows:
    """One row a worker, rewritten as the file would be, but seen on the database's
    clock: `last_seen` is the database's time of the write, and a reader gets it back on
    its own clock, so hosts whose clocks disagree still agree on who is alive."""

    def __init__(self, database: Database):
        self.database = database

    def announce(self, presence: WorkerPresence) -> None:
        from psycopg.types.json import Json

        with self.database.transaction() as conn:
            conn.execute(
                "INSERT INTO swarm_workers (worker_id, doc) VALUES (%s, jsonb_set(%s::jsonb,"
                " '{last_seen}', to_jsonb(extract(epoch FROM clock_timestamp())::float8))::json)"
                " ON CONFLICT (worker_id) DO UPDATE SET doc = excluded.doc",
                (presence.worker_id, Json(presence.model_dump(mode="json"))),
            )

    def withdraw(self, worker_id: str) -> None:
        with self.database.transaction() as conn:
            conn.execute("DELETE FROM swarm_workers WHERE worker_id = %s", (worker_id,))

    def documents(self) -> list[Any]:
        """Each worker's document, its `last_seen` moved onto this process's clock."""
        with self.database.transaction() as conn:
            rows = conn.execute(
                "SELECT doc, extract(epoch FROM clock_timestamp())::float8 FROM swarm_workers"
                " ORDER BY worker_id"
            ).fetchall()
        here = time.time()
        return [on_this_clock(doc, here - database_now) for doc, database_now in rows]


def on_this_clock(doc: Any, offset: float) -> Any:
    if isinstance(doc, dict) and isinstance(doc.get("last_seen"), int | float):
        return doc | {"last_seen": doc["last_seen"] + offset}
    return doc


def live_workers(
    workspace: Workspace, now: float | None = None, database: Database | None = None
) -> list[WorkerPresence]:
    """Workers whose presence is fresh and whose process still exists (when on this host);
    none while the database that holds them cannot be reached (its own tile says so)."""
    now = time.time() if now is None else now
    try:
        announced = list(_announced(workspace, database))
    except StoreUnavailable:
        return []
    found = []
    for raw in announced:
        try:
            presence = WorkerPresence.model_validate(raw)
        except ValidationError:
            continue
        if now - presence.last_seen <= FRESH_FOR_SECONDS and _process_exists(presence):
            found.append(presence)
    return found


def _announced(workspace: Workspace, database: Database | None) -> Iterator[Any]:
    if database is not None:
        yield from PresenceRows(database).documents()
        return
    for path in sorted(workspace.workers_dir.glob("*.json")):
        try:
            yield json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue


def _process_exists(presence: WorkerPresence) -> bool:
    lease = Lease(
        worker_id=presence.worker_id,
        pid=presence.pid,
        host=presence.host,
        claimed_at=presence.last_seen,
        expires_at=presence.last_seen,
    )
    return holder_is_alive(lease)
