"""How the queue's changes are written as rows of the database (`queue.postgres`).

Every row a transaction writes names that transaction (`written_by`), so readers catch
up by asking for what was written since their last look. A task row also carries what a
claim needs to find it without reading its document: its lane, due time, whether it
may run beside others, and where its lease is held; `swarm_dependencies` says who waits
on whom, so a finished task can hand its waiting dependents to a full claim.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Json

from swarm_runtime.contract import CLAIMABLE_STATUSES, Task
from swarm_runtime.queue.rules import Lane
from swarm_runtime.queue.state import QueueState
from swarm_runtime.store.database import committing
from swarm_runtime.store.events import insert_events

Connection = psycopg.Connection[Any]
CHANNEL = "swarm_queue"
CLAIMABLE = sorted(status.value for status in CLAIMABLE_STATUSES)


@dataclass
class Snapshot:
    """The queue as read at `watermark` (the oldest transaction still running then, so
    everything written since is at or above it), with what its rows say besides."""

    watermark: int
    state: QueueState
    positions: dict[str, Decimal] = field(default_factory=dict)
    lanes: dict[str, Lane | None] = field(default_factory=dict)
    joined: dict[str, int] = field(default_factory=dict)  # outcome list order, by id


@dataclass(frozen=True)
class TaskRow:
    task: Task
    position: Decimal
    lane: Lane | None

    def columns(self) -> dict[str, Any]:
        """The row's columns: the document, and what a claim reads without it."""
        task, lease = self.task, self.task.lease
        return {
            "id": task.id,
            "position": self.position,
            "status": task.status.value,
            "lease_expires_at": lease.expires_at if lease else None,
            "lease_host": lease.host if lease else None,
            "lane": self.lane,
            "not_before": task.not_before,
            "parallel_safe": task.parallel_safe,
            "doc": Json(task.model_dump(mode="json", exclude_unset=True)),
        }


def write_tasks(conn: Connection, rows: list[TaskRow]) -> None:
    """Insert or update each task with the columns a claim reads."""
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO swarm_tasks (id, position, status, lease_expires_at, lease_host,"
            " lane, not_before, parallel_safe, doc, written_by)"
            " VALUES (%(id)s, %(position)s, %(status)s, %(lease_expires_at)s, %(lease_host)s,"
            " %(lane)s, %(not_before)s, %(parallel_safe)s, %(doc)s, pg_current_xact_id())"
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status,"
            " lease_expires_at = excluded.lease_expires_at, lease_host = excluded.lease_host,"
            " lane = excluded.lane, not_before = excluded.not_before,"
            " parallel_safe = excluded.parallel_safe, doc = excluded.doc,"
            " written_by = excluded.written_by",
            [row.columns() for row in rows],
        )


def write_lanes(conn: Connection, lanes: dict[str, Lane | None]) -> None:
    """New lanes for tasks whose documents did not change (a dependency finished)."""
    if lanes:
        conn.execute(
            "UPDATE swarm_tasks t SET lane = c.lane, written_by = pg_current_xact_id()"
            " FROM unnest(%s::text[], %s::text[]) AS c(id, lane) WHERE t.id = c.id",
            (list(lanes), list(lanes.values())),
        )


def write_dependencies(conn: Connection, tasks: Iterable[Task]) -> None:
    """Say again on whom each of `tasks` waits."""
    tasks = list(tasks)
    if not tasks:
        return
    conn.execute("DELETE FROM swarm_dependencies WHERE task_id = ANY(%s)", ([t.id for t in tasks],))
    pairs = [(dep, task.id) for task in tasks for dep in dict.fromkeys(task.depends_on)]
    if pairs:
        conn.execute(
            "INSERT INTO swarm_dependencies (dependency, task_id)"
            " SELECT * FROM unnest(%s::text[], %s::text[])",
            ([dep for dep, _ in pairs], [task_id for _, task_id in pairs]),
        )


WRITE_ONE_ROW = """
WITH written AS (
    UPDATE swarm_tasks SET status = %(status)s, lease_expires_at = %(lease_expires_at)s,
        lease_host = %(lease_host)s, lane = %(lane)s, not_before = %(not_before)s,
        parallel_safe = %(parallel_safe)s, doc = %(doc)s, written_by = pg_current_xact_id()
    WHERE id = %(id)s
    RETURNING id
),
listed AS (
    INSERT INTO swarm_outcomes (task_id, outcome, written_by)
    SELECT id, %(outcome)s, pg_current_xact_id() FROM written WHERE %(outcome_changed)s
    ON CONFLICT (task_id) DO UPDATE SET outcome = excluded.outcome,
        listed = nextval('swarm_outcome_order'), written_by = excluded.written_by
    RETURNING 1
),
handed AS (
    UPDATE swarm_tasks SET lane = 'full', written_by = pg_current_xact_id()
    WHERE id IN (SELECT task_id FROM swarm_dependencies WHERE dependency = %(finished)s)
        AND status = ANY(%(claimable_statuses)s) AND lane IS DISTINCT FROM 'full'
    RETURNING 1
)
SELECT pg_notify(%(channel)s, '')
WHERE %(claimable)s OR EXISTS (SELECT FROM handed)
    OR (%(released)s AND (EXISTS (SELECT FROM swarm_tasks WHERE lane = 'alone')
        OR EXISTS (SELECT FROM swarm_tasks WHERE lane = 'full')))
"""


