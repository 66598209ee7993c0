"""Group commit: the journal appends of several processes made durable by one fsync.

A transaction appends its record under the queue's lock, releases the lock, and only
then waits for its record to be durable, at the journal's sync lock. The sync lock's
file says how far the journal is known to be durable (its name and an offset, written
after each fsync). A record that ends within that is durable already: another writer's
fsync, begun after the record was appended, covered it. Otherwise the writer fsyncs the
journal as far as it is written then (its own record and every record appended while it
waited), and says so. Several workers share fsyncs; a worker's own steps after a claim
do not wait for one, its next step's covers them (`QueueState.durable_with_the_next`).

A writer that saw other processes append since its last transaction lingers a moment
(`LINGER_SECONDS`) before it looks at the mark: their next records land meanwhile, and
one fsync covers them all, where each would otherwise have made its own. Alone, it
never lingers.

Until its fsync, a record is visible to other processes without being durable: a
writer acting on it appends after it, so its own record is durable only if this one is
too. Only the machine's crash can lose it, with everything after it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from swarm_runtime.store import durability
from swarm_runtime.store.private import open_for_reading
from swarm_runtime.store.state_files import (
    LOCK_TIMEOUT_SECONDS,
    FileLock,
    Workspace,
    overwrite_in_place,
)

NAME_WIDTH, END_WIDTH = 32, 20
HEADER_BYTES = 4096
# Long enough for another busy worker's next record to land (four busy workers made
# 0.80-0.84 journal fsyncs a task with it, 0.94-0.95 without), short beside the request
# a worker has in flight while the claim beside it is made durable.
LINGER_SECONDS = 0.002


@dataclass(frozen=True)
class Mark:
    """The journal `name` is durable up to byte `end`."""

    name: str
    end: int

    def covers(self, name: str, end: int) -> bool:
        return self.name == name and self.end >= end

    def encode(self) -> bytes:
        """Fixed width, so one rewrite in place always replaces the whole mark."""
        return f"{self.name:<{NAME_WIDTH}}{self.end:0{END_WIDTH}d}\n".encode()

    @classmethod
    def decode(cls, data: bytes) -> Mark | None:
        text = data.decode("ascii", errors="replace")
        end = text[NAME_WIDTH : NAME_WIDTH + END_WIDTH]
        return cls(text[:NAME_WIDTH].strip(), int(end)) if end.isdigit() else None


class Owed:
    """How far this process's journal appends that waited for no fsync reach, by
    journal name, until a sync is made for them. Thread-safe: a worker's lease renewals
    commit from a thread of their own while its main thread defers its steps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ends: dict[str, int] = {}

    def add(self, name: str, end: int) -> None:
        with self._lock:
            self._ends[name] = max(end, self._ends.get(name, 0))

    def take(self, also: tuple[str, int] | None = None) -> list[tuple[str, int]]:
        """Every position owed, merged with `also`; they are no longer owed after this
        (a caller that fails to sync them adds them back)."""
        with self._lock:
            ends, self._ends = self._ends, {}
        if also is not None:
            ends[also[0]] = max(also[1], ends.get(also[0], 0))
        return list(ends.items())


class GroupCommit:
    def __init__(
        self,
        workspace: Workspace,
        lock_timeout: float = LOCK_TIMEOUT_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._sleep = sleep
        self.journal_path = workspace.queue_journal_path
        self.mark_path = self.journal_path.with_name(self.journal_path.name + ".synced")
        self._lock = FileLock(f"{self.mark_path}.lock", lock_timeout)

    def make_durable(self, name: str, end: int, linger: float = 0.0) -> None:
        """Return once the journal `name` is durable up to `end` (or folded away, which
        made its records durable in queue.json), after waiting `linger` seconds for
        other writers' records to share the fsync. The transaction is committed already,
        so a sync lock held too long (a stuck writer) is gone around, not reported: the
        caller would take its committed step for one that failed."""
        if linger > 0:
            self._sleep(linger)
        try:
            with self._lock:
                mark = self._read_mark()
                if mark is not None and mark.covers(name, end):
                    return
                synced = self._sync()
                if synced is not None:
                    overwrite_in_place(self.mark_path, synced.encode())
        except TimeoutError:
            self._sync()

    def _read_mark(self) -> Mark | None:
        try:
            with open_for_reading(self.mark_path) as handle:
                return Mark.decode(handle.read(NAME_WIDTH + END_WIDTH))
        except FileNotFoundError:
            return None

    def _sync(self) -> Mark | None:
        """fsync the journal on disk now, as far as it is written when the fsync starts."""
        try:
            fd = os.open(self.journal_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            end = os.fstat(fd).st_size
            name = journal_name(os.pread(fd, HEADER_BYTES, 0))
            durability.fsync(fd, durability.kind_of(self.journal_path, durability.APPEND))
        finally:
            os.close(fd)
        return None if name is None else Mark(name, end)


def journal_name(head: bytes) -> str | None:
    """The name in a journal's first line (see `queue.journal`), if it has one."""
    line = head.split(b"\n", 1)[0]
    try:
        name = json.loads(line).get("journal")
    except (ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None
