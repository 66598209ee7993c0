"""The queue in a PostgreSQL database that workers, APIs and panels on any host share.

Two kinds of transaction, told apart by one advisory lock on the queue:

- **By row**, sharing the lock: a claim takes the first task of the "fast" lane in
  queue order `FOR UPDATE SKIP LOCKED`, and a heartbeat, a recorded execution or a
  finish locks its one task row. Any number run at once, on any host. Each runs the
  same operation as the file store (`queue.transactions`, `queue.rules`) on a state
  holding just the row it locked.
- **Full**, holding the lock alone: adding and planning, the operator's actions,
  retention, and every claim that needs the whole queue's view: reclaiming a dead
  lease, failing what can never run, a task that must run alone once nothing runs
  (or while one runs), a review to resume, a task whose dependency just finished, or
  no fast task at all. These run on the
  whole queue in memory, caught up with what others wrote, exactly as the file store
  runs them; they also say, for every task they judged, which lane a claim may take
  it by (`rules.claim_lane`).

So dependencies, cycles and `parallel_safe: false` keep one set of rules, and the
common path (claim, heartbeat, finish of tasks that wait on nothing) never queues
behind another host. The time a lease is measured by is the database's clock, so
hosts whose clocks disagree still agree on when a lease expires.

Every transaction commits its events with it: they are its last rows, in
`swarm_events`, inserted under the events' own lock (`store.events.insert_events`),
always taken after the queue's; so a transaction refused or rolled back leaves no event,
and ids commit in order. Events that change no task (`log_events`) go in by row. Once a
transaction has committed, its events are appended to this host's execution_log.jsonl,
the host's own copy; readers read the rows.

Readers take no lock: `load` reads one snapshot, and catches up by the rows written
since its last look (each row names the transaction that wrote it). Work an idle
worker could now take (a new task, a release that frees one) NOTIFYs `swarm_queue`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Json

from swarm_runtime.contract import (
    CLAIMABLE_STATUSES,
    DEFAULT_API_ENDPOINT,
    Lease,
    QueueDocument,
    QueueJournalRecord,
    Task,
    iso,
    normalize_queue,
    utc_now,
)
from swarm_runtime.errors import StoreUnavailable
from swarm_runtime.queue.leases import WorkerIdentity, holder_is_alive, owned_by
from swarm_runtime.queue.postgres_rows import (
    CHANNEL,
    Connection,
    Snapshot,
    TaskRow,
    anchors,
    archive_tasks,
    place_new_tasks,
    write_dependencies,
    write_lanes,
    write_one_row,
    write_outcomes,
    write_tasks,
)
from swarm_runtime.queue.rules import Lane, archivable_ids, claim_lane, outcome_of
from swarm_runtime.queue.state import QueueState
from swarm_runtime.queue.transactions import (
    Change,
    ClaimOutcome,
    QueueTransactions,
    lease_task,
)
from swarm_runtime.queue.transition_events import claim_events
from swarm_runtime.settings import Settings
from swarm_runtime.store.database import Database
from swarm_runtime.store.events import committed_events, insert_events, keep_host_copy
from swarm_runtime.store.state_files import Workspace

log = logging.getLogger("swarm.queue")
QUEUE_LOCK = 0x5357_4152_4D02  # any constant the runtime alone uses
# A waiting worker looks at its stop flag this often while no notification comes.
STOP_CHECK_SECONDS = 0.25
R = TypeVar("R")
# So many new rows at once change what the planner should expect of the table (a claim
# must keep finding the few leased rows by their index, not by reading every task).
ANALYZE_AFTER_ADDING = 1000
WATERMARK = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
NOW = "coalesce(%(clock)s::float8, extract(epoch FROM clock_timestamp())::float8)"
# `contract.placement_refusal` as SQL: the task names no other host, and every label it
# needs is one the claiming worker serves.
MAY_RUN = """(doc ->> 'host' IS NULL OR doc ->> 'host' = %(host)s)
        AND coalesce((doc -> 'worker_labels')::jsonb, '[]') <@ %(labels)s::jsonb"""
CLAIM_BY_ROW = f"""
WITH now AS MATERIALIZED (SELECT {NOW} AS at),
leases AS (
    SELECT
        count(*) > 0 AS running,
        coalesce(bool_or(lease_expires_at <= (SELECT at FROM now) OR NOT parallel_safe),
            false) AS blocking,
        json_agg(doc -> 'lease') FILTER (WHERE lease_host = %(host)s) AS here
    FROM swarm_tasks WHERE lease_expires_at IS NOT NULL
),
candidate AS (
    SELECT id, position, doc FROM swarm_tasks
    WHERE lane = 'fast' AND (not_before IS NULL OR not_before <= (SELECT at FROM now))
        AND {MAY_RUN}
    ORDER BY position LIMIT 1
    FOR UPDATE SKIP LOCKED
)
SELECT (SELECT at FROM now),
    leases.blocking
        OR EXISTS (SELECT FROM swarm_tasks WHERE lane = 'full')
        OR (NOT leases.running AND EXISTS (
            SELECT FROM swarm_tasks WHERE lane = 'alone' AND {MAY_RUN}
            AND position < coalesce(c.position, 'Infinity'::numeric))),
    leases.here, q.header, c.position, c.doc, o.outcome
