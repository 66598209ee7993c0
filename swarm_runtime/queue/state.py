"""The queue in memory: queue.json's document, the indexes that let a claim look only at
the tasks that matter, and the record of what a transaction changed.

Tasks are copy-on-write. A change replaces a task with an edited copy (`update`), so a
document handed to a reader never changes under it, and what a transaction changed is
known exactly: those copies are what the journal records and what the next snapshot of
queue.json encodes again; every other task's bytes are reused.

Nothing here reads or writes a file; `queue.store` does.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Iterable, Iterator
from typing import Any

from swarm_runtime.contract import (
    CLAIMABLE_STATUSES,
    FAILED_STATUSES,
    Outcome,
    QueueDocument,
    QueueJournalRecord,
    Status,
    Task,
    can_transition,
    check_task_fields,
    describe_statuses,
    final_statuses,
    statuses_leading_to,
)
from swarm_runtime.errors import InvalidTransition
from swarm_runtime.store.state_files import dump_json


def holds_lease(task: Task) -> bool:
    """Running, or being reviewed: a worker is (or was) working on it."""
    return task.status == Status.IN_PROGRESS or (
        task.status == Status.PENDING_REVIEW and task.lease is not None
    )


class QueueState:
    """A validated `QueueDocument` plus indexes kept in step with every change.

    - `live`: tasks not finished for good, or still leased, in file order; the only
      ones a claim, a reclaim or a drain check needs to look at.
    - `leased`: tasks a worker holds.
    - `unchecked`: waiting tasks whose dependencies nobody has judged since they last
      changed, or since a dependency failed; `rules.propagate_failures` empties it.
    """

    _api_endpoint: str | None

    def __init__(self, doc: QueueDocument, review_enabled: bool, *, private: bool = False):
        """`private`: the state lives for one transaction and nobody else reads it (a
        database row's), so nothing it takes in or hands out needs copying."""
        self.doc = doc
        self.review_enabled = review_enabled
        self.private = private
        self._final = final_statuses(review_enabled)
        self.completed_ids = set(doc.completed)
        self.failed_ids = set(doc.failed)
        self.unchecked: set[str] = set()
        self._encoded: dict[str, bytes] = {}
        # The journal's vouched payloads since queue.json, by applier (`transition_events`);
        # None where effects write their own rows (a database's state).
        self.outstanding: dict[str, list[Any]] | None = None
        self._reset_record()
        self._reindex()
        self.unchecked = {t.id for t in doc.tasks if t.status in CLAIMABLE_STATUSES}

    # --- indexes ---------------------------------------------------------------------

    def _reindex(self) -> None:
        """Rebuild every index from the task list: after a parse, an insert or a removal."""
        self._by_id = {task.id: task for task in self.doc.tasks}
        self._rank = {task.id: rank for rank, task in enumerate(self.doc.tasks)}
        self._live = [(rank, t.id) for rank, t in enumerate(self.doc.tasks) if self._is_live(t)]
        self._live_ids = {task_id for _, task_id in self._live}
        self._leased = {t.id for t in self.doc.tasks if holds_lease(t)}
        self._dependents: dict[str, set[str]] = {}
        for task in self.doc.tasks:
            for dep in task.depends_on:
                self._dependents.setdefault(dep, set()).add(task.id)

    def _is_live(self, task: Task) -> bool:
        return task.status not in self._final or holds_lease(task)

    def _refresh(self, old: Task | None, new: Task) -> None:
        """Bring the indexes in step with one task that changed from `old` to `new`."""
        task_id, rank = new.id, self._rank[new.id]
        self._by_id[task_id] = new
        self._encoded.pop(task_id, None)
        live = self._is_live(new)
        if live and task_id not in self._live_ids:
            bisect.insort(self._live, (rank, task_id))
            self._live_ids.add(task_id)
        elif not live and task_id in self._live_ids:
            del self._live[bisect.bisect_left(self._live, (rank, task_id))]
            self._live_ids.discard(task_id)
        if holds_lease(new):
            self._leased.add(task_id)
        else:
            self._leased.discard(task_id)
        old_deps = set(old.depends_on) if old else set()
        for dep in set(new.depends_on) - old_deps:
            self._dependents.setdefault(dep, set()).add(task_id)
        if new.status in CLAIMABLE_STATUSES:
            self.unchecked.add(task_id)
        if new.status in FAILED_STATUSES and (old is None or old.status not in FAILED_STATUSES):
            self.unchecked.update(self._dependents.get(task_id, ()))

    # --- reading ---------------------------------------------------------------------

    def find(self, task_id: str) -> Task | None:
        return self._by_id.get(task_id)

    def rank(self, task_id: str) -> int:
        return self._rank[task_id]

    def live_tasks(self) -> Iterator[Task]:
        """Unfinished or leased tasks, in file order (change none while iterating)."""
        for _, task_id in self._live:
            yield self._by_id[task_id]

    def dependents(self, task_id: str) -> set[str]:
        """The tasks that name `task_id` among their dependencies."""
        return self._dependents.get(task_id, set())

    def leased_tasks(self) -> list[Task]:
        return sorted((self._by_id[i] for i in self._leased), key=lambda t: self._rank[t.id])

    def is_taken(self, task_id: str) -> bool:
        """In the queue, or archived under `completed` / `failed`."""
        return task_id in self._by_id or task_id in self.completed_ids or task_id in self.failed_ids

    @property
    def settled_count(self) -> int:
        """Finished for good and released: what retention may move to the archive."""
        return len(self.doc.tasks) - len(self._live)

    def snapshot(self) -> QueueDocument:
        """A document for readers; its tasks are shared, which copy-on-write makes safe."""
        return self.doc.model_copy(
            update={
                "tasks": list(self.doc.tasks),
                "completed": list(self.doc.completed),
                "failed": list(self.doc.failed),
            }
        )

    # --- changing --------------------------------------------------------------------

    def update(self, task_id: str, **changes: Any) -> Task:
        """Replace a task with a copy carrying `changes`; returns the copy.

        Every change names a Task field and is validated like the file, and a new status
        must be one the contract's table lets follow the old. The values are copied too:
        nothing outside the state may hold a piece of it."""
        check_task_fields(task_id, changes)
        old = self._by_id[task_id]
        new = old.model_copy()
        for name, value in changes.items():
            value = value if self.private else copy.deepcopy(value)
            Task.__pydantic_validator__.validate_assignment(new, name, value)
        if not can_transition(old.status, new.status):
            allowed = describe_statuses(statuses_leading_to(new.status)) or "no"
            raise InvalidTransition(task_id, old.status, f"set status {new.status} on", allowed)
        self.doc.tasks[self._rank[task_id]] = new
        self._refresh(old, new)
        self._touched[task_id] = None
        return new

    def hand_out(self, task: Task) -> Task:
        """`task` as a transaction may return it: a copy, unless the state is private,
        so that a caller changing what it got never changes the queue."""
        return task if self.private else task.model_copy(deep=True)

    def add(self, tasks: list[Task], before: str | None = None) -> None:
        """Append `tasks`, or insert them in front of the task `before`, in their order."""
        if not tasks:
            return
        if before is None:
            for task in tasks:
                self._rank[task.id] = len(self.doc.tasks)
                self.doc.tasks.append(task)
                self._refresh(None, task)
        else:
            position = self._rank[before]
            self.doc.tasks[position:position] = tasks
            self._reindex()
            for task in tasks:
                self._refresh(None, task)
                self._before[task.id] = before
        for task in tasks:
            self._touched[task.id] = None

    def remove(self, task_ids: Iterable[str]) -> list[Task]:
        """Take tasks out of the queue (to the archive); their ids stay in the outcome lists."""
        leaving = set(task_ids) & self._by_id.keys()
        if not leaving:
            return []
        removed = [t for t in self.doc.tasks if t.id in leaving]
        self.doc.tasks = [t for t in self.doc.tasks if t.id not in leaving]
        for task_id in leaving:
            self._encoded.pop(task_id, None)
            self._touched.pop(task_id, None)
            self._before.pop(task_id, None)
        self._removed.extend(t.id for t in removed)
        self._reindex()
        return removed

    def set_outcome(self, task_id: str, outcome: Outcome | None) -> None:
        """Put the id in `completed` or `failed` (or neither), last in its list."""
        if task_id in self.completed_ids:
            self.doc.completed.remove(task_id)
            self.completed_ids.discard(task_id)
        if task_id in self.failed_ids:
            self.doc.failed.remove(task_id)
            self.failed_ids.discard(task_id)
        if outcome == "completed":
            self.doc.completed.append(task_id)
            self.completed_ids.add(task_id)
        elif outcome == "failed":
            self.doc.failed.append(task_id)
            self.failed_ids.add(task_id)
        self._outcomes[task_id] = outcome

    def order_outcomes(self, joined: dict[str, int]) -> None:
        """Put `completed` and `failed` in the order their ids joined them (`joined`):
        a store whose writers commit out of order learns that order after the fact."""
        self.doc.completed.sort(key=lambda task_id: joined.get(task_id, 0))
        self.doc.failed.sort(key=lambda task_id: joined.get(task_id, 0))

    def set_api_endpoint(self, endpoint: str) -> None:
        if endpoint != self.doc.api_endpoint:
            self.doc.api_endpoint = endpoint
            self._api_endpoint = endpoint

    # --- the journal -----------------------------------------------------------------

    def _reset_record(self) -> None:
        self._touched: dict[str, None] = {}
        self._before: dict[str, str] = {}
        self._removed: list[str] = []
        self._outcomes: dict[str, Outcome | None] = {}
        self._api_endpoint = None
        self._events: list[dict[str, Any]] = []
        self._vouches: dict[str, Any] = {}
        self.waits_for_sync = True

    def durable_with_the_next(self) -> None:
        """Let this transaction return before its fsync: the same store's next commit
        that waits for one (or its wait for work, flush or close) covers this record too,
        since every fsync of the journal covers what was appended before it. A machine
        crash in between loses both, as if it had struck before this transaction; a
        killed process loses neither."""
        self.waits_for_sync = False

    def vouch(self, applier: str, payload: Any) -> None:
        """Keep with this transaction what applies one of its effects (`transition_events`)."""
        self._vouches[applier] = payload
        self._note_outstanding({applier: payload})

    def _note_outstanding(self, vouches: dict[str, Any]) -> None:
        if self.outstanding is not None:
            for applier, payload in vouches.items():
                self.outstanding.setdefault(applier, []).append(payload)

    def emit(self, event: dict[str, Any]) -> None:
        """Commit `event` with this transaction: it reaches the log with the transaction's
        changes or, if the transaction fails, not at all."""
        self._events.append(event)

    @property
    def changed(self) -> bool:
        return bool(
            self._touched
            or self._removed
            or self._outcomes
            or self._api_endpoint is not None
            or self._events
            or self._vouches
        )

    def take_record(self, at: float) -> QueueJournalRecord | None:
        """What changed since the last take, as one journal record (None if nothing did)."""
        if not self.changed:
            return None
        fields: dict[str, Any] = {"at": at}
        if self._touched:
            fields["tasks"] = [self._by_id[task_id] for task_id in self._touched]
        if self._before:
            fields["before"] = dict(self._before)
        if self._removed:
            fields["removed"] = list(self._removed)
        if self._outcomes:
            fields["outcomes"] = dict(self._outcomes)
        if self._api_endpoint is not None:
            fields["api_endpoint"] = self._api_endpoint
        if self._events:
            fields["events"] = list(self._events)
        if self._vouches:
            fields["vouches"] = dict(self._vouches)
        self._reset_record()
        return QueueJournalRecord(**fields)

    def apply(self, record: QueueJournalRecord) -> None:
        """Replay a record written by any process; replaying it again changes nothing.
        Its events are the log's business (`queue.store`), not the queue's."""
        for task in record.tasks:
            old = self._by_id.get(task.id)
            if old is not None:
                self.doc.tasks[self._rank[task.id]] = task
                self._refresh(old, task)
            else:
                anchor = record.before.get(task.id)
                self.add([task], anchor if anchor in self._by_id else None)
        self.remove(record.removed)
        for task_id, outcome in record.outcomes.items():
            self.set_outcome(task_id, outcome)
        if record.api_endpoint is not None:
            self.set_api_endpoint(record.api_endpoint)
        self._note_outstanding(record.vouches)
        self._reset_record()

    # --- queue.json ------------------------------------------------------------------

    def encode(self) -> bytes:
        """queue.json's bytes, one task per line. Each task's JSON is kept until the task
        changes, so a snapshot of 10,000 tasks re-encodes only those that did."""
        encoded = self._encoded
        parts = []
        for task in self.doc.tasks:
            data = encoded.get(task.id)
            if data is None:
                data = encoded[task.id] = task.model_dump_json(exclude_unset=True).encode()
            parts.append(data)
        listed = b"[\n    " + b",\n    ".join(parts) + b"\n  ]" if parts else b"[]"
        header = self.doc.model_dump(mode="json", exclude_unset=True, exclude={"tasks"}) | {
            "version": self.doc.version,
            "api_endpoint": self.doc.api_endpoint,
            "completed": self.doc.completed,
            "failed": self.doc.failed,
        }
        # dump_json opens with "{\n"; the task list goes first, the other keys follow it.
        return b'{\n  "tasks": ' + listed + b",\n" + dump_json(header)[2:]
