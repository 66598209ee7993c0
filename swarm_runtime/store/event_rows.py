"""The database's event source: every host's events, the rows of `swarm_events`, read by id.

A row's id is its cursor. Appends commit in id order (store.events), so once a reader
has seen id n, no event committed later has a smaller one: "rows after n, up to the
highest id now" never misses or repeats one. Reads take no lock, so a reader never
waits for a writer or holds one up, and the rows come back as the records the writer
built, the same objects the workspace's file holds, envelope first.

The summaries the panel shows on every page (each task's count and last status, when
each worker was last heard from) are folded from the envelope columns of the rows added
since the last `refresh`, so a page view costs no scan of the table.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from swarm_runtime.store.event_source import (
    EVERY_EVENT,
    EventFilter,
    EventPage,
    IndexedEvent,
    IndexStats,
    TaskInfo,
    sets_last_status,
)

if TYPE_CHECKING:
    from psycopg import Connection

    from swarm_runtime.store.database import Database

# Row ids never start over, so every reader of one database shares one epoch: a cursor
# stays good across panel restarts and from one host's panel to another's.
ROWS_EPOCH = "rows"
FOLD_BATCH_ROWS = 5000
HIGHEST = "SELECT coalesce(max(id), 0) FROM swarm_events"
ENVELOPES = (
    "SELECT id, task_id, worker_id, status, timestamp FROM swarm_events"
    " WHERE id > %s ORDER BY id LIMIT %s"
)
FILTERED_COLUMNS = (("task", "task_id"), ("status", "status"), ("worker", "worker_id"))

Row = tuple[int, dict[str, Any]]


def conditions(wanted: EventFilter) -> tuple[str, list[str]]:
    """The `AND ...` clauses (over indexed columns) that select what `wanted` admits."""
    chosen = [(column, getattr(wanted, name)) for name, column in FILTERED_COLUMNS]
    present = [(column, value) for column, value in chosen if value is not None]
    return "".join(f" AND {column} = %s" for column, _ in present), [v for _, v in present]


def select_records(
    conn: Connection[Any],
    bounds: str,
    values: list[int],
    wanted: EventFilter,
    order: str,
    limit: int,
) -> list[Row]:
    """Up to `limit` records within `bounds` that `wanted` admits, by id in `order`."""
    where, matched = conditions(wanted)
    return conn.execute(
        f"SELECT id, record FROM swarm_events WHERE {bounds}{where} ORDER BY id {order} LIMIT %s",
        (*values, *matched, max(limit, 0)),
    ).fetchall()


def indexed(rows: Iterable[Row]) -> list[IndexedEvent]:
    return [IndexedEvent(row_id - 1, row_id, record) for row_id, record in rows]


def highest_id(conn: Connection[Any]) -> int:
    row = conn.execute(HIGHEST).fetchone()
    return int(row[0]) if row else 0


class RowIndex:
    """The events of every host, as rows; with `summaries`, folds what `refresh` reads.

    A reader that never asks for the summaries (the command line) leaves `summaries`
    off, and never reads the envelope of every row just to print a few of them."""

    def __init__(self, database: Database, *, summaries: bool = True):
        self.database = database
        self.summaries = summaries
        self.lock = threading.RLock()
        self._reading = threading.Lock()
        self._folded = self._highest = self.events = 0
        self._tasks: dict[str, TaskInfo] = {}
        self._workers: dict[str, str | None] = {}

    # --- summaries --------------------------------------------------------------------

    def refresh(self, budget: int | None = None) -> int:
        """Fold the rows added since the last call: at most `budget` of them, all for None.

        The query runs outside `lock`, so the summaries stay readable while the
        database is slow or away; `_reading` keeps two refreshes from folding a row twice."""
        if not self.summaries:
            return 0
        batch = FOLD_BATCH_ROWS if budget is None else max(1, min(budget, FOLD_BATCH_ROWS))
        total = 0
        with self._reading:
            while rows := self._envelopes_after(self._folded, batch):
                self._fold(rows)
                total += len(rows)
                if budget is not None or len(rows) < batch:
                    break
        return total

    def _envelopes_after(self, after: int, limit: int) -> list[tuple[Any, ...]]:
        with self.database.transaction() as conn:
            self._highest = highest_id(conn)
            return conn.execute(ENVELOPES, (after, limit)).fetchall()

    def _fold(self, rows: list[tuple[Any, ...]]) -> None:
        with self.lock:
            for row_id, task_id, worker_id, status, timestamp in rows:
                known = self._tasks.get(task_id)
                if known is not None and not sets_last_status(status):
                    status, timestamp = known.last_status, known.last_timestamp
                self._tasks[task_id] = TaskInfo(
                    (known.events if known else 0) + 1, status, timestamp
                )
                self._workers[worker_id] = timestamp
                self._folded = row_id
            self.events += len(rows)

    @property
    def epoch(self) -> str:
        return ROWS_EPOCH

    @property
    def behind(self) -> int:
        """Rows that existed at the last refresh and are not folded yet."""
        return max(0, self._highest - self._folded)

    def task(self, task_id: str) -> TaskInfo | None:
        with self.lock:
            return self._tasks.get(task_id)

    def workers_last_seen(self) -> dict[str, str | None]:
        with self.lock:
            return dict(self._workers)

    def stats(self) -> IndexStats:
        with self.lock:
            return IndexStats(
                epoch=ROWS_EPOCH,
                events=self.events,
                lines=self.events,
                tasks=len(self._tasks),
                indexed_bytes=0,
                file_bytes=0,
                resets=0,
                malformed_count=0,
                malformed=[],
            )

    # --- reading ----------------------------------------------------------------------

    def latest(self, limit: int, wanted: EventFilter = EVERY_EVENT) -> EventPage:
        """The latest `limit` events `wanted` admits, and the highest id: where to go on."""
        with self.database.transaction() as conn:
            high = highest_id(conn)
            rows = select_records(conn, "id <= %s", [high], wanted, "DESC", limit)
        return EventPage(indexed(reversed(rows)), high, ROWS_EPOCH, reset=False, more=False)

    def events_after(
        self,
        cursor: int,
        limit: int = 100,
        epoch: str | None = None,
        wanted: EventFilter = EVERY_EVENT,
    ) -> EventPage:
        """Events `wanted` admits with ids above `cursor`, up to `limit` of them.

        The page's cursor passes the rows the filter left out as well, so a filtered
        follower never reads them again. A cursor from another epoch, or above every id,
        gets `reset=True` and the latest `limit` events instead."""
        limit = max(limit, 1)
        with self.database.transaction() as conn:
            high = highest_id(conn)
            known = epoch in (None, ROWS_EPOCH) and 0 <= cursor <= high
            between = "id > %s AND id <= %s"
            rows = (
                select_records(conn, between, [cursor, high], wanted, "ASC", limit) if known else []
            )
        if not known:
            stale = self.latest(limit, wanted)
            return EventPage(stale.events, stale.cursor, ROWS_EPOCH, reset=True, more=False)
        reached = rows[-1][0] if len(rows) == limit else high
        return EventPage(indexed(rows), reached, ROWS_EPOCH, reset=False, more=reached < high)

    def timeline(self, task_id: str, limit: int = 500) -> tuple[list[IndexedEvent], int]:
        """The task's latest `limit` events, oldest first, and how many it has in all,
        both read through the (task_id, id) index."""
        page = self.latest(limit, EventFilter(task=task_id))
        with self.database.transaction() as conn:
            counted = conn.execute(
                "SELECT count(*) FROM swarm_events WHERE task_id = %s AND id <= %s",
                (task_id, page.cursor),
            ).fetchone()
        return page.events, int(counted[0]) if counted else 0

    def close(self) -> None:
        """The database belongs to whoever opened it."""