FROM leases CROSS JOIN swarm_queue q
LEFT JOIN candidate c ON true
LEFT JOIN swarm_outcomes o ON o.task_id = c.id
WHERE q.id = 1
"""
# The rows of the tasks some events are about, held still while their holder is checked.
LOCK_TASKS = "SELECT doc FROM swarm_tasks WHERE id = ANY(%s) FOR SHARE"
LOCK_ROW = f"""
WITH locked AS (SELECT position, doc FROM swarm_tasks WHERE id = %(id)s FOR UPDATE)
SELECT {NOW}, locked.position, locked.doc, o.outcome
FROM (SELECT 1) AS one
LEFT JOIN locked ON true
LEFT JOIN swarm_outcomes o ON o.task_id = %(id)s
"""


class PostgresQueueStore(QueueTransactions):
    def __init__(
        self,
        database: Database,
        *,
        workspace: Workspace | None = None,
        retain: int = 1000,
        review_enabled: bool = False,
        clock: Callable[[], float] | None = None,
    ):
        self.database = database
        # This host's workspace, whose execution_log.jsonl keeps a copy of the events
        # this process commits (the rows are every host's, and what readers read).
        self.workspace = workspace
        self.retain = retain
        self.review_enabled = review_enabled
        self._clock = clock
        self._written: Snapshot | None = None
        self._read: Snapshot | None = None
        self._writing = threading.Lock()  # the cached queue is one object per process
        self._reading = threading.Lock()
        self._listener: psycopg.Connection[Any] | None = None
        # Events of transactions whose commit was never answered (see `_copied`), kept
        # under their own lock: the lease keeper's thread commits beside the worker's.
        self._doubtful: list[dict[str, Any]] = []
        self._doubt = threading.Lock()

    @classmethod
    def for_settings(
        cls, settings: Settings, workspace: Workspace | None = None
    ) -> PostgresQueueStore:
        assert settings.database_url is not None
        database = Database.connect(settings.database_url.get_secret_value())
        return cls(
            database,
            workspace=workspace,
            retain=settings.queue_retain,
            review_enabled=settings.review,
        )

    # reading

    def version(self) -> str:
        """The database's snapshot: it moves whenever any transaction may have committed."""
        with self.database.transaction() as conn:
            row = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
        return str(row[0]) if row else ""

    def load(self) -> QueueDocument:
        """One committed state of the queue, read without its lock."""
        with self._reading, self.database.transaction() as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = conn.execute(f"SELECT {WATERMARK}, header FROM swarm_queue WHERE id = 1")
            watermark, header = row.fetchone() or (0, {})
            try:
                self._read, _ = self._caught_up(conn, self._read, watermark, header)
            except BaseException:
                self._read = None
                raise
            return self._read.state.snapshot()

    def _read_queue(self, conn: Connection, watermark: int, header: dict[str, Any]) -> Snapshot:
        rows = conn.execute("SELECT id, position, lane, doc FROM swarm_tasks ORDER BY position")
        snapshot = Snapshot(watermark, QueueState(QueueDocument(), self.review_enabled))
        tasks = []
        for task_id, position, lane, doc in rows:
            snapshot.positions[task_id] = position
            snapshot.lanes[task_id] = lane
            tasks.append(doc)
        outcomes = conn.execute(
            "SELECT task_id, outcome, listed FROM swarm_outcomes"
            " WHERE outcome IS NOT NULL ORDER BY listed"
        )
        listed: dict[str, list[str]] = {"completed": [], "failed": []}
        for task_id, outcome, joined in outcomes:
            listed[outcome].append(task_id)
            snapshot.joined[task_id] = joined
        document = normalize_queue({**header, "tasks": tasks, **listed})
        snapshot.state = QueueState(QueueDocument.model_validate(document), self.review_enabled)
        return snapshot

    def _caught_up(
        self, conn: Connection, known: Snapshot | None, watermark: int, header: dict[str, Any]
    ) -> tuple[Snapshot, set[str]]:
        """`known` brought up to date by reading only the rows written since its
        watermark, as the file store replays a journal; the whole queue when nothing is
        known. Also returns the ids of the tasks read."""
        if known is None:
            snapshot = self._read_queue(conn, watermark, header)
            return snapshot, set(snapshot.positions)
        since = {"since": str(known.watermark)}
        rows = conn.execute(
            "SELECT id, position, lane, doc FROM swarm_tasks"
            " WHERE written_by >= %(since)s::xid8 ORDER BY position",
            since,
        ).fetchall()
        removed = conn.execute(
            "SELECT task_id FROM swarm_archive WHERE written_by >= %(since)s::xid8"
            " ORDER BY archived",
            since,
        ).fetchall()
        outcomes = conn.execute(
            "SELECT task_id, outcome, listed FROM swarm_outcomes"
            " WHERE written_by >= %(since)s::xid8 ORDER BY listed",
            since,
        ).fetchall()
        record = QueueJournalRecord(
            at=0.0,
            tasks=[Task.model_validate(doc) for *_, doc in rows],
            before=anchors(known.positions, [(i, p) for i, p, *_ in rows]),
            removed=[task_id for (task_id,) in removed],
            outcomes={task_id: outcome for task_id, outcome, _ in outcomes},
            api_endpoint=header.get("api_endpoint"),
        )
        known.state.apply(record)
        if outcomes:
            known.joined.update({task_id: joined for task_id, _, joined in outcomes})
            known.state.order_outcomes(known.joined)
        for task_id, position, lane, _ in rows:
            known.positions[task_id] = position
            known.lanes[task_id] = lane
        for task_id in record.removed:
            known.positions.pop(task_id, None)
            known.lanes.pop(task_id, None)
        known.watermark = watermark
        return known, {task_id for task_id, *_ in rows}

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

    def _listen_quietly(self) -> None:
        try:
            self._listening()
        except (psycopg.Error, ConnectionError):
            self._drop_listener()  # the wait says why, and waits out its interval

    def _listening(self) -> psycopg.Connection[Any]:
        if self._listener is None or self._listener.closed:
            self._listener = self.database.listener(CHANNEL)
        return self._listener

    def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    # transactions by row

    def claim(
        self, worker: WorkerIdentity, lease_seconds: float, ahead: bool = False
    ) -> ClaimOutcome:
        """The first fast task by its row lock; anything else under the queue's lock.
        Nothing `ahead` of a task in flight: by row, a claim has no view of the whole
        queue to tell whether another worker wants the task (`rules.spare_task`).

        The worker listens before it claims, so work added while a claim that found
        nothing ran still wakes its wait."""
        if ahead:
            return ClaimOutcome()
        self._listen_quietly()
        by_row = self._claim_by_row(worker, lease_seconds)
        return by_row if by_row is not None else super().claim(worker, lease_seconds)

    def _claim_by_row(self, worker: WorkerIdentity, lease_seconds: float) -> ClaimOutcome | None:
        """None when this claim needs the whole queue (see the module docstring). It
        commits the same events, and says when the attempt began, as a full claim."""
        with (
            self._copied() as sent,
            self.database.transaction(holding=QUEUE_LOCK, shared=True) as conn,
        ):
            labels = Json(sorted(worker.labels))
            params = {"clock": self._now(), "host": worker.host, "labels": labels}
            found = conn.execute(CLAIM_BY_ROW, params).fetchone()
            assert found is not None
            now, needs_queue, here, header, position, doc, outcome = found
            if needs_queue or doc is None or any_holder_gone(here or []):
                return None
            state = row_state(doc, outcome, self.review_enabled)
            claim = ClaimOutcome(
                task=lease_task(state, state.doc.tasks[0], worker, now, lease_seconds),
                api_endpoint=header.get("api_endpoint") or DEFAULT_API_ENDPOINT,
                started_at=iso(utc_now()),
            )
            for event in claim_events(claim, worker):
                state.emit(event)
            self._write_row(conn, state, position, now, doc, sent)
        return claim

    def log_events(
        self, events: Sequence[dict[str, Any]], holder: WorkerIdentity | None = None
    ) -> bool:
        """Events that change no task need no view of the queue: they go in beside other
        rows' transactions. With `holder`, the rows of their tasks are held still while
        it is checked to hold them all, as the file store checks under its lock."""
        with (
            self._copied() as sent,
            self.database.transaction(holding=QUEUE_LOCK, shared=True) as conn,
        ):
            if holder is not None and not holds_all(conn, events, holder):
                return False
            insert_events(conn, events)
            sent += events
        return True

    def _task_transaction(self, task_id: str, change: Change[R]) -> R:
        """Run `change` on the one task row, locked, beside other rows' transactions."""
        with (
            self._copied() as sent,
            self.database.transaction(holding=QUEUE_LOCK, shared=True) as conn,
        ):
            found = conn.execute(LOCK_ROW, {"id": task_id, "clock": self._now()}).fetchone()
            assert found is not None
            now, position, doc, outcome = found
            state = row_state(doc, outcome, self.review_enabled)
            result = change(state, now)
            self._write_row(conn, state, position, now, doc, sent)
        return result

    def _write_row(
        self,
        conn: Connection,
        state: QueueState,
        position: Decimal,
        now: float,
        before: Any,
        sent: list[dict[str, Any]],
    ) -> None:
        """Write the row's change and its events, and commit. The events join `sent`
        first: the COMMIT goes out with the row's statements, so a commit whose answer
        is lost is lost inside this call, and its events must already be in doubt."""
        record = state.take_record(now)
        if record is None:
            return
        sent += record.events
        if not record.tasks:  # events alone: the block's end commits them
            insert_events(conn, record.events)
        for task in record.tasks:  # the one row's task
            if task.depends_on != (before or {}).get("depends_on", []):
                write_dependencies(conn, [task])
            row = TaskRow(task, position, lane_by_row(state, task))
            finished = outcome_of(task, self.review_enabled) is not None
            write_one_row(conn, row, record.outcomes, finished=finished, events=record.events)

    def _now(self) -> float | None:
        """The injected clock's time, or None for the database's."""
        return self._clock() if self._clock is not None else None

    # transactions on the whole queue

    def _transaction(self, change: Change[R]) -> R:
        """A change that raises, or a commit that fails, drops the cached queue, which is
        then read again: nothing half-done survives. Once committed, its events are
        copied to this host's log."""
        with self._writing, self._copied() as sent:
            try:
                with self.database.transaction(holding=QUEUE_LOCK) as conn:
                    result, events = self._run(conn, change)
                    sent += events
            except BaseException:
                self._written = None
                raise
        return result

    def _run(self, conn: Connection, change: Change[R]) -> tuple[R, list[dict[str, Any]]]:
        row = conn.execute(
            f"SELECT {WATERMARK}, header, {NOW} FROM swarm_queue WHERE id = 1",
            {"clock": self._now()},
        ).fetchone()
        assert row is not None
        watermark, header, now = row
        snapshot, read = self._caught_up(conn, self._written, watermark, header)
        self._written = snapshot
        result = change(snapshot.state, now)
        snapshot.state.remove(archivable_ids(snapshot.state, self.retain))
        record = snapshot.state.take_record(now)
        self._write(conn, snapshot, record, read)
        return result, record.events if record is not None else []

    def _write(
        self,
        conn: Connection,
        snapshot: Snapshot,
        record: QueueJournalRecord | None,
        read: set[str],
    ) -> None:
        """Write what changed, and the lane of every task whose lane may have: those read
        or written, and their dependents; the record's events last (see `insert_events`)."""
        state = snapshot.state
        if record is not None and record.removed:
            archive_tasks(conn, record.removed)
            for task_id in record.removed:
                snapshot.positions.pop(task_id, None)
                snapshot.lanes.pop(task_id, None)
        written = record.tasks if record is not None else []
        new_ids = [t.id for t in written if t.id not in snapshot.positions]
        place_new_tasks(snapshot, new_ids)
        lanes = judged_lanes(state, read | {t.id for t in written})
        write_tasks(conn, [TaskRow(t, snapshot.positions[t.id], lanes[t.id]) for t in written])
        write_dependencies(conn, written)
        written_ids = {t.id for t in written}
        moved = {
            task_id: lane
            for task_id, lane in lanes.items()
            if lane != snapshot.lanes.get(task_id) and task_id not in written_ids
        }
        write_lanes(conn, moved)
        snapshot.lanes.update(lanes)
        if record is not None:
            write_outcomes(conn, record.outcomes)
            if record.api_endpoint is not None:
                conn.execute("UPDATE swarm_queue SET header = %s WHERE id = 1", (header_of(state),))
        if any(t.lease is None for t in written) or any(moved.values()):
            conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        if len(new_ids) >= ANALYZE_AFTER_ADDING:
            conn.execute("ANALYZE swarm_tasks")
        if record is not None:
            insert_events(conn, record.events)

    @contextmanager
    def _copied(self) -> Iterator[list[dict[str, Any]]]:
        """The events a transaction sends (the block adds them to the list it is given),
        copied to this host's log once it commits: after the commit, since a transaction
        rolled back has no events. A commit never answered (the server went away during
        it) may have committed all the same: its events are looked up once the database
        answers again, and those it holds are copied then: before the next transaction,
        not after it, since a step tried again sends the same events, and once it has
        committed the lookup would find them twice."""
        if self._doubtful:  # older: first
            self._settle_doubtful()
        sent: list[dict[str, Any]] = []
        try:
            yield sent
        except StoreUnavailable:
            with self._doubt:
                self._doubtful += sent
            raise
        self._keep_copy(sent)

    def _settle_doubtful(self) -> None:
        with self._doubt:
            doubtful, self._doubtful = self._doubtful, []
        try:
            with self.database.transaction() as conn:
                committed = committed_events(conn, doubtful)
        except StoreUnavailable:  # so would the transaction waiting for this be
            with self._doubt:
                self._doubtful = doubtful + self._doubtful
            raise
        self._keep_copy(committed)  # once the lookup is over: copied once, never again

    def _keep_copy(self, events: Sequence[dict[str, Any]]) -> None:
        """This host's copy of the events a transaction committed, in its workspace's log."""
        if events and self.workspace is not None:
            keep_host_copy(self.workspace, events)

    def flush(self, leaving: WorkerIdentity | None = None) -> None:
        """Every committed transaction is already what every reader sees."""

    def close(self) -> None:
        self._drop_listener()
        self.database.close()


