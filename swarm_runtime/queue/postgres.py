"""The queue in a PostgreSQL database that workers, APIs and panels on any host share.

A transaction is a database transaction holding the one `swarm_queue` row `FOR UPDATE`:
the queue's lock, taken by every writer on every host, so dependencies, cycles and
`parallel_safe: false` are judged on one consistent queue by the same rules
(`queue.rules`) and the same operations (`queue.transactions`) as the file store. The
time a lease is measured by is the database's clock, read under that lock, so hosts
whose clocks disagree still agree on when a lease expires.

Each process keeps the queue in memory and reads it again only when `changes` (bumped by
every transaction that changed something) says another process wrote. A transaction
writes back only the task rows it changed. Readers take no lock: `load` reads one
snapshot. A release or a new task NOTIFYs `swarm_queue`, which wakes idle workers.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Json

from swarm_runtime.contract import QueueDocument, QueueJournalRecord, Task, normalize_queue
from swarm_runtime.queue.rules import archivable_ids
from swarm_runtime.queue.state import QueueState
from swarm_runtime.queue.transactions import Change, QueueTransactions
from swarm_runtime.settings import Settings
from swarm_runtime.store.database import Database

log = logging.getLogger("swarm.queue")
CHANNEL = "swarm_queue"
# A waiting worker looks at its stop flag this often while no notification comes.
STOP_CHECK_SECONDS = 0.25
R = TypeVar("R")
Connection = psycopg.Connection[Any]


@dataclass
class Snapshot:
    """The queue as of `changes`, with each task's place in the table's order."""

    changes: int
    state: QueueState
    positions: dict[str, Decimal] = field(default_factory=dict)


class PostgresQueueStore(QueueTransactions):
    def __init__(
        self,
        database: Database,
        *,
        retain: int = 1000,
        review_enabled: bool = False,
        clock: Callable[[], float] | None = None,
    ):
        self.database = database
        self.retain = retain
        self.review_enabled = review_enabled
        self._clock = clock
        self._written: Snapshot | None = None
        self._read: Snapshot | None = None
        self._writing = threading.Lock()  # the cached queue is one object per process
        self._reading = threading.Lock()
        self._listener: Connection | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> PostgresQueueStore:
        assert settings.database_url is not None
        database = Database.connect(settings.database_url.get_secret_value())
        return cls(database, retain=settings.queue_retain, review_enabled=settings.review)

    # reading

    def version(self) -> int:
        with self.database.transaction() as conn:
            row = conn.execute("SELECT changes FROM swarm_queue WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def load(self) -> QueueDocument:
        """One committed state of the queue, read without its lock."""
        with self._reading, self.database.transaction() as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = conn.execute("SELECT changes, header FROM swarm_queue WHERE id = 1").fetchone()
            assert row is not None
            try:
                self._read = self._caught_up(conn, self._read, row[0], row[1])
            except BaseException:
                self._read = None
                raise
            return self._read.state.snapshot()

    def _read_queue(self, conn: Connection, changes: int, header: dict[str, Any]) -> Snapshot:
        rows = conn.execute("SELECT id, position, doc FROM swarm_tasks ORDER BY position")
        positions, tasks = {}, []
        for task_id, position, doc in rows:
            positions[task_id] = position
            tasks.append(doc)
        outcomes = conn.execute(
            "SELECT task_id, outcome FROM swarm_outcomes WHERE outcome IS NOT NULL ORDER BY listed"
        )
        listed: dict[str, list[str]] = {"completed": [], "failed": []}
        for task_id, outcome in outcomes:
            listed[outcome].append(task_id)
        document = normalize_queue({**header, "tasks": tasks, **listed})
        state = QueueState(QueueDocument.model_validate(document), self.review_enabled)
        return Snapshot(changes, state, positions)

    def _caught_up(
        self, conn: Connection, known: Snapshot | None, changes: int, header: dict[str, Any]
    ) -> Snapshot:
        """`known` brought up to `changes` by reading only the rows changed since, as the
        file store replays a journal; the whole queue when nothing is known."""
        if known is None:
            return self._read_queue(conn, changes, header)
        if known.changes == changes:
            return known
        since = (known.changes,)
        rows = conn.execute(
            "SELECT id, position, doc FROM swarm_tasks WHERE changed > %s ORDER BY position",
            since,
        ).fetchall()
        removed = conn.execute(
            "SELECT task_id FROM swarm_archive WHERE changed > %s ORDER BY archived", since
        ).fetchall()
        outcomes = conn.execute(
            "SELECT task_id, outcome FROM swarm_outcomes WHERE changed > %s ORDER BY listed",
            since,
        ).fetchall()
        tasks = [Task.model_validate(doc) for _, _, doc in rows]
        record = QueueJournalRecord(
            at=0.0,
            tasks=tasks,
            before=anchors(known.positions, [(i, p) for i, p, _ in rows]),
            removed=[task_id for (task_id,) in removed],
            outcomes=dict(outcomes),
            api_endpoint=header.get("api_endpoint"),
        )
        known.state.apply(record)
        known.positions.update({task_id: position for task_id, position, _ in rows})
        for task_id in record.removed:
            known.positions.pop(task_id, None)
        known.changes = changes
        return known

    def wait_for_change(self, timeout: float, stop: threading.Event) -> None:
        """Sleep on LISTEN until a task is added or released, not by asking again and again."""
        deadline = time.monotonic() + timeout
        try:
            listener = self._listening()
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                for _ in listener.notifies(timeout=min(left, STOP_CHECK_SECONDS), stop_after=1):
                    return
        except (psycopg.Error, ConnectionError) as exc:
            log.warning("not listening for queue changes (%s); waiting out the interval", exc)
            self._drop_listener()
            stop.wait(max(0.0, deadline - time.monotonic()))

    def _listening(self) -> Connection:
        if self._listener is None or self._listener.closed:
            self._listener = self.database.listener(CHANNEL)
        return self._listener

    def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    # writing

    def _transaction(self, change: Change[R]) -> R:
        """A change that raises, or a commit that fails, drops the cached queue, which is
        then read again: nothing half-done survives."""
        with self._writing:
            try:
                with self.database.transaction() as conn:
                    return self._run(conn, change)
            except BaseException:
                self._written = None
                raise

    def _run(self, conn: Connection, change: Change[R]) -> R:
        row = conn.execute(
            "SELECT changes, header, extract(epoch FROM clock_timestamp())::float8"
            " FROM swarm_queue WHERE id = 1 FOR UPDATE"
        ).fetchone()
        assert row is not None
        changes, header, database_now = row
        self._written = snapshot = self._caught_up(conn, self._written, changes, header)
        now = self._clock() if self._clock is not None else database_now
        result = change(snapshot.state, now)
        archived = archivable_ids(snapshot.state, self.retain)
        snapshot.state.remove(archived)
        record = snapshot.state.take_record(now)
        if record is not None:
            self._write(conn, snapshot, record)
            snapshot.changes += 1
        return result

    def _write(self, conn: Connection, snapshot: Snapshot, record: QueueJournalRecord) -> None:
        change = snapshot.changes + 1
        if record.removed:
            archive_tasks(conn, record.removed, change)
            for task_id in record.removed:
                snapshot.positions.pop(task_id, None)
        write_tasks(conn, snapshot, record.tasks, change)
        write_outcomes(conn, record.outcomes, change)
        if record.api_endpoint is not None:
            conn.execute("UPDATE swarm_queue SET header = %s WHERE id = 1", (header_of(snapshot),))
        conn.execute("UPDATE swarm_queue SET changes = changes + 1 WHERE id = 1")
        if any(task.lease is None for task in record.tasks):
            conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))

    def flush(self) -> None:
        """Every committed transaction is already what every reader sees."""

    def close(self) -> None:
        self._drop_listener()
        self.database.close()


def header_of(snapshot: Snapshot) -> Json:
    """queue.json's keys other than the task and outcome lists, in their order."""
    lists = {"tasks", "completed", "failed"}
    return Json(snapshot.state.doc.model_dump(mode="json", exclude_unset=True, exclude=lists))


