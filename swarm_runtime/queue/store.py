"""The worker's one door to queue.json: add, claim, heartbeat, finish, requeue.

Every change is a transaction under queue.json's lock, so several workers, the API and
the panel can share the queue; reading (`load`) takes no lock, so a reader can never
make a transaction wait. Each process keeps the queue in memory
(`queue.state`) and, at the start of a transaction, catches up with what others wrote;
the decisions are pure functions in `queue.rules`.

What a transaction costs does not grow with the queue:
- a small queue.json is rewritten whole, atomically, as it always was;
- a large one is not: the transaction appends one record to the journal
  (`queue.journal`), which is folded into queue.json once it reaches a quarter of
  queue.json's size or is a second old, so queue.json is never more than about a second
  behind while the runtime is busy, and current once it is idle;
- finished tasks beyond `retain` move to an append-only archive in `.swarm/`, leaving
  only their ids in `completed`/`failed`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from swarm_runtime.contract import (
    QueueDocument,
    QueueJournalRecord,
    Task,
    describe_validation_error,
    empty_queue,
    is_parked,
    normalize_queue,
    queue_problems,
)
from swarm_runtime.errors import QueueFileError, StateFileError, SwarmError
from swarm_runtime.queue.group_commit import LINGER_SECONDS, GroupCommit, Owed
from swarm_runtime.queue.journal import QueueJournal, Version
from swarm_runtime.queue.leases import (
    HOST,
    WorkerIdentity,
    another_at_work,
    holder_is_alive,
    lease_is_live,
)
from swarm_runtime.queue.log_apply import bring_up_to, cut_lost_lines, line_start, sync_log
from swarm_runtime.queue.rules import archivable_ids
from swarm_runtime.queue.state import QueueState
from swarm_runtime.queue.transactions import (
    Change,
    ClaimOutcome,
    QueueTransactions,
    claim_change,
)
from swarm_runtime.queue.transition_events import Applier
from swarm_runtime.settings import Settings
from swarm_runtime.store.failpoints import failpoint
from swarm_runtime.store.private import open_for_reading
from swarm_runtime.store.state_files import (
    Workspace,
    append_lines,
    atomic_write_bytes,
    file_version,
    parse_json,
)

__all__ = [
    "HOST",
    "ClaimOutcome",
    "QueueStore",
    "WorkerIdentity",
    "holder_is_alive",
    "is_parked",
    "lease_is_live",
]

log = logging.getLogger("swarm.queue")
# Below this size queue.json is rewritten whole by every transaction (about 1 ms): it
# stays current to the transaction, and the journal is not used.
SMALL_QUEUE_BYTES = 16 * 1024
# The journal is folded into queue.json once it reaches queue.json's size divided by
# this (and at least `journal_bytes`, SWARM_JOURNAL_BYTES: a fold costs about ten
# fsyncs), so the rewrites cost a constant share of the appends, or once it is this old.
COMPACT_RATIO = 4
JOURNAL_BYTES = 1 << 20
FRESH_SECONDS = 1.0
# A lock-free read that finds queue.json replaced while it read reads again, this many
# times in all; the last read is a queue that existed, only a moment old.
READ_ATTEMPTS = 3
# How often a waiting worker looks whether queue.json changed: a claim that finds
# nothing writes nothing, so idle workers never wake each other.
WAKE_CHECK_SECONDS = 0.02

R = TypeVar("R")


# --- following the files -----------------------------------------------------------------


class QueueFollower:
    """The queue as one reader of queue.json and its journal last saw it, caught up by
    reading only what changed since: queue.json again once something replaced it, else
    the journal's new records.

    The bytes of queue.json and the version that picks the journal to follow come from
    one open file, so a reader without the lock never lays one queue.json's journal
    over another queue.json's tasks."""

    def __init__(self, path: Path, journal: QueueJournal, review_enabled: bool):
        self.path = path
        self.journal = journal
        self.review_enabled = review_enabled
        self.state: QueueState | None = None
        self.snapshot_version: Version = None
        self.snapshot_bytes = 0
        # The journal's records the last `current` read, in order; and how many times
        # queue.json was read whole, after which earlier records no longer count.
        self.new_records: list[QueueJournalRecord] = []
        self.snapshots_read = 0

    def current(self) -> QueueState:
        """The queue as it stands; a failure drops the state, to be read again whole."""
        self.state, state = None, self.state
        fresh = state is None or file_version(self.path) != self.snapshot_version
        if state is None or fresh:
            state = self._read_snapshot(state)
        restarted, records = self.journal.read_new(self.snapshot_version)
        if restarted and not fresh:  # another process folded it, or started it
            state = self._read_snapshot(state)
            _, records = self.journal.read_new(self.snapshot_version)
        for record in records:
            state.apply(record)
        self.state, self.new_records = state, records
        return state

    def _read_snapshot(self, known: QueueState | None = None) -> QueueState:
        """queue.json as a new state; or `known` itself when queue.json now holds exactly
        its bytes, as after another process folded a journal this one had read to the end:
        comparing bytes costs a millisecond at 10,000 tasks, parsing them a hundred."""
        version, raw = self._read_bytes()
        if known is not None and raw is not None and raw == known.encode():
            state = known
        else:
            state = QueueState(self._parse(raw), self.review_enabled)
        state.outstanding = {}  # queue.json's files hold its effects; the journal's follow
        self.snapshot_version, self.snapshot_bytes = version, len(raw or b"")
        self.snapshots_read += 1
        self.journal.forget()
        return state

    def _read_bytes(self) -> tuple[Version, bytes | None]:
        try:
            with open_for_reading(self.path) as handle:
                stat = os.fstat(handle.fileno())
                return (stat.st_ino, stat.st_mtime_ns, stat.st_size), handle.read()
        except FileNotFoundError:
            return None, None

    def _parse(self, raw: bytes | None) -> QueueDocument:
        return parse_queue(self.path, raw)