def row_state(doc: Any, outcome: str | None, review_enabled: bool) -> QueueState:
    """A queue holding just one task row (none if there was no such row), with its
    place in the outcome lists: what a transaction by row runs its operation on."""
    tasks = [Task.model_validate(doc)] if doc is not None else []
    ids = [task.id for task in tasks]
    document = QueueDocument.model_construct(  # each part is valid already
        tasks=tasks,
        completed=ids if outcome == "completed" else [],
        failed=ids if outcome == "failed" else [],
    )
    return QueueState(document, review_enabled, private=True)


def lane_by_row(state: QueueState, task: Task) -> Lane | None:
    """A row's lane judged without its neighbours: a waiting task with dependencies
    goes to the full claim, which can see whether they are met."""
    if task.depends_on and task.status in CLAIMABLE_STATUSES:
        return "full"
    return claim_lane(state, task)


def judged_lanes(state: QueueState, task_ids: set[str]) -> dict[str, Lane | None]:
    """The lane of each of `task_ids` still in the queue and of their dependents."""
    judged = set(task_ids)
    for task_id in task_ids:
        judged |= state.dependents(task_id)
    return {
        task_id: claim_lane(state, task)
        for task_id in judged
        if (task := state.find(task_id)) is not None
    }


def holds_all(conn: Connection, events: Sequence[dict[str, Any]], holder: WorkerIdentity) -> bool:
    """Whether `holder` holds the task of every one of `events`, their rows held still."""
    task_ids = sorted({event["task_id"] for event in events})
    docs = [doc for (doc,) in conn.execute(LOCK_TASKS, (task_ids,)).fetchall()]
    return len(docs) == len(task_ids) and all(
        owned_by(Task.model_validate(doc), holder) for doc in docs
    )


def any_holder_gone(leases: list[dict[str, Any]]) -> bool:
    """A lease held on this host by a process that is gone: the full claim reclaims it."""
    return any(not holder_is_alive(Lease.model_validate(lease)) for lease in leases)


def header_of(state: QueueState) -> Json:
    """queue.json's keys other than the task and outcome lists, in their order."""
    lists = {"tasks", "completed", "failed"}
    return Json(state.doc.model_dump(mode="json", exclude_unset=True, exclude=lists))
