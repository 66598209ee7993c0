"""Appending lifecycle events to execution_log.jsonl in the contract's shape, and, with a
database, to its `swarm_events` table too: one log for every host, each event a row whose
increasing id is a reader's cursor. The workspace's file keeps this host's events either
way; `event_source` picks what readers read, the database's rows when there is one."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from swarm_runtime.contract import (
    EVENT_FIELD_CAP_BYTES,
    TRUNCATION_MARKER,
    Event,
    ExecutionEvent,
    LeaseEvent,
    Status,
)
from swarm_runtime.errors import StoreUnavailable
from swarm_runtime.settings import this_host
from swarm_runtime.store.event_rows import RowIndex
from swarm_runtime.store.event_source import EventSource
from swarm_runtime.store.log_index import LogIndex
from swarm_runtime.store.state_files import Workspace, append_line, json_line

if TYPE_CHECKING:
    from swarm_runtime.store.database import Database

log = logging.getLogger("swarm.store")
ENVELOPE = ("task_id", "worker_id", "status", "timestamp")
# Appends take this lock to the end of their transaction, so ids commit in order and a
# reader past id n never misses an event committed later with a smaller id.
EVENTS_LOCK = 0x5357_4152_4D02
# Kept in memory for the database while it is down; beyond this the oldest are only in
# this host's log file.
MAX_UNSENT_EVENTS = 10_000


def cap_text(text: str, limit: int = EVENT_FIELD_CAP_BYTES) -> str:
    """Shorten `text` to at most `limit` UTF-8 bytes, saying how much was cut."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    kept = encoded[:limit].decode("utf-8", errors="ignore")
    return kept + TRUNCATION_MARKER.format(dropped=len(encoded) - len(kept.encode("utf-8")))


def cap_value(value: Any, limit: int = EVENT_FIELD_CAP_BYTES) -> Any:
    """Strings are cut in place; a structure too large to keep is replaced by a marked preview."""
    if isinstance(value, str):
        return cap_text(value, limit)
    if isinstance(value, dict | list):
        serialized = json.dumps(value, ensure_ascii=False, default=str)
        if len(serialized.encode("utf-8")) > limit:
            return {"truncated": True, "preview": cap_text(serialized, limit)}
    return value


def build_event(
    task_id: str, worker_id: str, status: Status, kind: type[Event] | None = None, **fields: Any
) -> dict[str, Any]:
    """The event as written: envelope first, the design's keys present (null when empty).

    `kind` picks the event model whose keys must all appear; by default a lease event for
    `lease_expired` and an execution event otherwise."""
    if kind is None:
        kind = LeaseEvent if status == Status.LEASE_EXPIRED else ExecutionEvent
    event = kind(task_id=task_id, worker_id=worker_id, status=status, **fields)
    record = event.model_dump(mode="json")
    ordered = {key: record.pop(key) for key in ENVELOPE} | record
    return {key: cap_value(value) for key, value in ordered.items()}


class EventLog:
    """One worker's writer for execution_log.jsonl (and the database's events, if any).

    Each event names the host it was written on, since a database holds every host's."""

    def __init__(
        self,
        workspace: Workspace,
        worker_id: str,
        database: Database | None = None,
        host: str | None = None,
    ):
        self._workspace = workspace
        self.worker_id = worker_id
        self.host = host or this_host()
        self._rows = DatabaseEvents(database) if database is not None else None
        # Events the database could not take yet, oldest first: sent before the next one.
        self.unsent: list[dict[str, Any]] = []

    def emit(
        self, task_id: str, status: Status, kind: type[Event] | None = None, **fields: Any
    ) -> dict[str, Any]:
        fields.setdefault("host", self.host)
        record = build_event(task_id, self.worker_id, status, kind, **fields)
        append_line(self._workspace, self._workspace.log_path, record)
        if self._rows is not None:
            self.unsent.append(record)
            self.send_unsent()
        return record

    def send_unsent(self) -> bool:
        """Send what the database has not taken, in order; True once all of it is sent.
        While it is down the file has every event and the task goes on; the fleet's view
        catches up when it is back."""
        assert self._rows is not None
        try:
            while self.unsent:
                self._rows.append(self.unsent[0])
                self.unsent.pop(0)
        except StoreUnavailable as exc:
            log.warning("%d event(s) wait for the database: %s", len(self.unsent), exc)
            del self.unsent[:-MAX_UNSENT_EVENTS]
        return not self.unsent


class DatabaseEvents:
    """The events of every host, in the order they were committed."""

    def __init__(self, database: Database):
        self.database = database

    def append(self, record: dict[str, Any]) -> int:
        """Store `record` whole; returns its id, the cursor just past it."""
        from psycopg.types.json import Json

        envelope = [str(record[key]) for key in ENVELOPE]
        with self.database.transaction(holding=EVENTS_LOCK) as conn:
            row = conn.execute(
                "INSERT INTO swarm_events (task_id, worker_id, status, timestamp, record)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (*envelope, Json(record)),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def read(self, after: int = 0, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        """Up to `limit` events after the cursor `after`, oldest first, with their ids."""
        with self.database.transaction() as conn:
            rows = conn.execute(
                "SELECT id, record FROM swarm_events WHERE id > %s ORDER BY id LIMIT %s",
                (after, limit),
            ).fetchall()
        return [(int(event_id), record) for event_id, record in rows]

    def lines(self) -> Iterator[str]:
        """Every event as a line of execution_log.jsonl, oldest first."""
        cursor = 0
        while batch := self.read(cursor):
            for cursor, record in batch:  # noqa: B007 (the last id is the next cursor)
                yield json_line(record)


def event_source(
    workspace: Workspace, database: Database | None, *, summaries: bool = True
) -> EventSource:
    """What this host reads events from: the database's rows, which every host writes,
    or else the workspace's own file. `summaries` (see RowIndex) costs nothing on a file."""
    if database is None:
        return LogIndex(workspace.log_path)
    return RowIndex(database, summaries=summaries)