def anchors(known: dict[str, Decimal], changed: list[tuple[str, Decimal]]) -> dict[str, str]:
    """For each new task among `changed`, the known task it stands in front of (none when
    it is last): inserting them in position order then rebuilds the table's order."""
    order = sorted((position, task_id) for task_id, position in known.items())
    places = [position for position, _ in order]
    found = {}
    for task_id, position in changed:
        if task_id in known:
            continue
        at = bisect.bisect_right(places, position)
        if at < len(order):
            found[task_id] = order[at][1]
    return found


def archive_tasks(conn: Connection, task_ids: list[str], change: int) -> None:
    conn.execute(
        "INSERT INTO swarm_archive (task_id, changed, doc)"
        " SELECT id, %s, doc FROM swarm_tasks WHERE id = ANY(%s) ORDER BY position",
        (change, task_ids),
    )
    conn.execute("DELETE FROM swarm_tasks WHERE id = ANY(%s)", (task_ids,))


def write_tasks(conn: Connection, snapshot: Snapshot, tasks: list[Task], change: int) -> None:
    """Insert new tasks at their place in the queue's order, update changed ones."""
    place_new_tasks(snapshot, [t.id for t in tasks if t.id not in snapshot.positions])
    rows = [
        (
            task.id,
            snapshot.positions[task.id],
            task.status.value,
            task.lease.expires_at if task.lease else None,
            change,
            Json(task.model_dump(mode="json", exclude_unset=True)),
        )
        for task in tasks
    ]
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO swarm_tasks (id, position, status, lease_expires_at, changed, doc)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET"
            " status = excluded.status, lease_expires_at = excluded.lease_expires_at,"
            " changed = excluded.changed, doc = excluded.doc",
            rows,
        )


def place_new_tasks(snapshot: Snapshot, new_ids: list[str]) -> None:
    """Give each new task a position between its neighbours in the queue's order: after
    the last task when appended, in front of the parent when planned."""
    state, positions = snapshot.state, snapshot.positions
    tasks = state.doc.tasks
    for task_id in sorted(new_ids, key=state.rank):
        rank = state.rank(task_id)
        after = positions[tasks[rank - 1].id] if rank > 0 else None
        before = next((positions[t.id] for t in tasks[rank + 1 :] if t.id in positions), None)
        positions[task_id] = between(after, before)


def between(after: Decimal | None, before: Decimal | None) -> Decimal:
    if after is None and before is None:
        return Decimal(1)
    if before is None:
        assert after is not None
        return after + 1
    if after is None:
        return before - 1
    return (after + before) / 2


def write_outcomes(conn: Connection, outcomes: dict[str, Any], change: int) -> None:
    """`completed` and `failed` in the order the ids joined them; an id that left both
    keeps its row (outcome null), so a process catching up sees it leave."""
    for task_id, outcome in outcomes.items():
        conn.execute(
            "INSERT INTO swarm_outcomes (task_id, outcome, changed) VALUES (%s, %s, %s)"
            " ON CONFLICT (task_id) DO UPDATE SET outcome = excluded.outcome,"
            " listed = nextval('swarm_outcome_order'), changed = excluded.changed",
            (task_id, outcome, change),
        )
