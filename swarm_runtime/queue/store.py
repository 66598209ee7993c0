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
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from swarm_runtime.contract import (
    QueueDocument,
    describe_validation_error,
    empty_queue,
    is_parked,
    normalize_queue,
    queue_problems,
)
from swarm_runtime.errors import QueueFileError, StateFileError
from swarm_runtime.queue.journal import QueueJournal, Version
from swarm_runtime.queue.leases import HOST, WorkerIdentity, holder_is_alive, lease_is_live
from swarm_runtime.queue.rules import archivable_ids
from swarm_runtime.queue.state import QueueState
from swarm_runtime.queue.transactions import Change, ClaimOutcome, QueueTransactions
from swarm_runtime.settings import Settings
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
# this, so the rewrites cost a constant share of the appends, or once it is this old.
COMPACT_RATIO = 4
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
        self.state = state
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
        self.snapshot_version, self.snapshot_bytes = version, len(raw or b"")
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
    ):
        self._workspace = workspace
        self.fold_after_seconds = fold_after_seconds
        self.path = workspace.queue_path
        self.retain = retain
        self.review_enabled = review_enabled
        self.small_queue_bytes = small_queue_bytes
        self._clock = clock or time.time
        self._writer = self._follower()
        self._reader = self._follower()
        self._reading = threading.Lock()  # readers of this process only; writers never take it
        self._version_before_claim: tuple[Any, ...] | None = None

    @classmethod
    def for_settings(cls, workspace: Workspace, settings: Settings) -> QueueStore:
        """Every process must agree on retention and on whether review applies."""
        return cls(workspace, retain=settings.queue_retain, review_enabled=settings.review)

    def version(self) -> tuple[Any, ...]:
        """Changes whenever the queue may have: a cheap test before `load`."""
        return file_version(self.path), file_version(self._writer.journal.path)

    def claim(self, worker: WorkerIdentity, lease_seconds: float) -> ClaimOutcome:
        """As every store claims; the version seen first is what a wait after a claim
        that found nothing compares with, so work added while it ran is not slept over."""
        self._version_before_claim = self.version()
        return super().claim(worker, lease_seconds)

    def wait_for_change(self, timeout: float, stop: threading.Event) -> None:
        """Look at queue.json's version every WAKE_CHECK_SECONDS: a change wakes the
        caller within that, instead of up to a whole `timeout` later."""
        seen, self._version_before_claim = self._version_before_claim or self.version(), None
        deadline = time.monotonic() + timeout
        while not stop.wait(min(WAKE_CHECK_SECONDS, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline or self.version() != seen:
                return

    def close(self) -> None:
        """Nothing is held open between transactions."""

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

    def _current(self) -> QueueState:
        """The queue as it stands, for a transaction: call only under the lock."""
        return self._writer.current()

    # writing

    def _transaction(self, change: Change[R]) -> R:
        """Run `change` on the current state under the lock and make what it changed
        durable before returning. A change that raises, or a write that fails, drops the
        state, which is then read again from the files: nothing half-done survives."""
        with self._workspace.lock(self.path):
            state = self._current()
            try:
                result = change(state, self._clock())
                self._archive(state)
                self._persist(state)
            except BaseException:
                self._writer.state = None
                raise
            return result

    def _archive(self, state: QueueState) -> None:
        leaving = archivable_ids(state, self.retain)
        if leaving:
            archived = state.remove(leaving)
            append_lines(
                self._workspace,
                self._workspace.queue_archive_path,
                [t.model_dump(mode="json", exclude_unset=True) for t in archived],
            )

    def _persist(self, state: QueueState) -> None:
        record = state.take_record(time.time())
        writer = self._writer
        journal = writer.journal
        pending = journal.holds_records_after(writer.snapshot_version)
        if record is None:
            if pending and journal.age() >= self.fold_after_seconds:
                self._fold(state)
            return
        if not pending and writer.snapshot_bytes <= self.small_queue_bytes:
            self._write_snapshot(state)
            return
        journal.append(record, writer.snapshot_version)
        too_old = journal.age() >= self.fold_after_seconds
        if journal.size * COMPACT_RATIO >= writer.snapshot_bytes or too_old:
            self._fold(state)

    def _write_snapshot(self, state: QueueState) -> None:
        """Replace queue.json with the whole queue; any journal is obsolete from then on."""
        data = state.encode()
        atomic_write_bytes(self.path, data)
        self._writer.snapshot_version = file_version(self.path)
        self._writer.snapshot_bytes = len(data)

    def _fold(self, state: QueueState) -> None:
        """Write queue.json with every journal record in it, then drop the journal.

        The transaction is already durable in the journal, so a failure here (a full
        disk) is only logged: queue.json stays as it was, and a later transaction tries
        again."""
        try:
            self._fold_now(state)
        except OSError as exc:
            log.warning("could not fold the queue journal into %s: %s", self.path, exc)

    def _fold_now(self, state: QueueState) -> None:
        self._write_snapshot(state)
        self._writer.journal.discard()

    def flush(self) -> None:
        """Fold the journal into queue.json now, so that it shows every change: for a
        process about to exit, or a script that reads queue.json itself next."""
        with self._workspace.lock(self.path):
            state = self._current()
            if self._writer.journal.holds_records_after(self._writer.snapshot_version):
                self._fold_now(state)
