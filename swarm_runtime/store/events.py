"""Lifecycle events in the contract's shape, as execution_log.jsonl and, with a database,
its `swarm_events` table hold them: one log for every host, each event a row whose
increasing id is a reader's cursor. An event is committed with the queue transaction it
belongs to (`queue.transactions`): each store writes it, in the same transaction as the
queue's change, to its log (`queue.log_apply`) or its rows (`insert_events`); a database
store also keeps each host's own events in that host's file. `event_source` picks what
readers read, the database's rows when there is one."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from swarm_runtime.contract import (
    EVENT_FIELD_CAP_BYTES,
    TRUNCATION_MARKER,
    Event,
    ExecutionEvent,
    LeaseEvent,
    Status,
)
from swarm_runtime.settings import this_host
from swarm_runtime.store.database import lock_call
from swarm_runtime.store.event_rows import RowIndex
from swarm_runtime.store.event_source import EventSource
from swarm_runtime.store.log_index import LogIndex
from swarm_runtime.store.state_files import Workspace, append_lines, json_line

if TYPE_CHECKING:
    from psycopg import Connection

    from swarm_runtime.store.database import Database

log = logging.getLogger("swarm.store")
ENVELOPE = ("task_id", "worker_id", "status", "timestamp")
# Inserts take this lock to the end of their transaction, so ids commit in order and a
# reader past id n never misses an event committed later with a smaller id. It is not
# the queue's lock (`queue.postgres.QUEUE_LOCK`): a transaction takes it after that one,
# never before, and as its last lock.
EVENTS_LOCK = 0x5357_4152_4D03
# The lock is taken before the first row draws its id; the rows draw theirs in order.
INSERT_EVENTS = f"""
INSERT INTO swarm_events (task_id, worker_id, status, timestamp, record)
SELECT e.task_id, e.worker_id, e.status, e.timestamp, e.record
FROM (SELECT {lock_call(EVENTS_LOCK, shared=False)}) AS locked,
    unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::json[])
        WITH ORDINALITY AS e(task_id, worker_id, status, timestamp, record, n)
ORDER BY e.n
"""


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
    """One writer's events (a worker's, an operator front end's), built for the queue
    transactions that commit them: the store a transaction runs on writes them. Each
    names the host it was written on, since a database holds every host's."""

    def __init__(self, worker_id: str, host: str | None = None):
        self.worker_id = worker_id
        self.host = host or this_host()

    def build(
        self, task_id: str, status: Status, kind: type[Event] | None = None, **fields: Any
    ) -> dict[str, Any]:
        """An event by this writer, for a queue transaction to commit with its changes."""
        fields.setdefault("host", self.host)
        return build_event(task_id, self.worker_id, status, kind, **fields)


def insert_events(conn: Connection[Any], events: Sequence[dict[str, Any]]) -> None:
    """Insert `events` as rows, in their order, in the caller's transaction, which holds
    EVENTS_LOCK from here to its end. One statement, so it may share a pipeline with the
    COMMIT. Call it last, after the transaction's other locks (the queue's, its rows'):
    whoever holds EVENTS_LOCK then waits for nothing but its commit."""
    if not events:
        return
    from psycopg.types.json import Json

    columns = [[str(event[key]) for event in events] for key in ENVELOPE]
    conn.execute(INSERT_EVENTS, (*columns, [Json(event) for event in events]))


EVENT_COMMITTED = (
    "SELECT 1 FROM swarm_events WHERE task_id = %s AND worker_id = %s AND status = %s"
    " AND timestamp = %s LIMIT 1"
)


def committed_events(
    conn: Connection[Any], events: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Those of `events` the database holds (by their envelope: a timestamp to the
    microsecond, by one writer, names one event)."""
    return [
        event
        for event in events
        if conn.execute(EVENT_COMMITTED, [str(event[key]) for key in ENVELOPE]).fetchone()
    ]


def keep_host_copy(workspace: Workspace, events: Sequence[dict[str, Any]]) -> None:
    """Append a committed transaction's events to this host's execution_log.jsonl, in one
    write. The database holds them durably, so no fsync; and the transaction stands
    whatever happens here, so a failure is logged, not raised (the rows are complete,
    the host's copy lacks them)."""
    try:
        append_lines(workspace, workspace.log_path, list(events), durable=False)
    except OSError as exc:
        log.warning(
            "%d committed event(s) not copied to %s: %s", len(events), workspace.log_path, exc
        )


class DatabaseEvents:
    """The events of every host, in the order they were committed."""

    def __init__(self, database: Database):
        self.database = database

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