def parse_queue(path: Path, raw: bytes | None) -> QueueDocument:
    """queue.json as written by us or by hand (or by the reference): a missing key takes
    its default; only invalid JSON, a wrong type or a duplicate id is refused."""
    try:
        document = empty_queue() if raw is None else parse_json(path, raw)
    except StateFileError as exc:
        raise QueueFileError(exc.path, exc.problems) from None
    problems = queue_problems(document)
    if problems:
        raise QueueFileError(path, problems)
    try:
        return QueueDocument.model_validate(normalize_queue(document))
    except ValidationError as exc:
        raise QueueFileError(path, [describe_validation_error(e) for e in exc.errors()]) from None


# --- the store --------------------------------------------------------------------------


class QueueStore(QueueTransactions):
    def __init__(
        self,
        workspace: Workspace,
        *,
        retain: int = 1000,
        review_enabled: bool = False,
        clock: Callable[[], float] | None = None,
        small_queue_bytes: int = SMALL_QUEUE_BYTES,
        fold_after_seconds: float = FRESH_SECONDS,
        journal_bytes: int = JOURNAL_BYTES,
        keep_current: bool = True,
        appliers: Mapping[str, Applier] | None = None,
        group_commit: GroupCommit | None = None,
    ):
        """`keep_current`: a small queue.json shows every transaction at once, as the
        panel's and the CLI's few do; a worker's many share one fold a second instead.
        `appliers` apply the effects records vouch for to their files when the journal
        is folded; a store without them leaves such a journal for one that has them."""
        self._workspace = workspace
        self.keep_current = keep_current
        self.journal_bytes = journal_bytes
        self.appliers = dict(appliers or {})
        self.fold_after_seconds = fold_after_seconds
        self.path = workspace.queue_path
        self.retain = retain
        self.review_enabled = review_enabled
        self.small_queue_bytes = small_queue_bytes
        self._clock = clock or time.time
        self._writer = self._follower()
        self._reader = self._follower()
        self._reading = threading.Lock()  # readers of this process only; writers never take it
        # This process's writers, one thread at a time, from their catch-up before the
        # queue's lock (`_catch_up`) to its release; always taken before that lock. And
        # the journal's records they read since the log was last settled, with the count
        # of queue.json's reads they follow.
        self._writing = threading.RLock()
        self._caught_up: tuple[int, list[QueueJournalRecord]] = (0, [])
        self._version_before_claim: tuple[Any, ...] | None = None
        self._fold_failed_at = -math.inf
        self.log_path = workspace.log_path
        # This process's record whose events the log may lack (its write failed), and
        # whether this process has checked the whole journal against the log yet.
        self._unapplied: QueueJournalRecord | None = None
        self._log_checked = False
        self._group = group_commit or GroupCommit(workspace)
        # Records appended without waiting for their fsync (`durable_with_the_next`): the
        # next transaction that waits, `wait_for_change`, `flush` or `close` syncs them.
        self._owed = Owed()
        # Whether other processes appended to the journal between this store's last two
        # transactions: its fsyncs then linger for theirs (`queue.group_commit`).
        self._others_writing = False

    @classmethod
    def for_settings(
        cls,
        workspace: Workspace,
        settings: Settings,
        *,
        keep_current: bool = True,
        appliers: Mapping[str, Applier] | None = None,
    ) -> QueueStore:
        """Every process must agree on retention and on whether review applies."""
        return cls(
            workspace,
            retain=settings.queue_retain,
            review_enabled=settings.review,
            journal_bytes=settings.journal_bytes,
            keep_current=keep_current,
            appliers=appliers,
        )

    def version(self) -> tuple[Any, ...]:
        """Changes whenever the queue may have: a cheap test before `load`."""
        return file_version(self.path), file_version(self._writer.journal.path)

    def claim(
        self, worker: WorkerIdentity, lease_seconds: float, ahead: bool = False
    ) -> ClaimOutcome:
        """As every store claims; the version seen first is what a wait after a claim
        that found nothing compares with, so work added while it ran is not slept over."""
        self._version_before_claim = self.version()
        return super().claim(worker, lease_seconds, ahead)

    def _then_claim(
        self,
        task_id: str,
        step: Change[Task],
        worker: WorkerIdentity,
        lease_seconds: float,
        ahead: bool,
    ) -> tuple[Task, ClaimOutcome]:
        """One transaction where a task's step and the next claim took two: one lock, one
        journal record, one fsync (the claim's, which the step shared already)."""
        claim = claim_change(worker, lease_seconds, ahead)
        self._version_before_claim = self.version()
        return self._transaction(lambda state, now: (step(state, now), claim(state, now)))

    def wait_for_change(self, timeout: float, stop: threading.Event) -> None:
        """Look at queue.json's version every WAKE_CHECK_SECONDS: a change wakes the
        caller within that, instead of up to a whole `timeout` later."""
        self._make_durable()
        seen, self._version_before_claim = self._version_before_claim or self.version(), None
        deadline = time.monotonic() + timeout
        while not stop.wait(min(WAKE_CHECK_SECONDS, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline or self.version() != seen:
                return
            self._fold_when_stale()

    def _fold_when_stale(self) -> None:
        """An idle worker folds its last transactions into queue.json once they are
        `fold_after_seconds` old, so that queue.json is current soon after work stops.
        A fold that fails leaves the wait going on: work can still be claimed."""
        writer = self._writer
        journal = writer.journal
        stale = journal.age() >= self.fold_after_seconds and not self._fold_backing_off()
        if stale and journal.holds_records_after(writer.snapshot_version):
            try:
                self.flush()
            except (OSError, SwarmError) as exc:
                self._fold_failed(exc)

    def _fold_backing_off(self) -> bool:
        """A fold failed (a full disk, a broken gate file) less than a fold interval ago:
        the next waits, so that a busy worker neither retries nor warns every task."""
        return time.monotonic() < self._fold_failed_at + self.fold_after_seconds

    def _fold_failed(self, exc: Exception) -> None:
        self._fold_failed_at = time.monotonic()
        log.warning("could not fold the queue journal into %s: %s", self.path, exc)

    def close(self) -> None:
        """Nothing is held open between transactions; what this store appended is made
        durable before it goes."""
        self._make_durable()

    # reading

    def load(self) -> QueueDocument:
        """A validated snapshot, read without the queue's lock, so that no reader (a /status
        poller, the panel) can ever make a transaction wait; a malformed file raises
        QueueFileError and is left as it is.

        queue.json is replaced atomically and the journal's incomplete last record is
        skipped, so what is read is always a queue that existed. A read that raced a fold
        (queue.json replaced, the journal removed) reads again, to return the newer one.
        Its tasks are shared with the reader (tasks are replaced, never changed in place),
        so the caller must treat it as read-only."""
        with self._reading:
            reader = self._reader
            state = reader.current()
            for _ in range(READ_ATTEMPTS - 1):
                if file_version(self.path) == reader.snapshot_version:
                    break
                state = reader.current()
            return state.snapshot()

    def _follower(self) -> QueueFollower:
        journal = QueueJournal(self._workspace.queue_journal_path)
        return QueueFollower(self.path, journal, self.review_enabled)

    def _catch_up(self) -> None:
        """Read what other writers committed since this one's last transaction before
        taking the queue's lock, as any reader does without it; the locked read is then
        left with the few records appended meanwhile. With eight workers, reading the
        others' records under the lock made it the one serial step every task waited on.
        A read that fails here drops the state; the locked read reads it again, and
        reports what is wrong."""
        try:
            self._writer.current()
        except (OSError, SwarmError):
            return
        self._keep_read()

    def _keep_read(self) -> None:
        """Add the records the writer just read to those read since the log was last
        settled; a new read of queue.json starts them afresh, as it read them all again."""
        snapshots_read, kept = self._caught_up
        if snapshots_read != self._writer.snapshots_read:
            kept = []
        self._caught_up = (self._writer.snapshots_read, [*kept, *self._writer.new_records])

    def _current(self) -> QueueState:
        """The queue as it stands, for a transaction, with the log holding every committed
        event: call only under the lock."""
        state = self._writer.current()
        self._keep_read()
        snapshots_read, records = self._caught_up
        try:
            self._settle_log(records)
        except BaseException:  # read it all again, and check it all, next time
            self._writer.state, self._log_checked = None, False
            raise
        self._caught_up = (snapshots_read, [])
        self._others_writing = bool(records)
        return state

    def _settle_log(self, records: list[QueueJournalRecord]) -> None:
        """Give the log any events a committed record holds and the log lacks, before
        anything more is committed. Every transaction settles the one before it, so only
        the last record read can lack its lines (its writer died, or its write failed);
        at a process's first transaction (after a crash of the machine, say) every
        record is checked. A failure fails the transaction before it changes anything."""
        first = not self._log_checked
        pending = records if first else records[-1:]
        if self._unapplied is not None:
            pending = [self._unapplied, *pending]
        for record in pending:
            bring_up_to(self.log_path, record)
        self._unapplied, self._log_checked = None, True
        if first and self._writer.journal.from_another_boot():
            cut_lost_lines(self.log_path, records)

    # writing

    def _transaction(self, change: Change[R]) -> R:
        """Run `change` on the current state under the lock and make what it changed
        durable before returning (the fsync after the lock, shared with other writers:
        `queue.group_commit`), unless the change leaves that to the store's next sync
        (`QueueState.durable_with_the_next`). A change that raises, or a write that
        fails, drops the state, which is then read again from the files: nothing
        half-done survives."""
        with self._writing:
            self._catch_up()
            with self._workspace.lock(self.path):
                state = self._current()
                try:
                    result = change(state, self._clock())
                    waits_for_sync, state.waits_for_sync = state.waits_for_sync, True
                    self._archive(state)
                    unsynced = self._persist(state)
                except BaseException:
                    self._writer.state = None
                    raise
        if waits_for_sync:
            self._make_durable(unsynced)
        elif unsynced is not None:
            self._owed.add(*unsynced)
        return result

    def _make_durable(self, appended: tuple[str, int] | None = None) -> None:
        """Wait until the journal is durable up to `appended` (its name and end) and up to
        every record this store appended without waiting (one fsync covers them all)."""
        positions = self._owed.take(appended)
        linger = LINGER_SECONDS if self._others_writing else 0.0
        try:
            for position in positions:
                failpoint("queue.before_group_sync")
                self._group.make_durable(*position, linger)
        except BaseException:
            for position in positions:
                self._owed.add(*position)
            raise

    def _archive(self, state: QueueState) -> None:
        leaving = archivable_ids(state, self.retain)
        if leaving:
            archived = state.remove(leaving)
            append_lines(
                self._workspace,
                self._workspace.queue_archive_path,
                [t.model_dump(mode="json", exclude_unset=True) for t in archived],
            )

    def _persist(self, state: QueueState) -> tuple[str, int] | None:
        """One durable write commits the transaction: a small queue.json rewritten whole,
        or, for a large queue or a transaction with events, one journal append (then the
        events go to the log, without an fsync of their own). Returns the journal's name
        and end when the append still awaits its fsync."""
        record = state.take_record(time.time())
        writer = self._writer
        journal = writer.journal
        pending = journal.holds_records_after(writer.snapshot_version)
        if record is None:
            if pending and journal.age() >= self.fold_after_seconds:
                self._fold(state)
            return None
        small = writer.snapshot_bytes <= self.small_queue_bytes
        if not pending and small and not record.events:
            self._write_snapshot(state)
            return None
        if record.events:
            record.log_at = line_start(self.log_path)
        unsynced = journal.append(record, writer.snapshot_version)
        name, end = journal.position.name, journal.size
        failpoint("queue.journal_appended")
        self._apply_events(record)
        too_old = journal.age() >= self.fold_after_seconds or (small and self.keep_current)
        floor = self.journal_bytes * COMPACT_RATIO
        large = journal.size * COMPACT_RATIO >= max(writer.snapshot_bytes, floor)
        if large or too_old:
            self._fold(state)
        return (name, end) if unsynced and name is not None else None

    def _apply_events(self, record: QueueJournalRecord) -> None:
        """The transaction is committed: a log that cannot take its events now (a full
        disk) gets them at this process's next transaction, or any other's."""
        try:
            bring_up_to(self.log_path, record)
        except OSError as exc:
            log.warning("committed events wait for %s: %s", self.log_path.name, exc)
            self._unapplied = record

    def _write_snapshot(self, state: QueueState) -> None:
        """Replace queue.json with the whole queue; any journal is obsolete from then on."""
        data = state.encode()
        atomic_write_bytes(self.path, data)
        self._writer.snapshot_version = file_version(self.path)
        self._writer.snapshot_bytes = len(data)

    def _fold(self, state: QueueState) -> None:
        """Write queue.json with every journal record in it, then drop the journal.

        The transaction is already in the journal (and durable there once its fsync
        is made), so a failure here (a full disk) is only logged: queue.json stays as it
        was, and a later transaction tries again."""
        if self._fold_backing_off():
            return
        try:
            self._fold_now(state)
        except (OSError, SwarmError) as exc:
            self._fold_failed(exc)

    def _fold_now(self, state: QueueState) -> None:
        """The log's lines must be durable, and the effects the records vouch for applied
        to their files (durably), before the journal that holds them goes. A store that
        cannot apply some of them leaves the journal to one that can: a worker's."""
        outstanding = state.outstanding or {}
        if not outstanding.keys() <= self.appliers.keys():
            return
        sync_log(self.log_path)
        failpoint("queue.fold.log_synced")
        for name in sorted(outstanding):
            self.appliers[name](outstanding[name])
        failpoint("queue.fold.effects_applied")
        self._write_snapshot(state)
        self._writer.journal.discard()
        state.outstanding = {}

    def flush(self, leaving: WorkerIdentity | None = None) -> None:
        """Fold the journal into queue.json now, so that it shows every change: for a
        process about to exit, or a script that reads queue.json itself next.

        A worker `leaving` leaves the fold to any other worker that holds a live lease:
        that one folds within a fold interval as it works, or on its own way out. Of
        several workers leaving together, the last folds: each looks after giving up its
        own leases, under the queue's lock, so the last sees none but its own."""
        self._make_durable()
        with self._writing, self._workspace.lock(self.path):
            state = self._current()
            if leaving is not None and self._another_at_work(state, leaving):
                return
            if self._writer.journal.holds_records_after(self._writer.snapshot_version):
                self._fold_now(state)

    def _another_at_work(self, state: QueueState, worker: WorkerIdentity) -> bool:
        return another_at_work(state.leased_tasks(), worker, self._clock())