def write_one_row(
    conn: Connection,
    row: TaskRow,
    outcomes: dict[str, Any],
    *,
    finished: bool,
    events: Sequence[dict[str, Any]] = (),
) -> None:
    """One task's row and outcome, in one statement with what follows from them, then
    the transaction's `events`, all sent with its COMMIT in one round trip (the last
    thing a transaction by row does): a task that `finished` hands its waiting
    dependents to the full claim (which judges, under the queue's lock, whether they may
    now run or never will). The events come after the rows, so the events' lock is the
    last one taken (see `insert_events`).

    Idle workers hear only of work they could now take: this task claimable again, its
    dependents handed over, or a lease released while a task waits for the full claim
    (one that must run alone may run now). A NOTIFY makes its commit wait for every other
    notifying commit, so finishes that free nothing stay silent."""
    task = row.task
    params = {
        **row.columns(),
        "outcome": outcomes.get(task.id),
        "outcome_changed": task.id in outcomes,
        "finished": task.id if finished else None,
        "claimable_statuses": CLAIMABLE,
        "channel": CHANNEL,
        "claimable": row.lane is not None,
        "released": task.lease is None,
    }
    with committing(conn):
        conn.execute(WRITE_ONE_ROW, params)
        insert_events(conn, events)


def archive_tasks(conn: Connection, task_ids: list[str]) -> None:
    conn.execute(
        "INSERT INTO swarm_archive (task_id, doc, written_by)"
        " SELECT id, doc, pg_current_xact_id() FROM swarm_tasks"
        " WHERE id = ANY(%s) ORDER BY position",
        (task_ids,),
    )
    conn.execute("DELETE FROM swarm_tasks WHERE id = ANY(%s)", (task_ids,))
    conn.execute("DELETE FROM swarm_dependencies WHERE task_id = ANY(%s)", (task_ids,))


def write_outcomes(conn: Connection, outcomes: dict[str, Any]) -> None:
    """`completed` and `failed` in the order the ids joined them; an id that left both
    keeps its row (outcome null), so a process catching up sees it leave."""
    for task_id, outcome in outcomes.items():
        conn.execute(
            "INSERT INTO swarm_outcomes (task_id, outcome, written_by)"
            " VALUES (%s, %s, pg_current_xact_id())"
            " ON CONFLICT (task_id) DO UPDATE SET outcome = excluded.outcome,"
            " listed = nextval('swarm_outcome_order'), written_by = excluded.written_by",
            (task_id, outcome),
        )


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


def place_new_tasks(snapshot: Snapshot, new_ids: list[str]) -> None:
    """Give each new task a position between its neighbours in the queue's order: after
    the last task when appended, in front of the parent when planned. Each run of new
    tasks standing together is spread between the known tasks around it, so placing n
    tasks costs n steps, not n squared."""
    state, positions = snapshot.state, snapshot.positions
    tasks = state.doc.tasks
    ranks = sorted(state.rank(task_id) for task_id in new_ids)
    start = 0
    while start < len(ranks):
        end = start
        while end + 1 < len(ranks) and ranks[end + 1] == ranks[end] + 1:
            end += 1
        first, last = ranks[start], ranks[end]
        after = positions[tasks[first - 1].id] if first > 0 else None
        before = positions[tasks[last + 1].id] if last + 1 < len(tasks) else None
        for offset, place in enumerate(spread(after, before, end - start + 1)):
            positions[tasks[first + offset].id] = place
        start = end + 1


def spread(after: Decimal | None, before: Decimal | None, count: int) -> list[Decimal]:
    """`count` positions in order, all after `after` and before `before` (either open)."""
    if before is None:
        base = after if after is not None else Decimal(0)
        return [base + step for step in range(1, count + 1)]
    if after is None:
        return [before - step for step in range(count, 0, -1)]
    gap = (before - after) / (count + 1)
    return [after + gap * step for step in range(1, count + 1)]
