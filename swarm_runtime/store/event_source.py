"""Where the panel and the command line read events from, whichever store holds them.

Two sources answer the same questions: `log_index.LogIndex` follows this workspace's
execution_log.jsonl by byte offset, and `event_rows.RowIndex` reads the database's
`swarm_events`, where every host's events are rows. A cursor is a position in the
source (a byte offset in the file, a row id in the database): "events after cursor"
never misses or repeats one, and a cursor the source no longer recognises (another
`epoch`) makes the reader start over with the latest events. Both hand out each event
as the record the writer built, so no reader can tell which source it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from swarm_runtime.contract import Status
from swarm_runtime.errors import StoreUnavailable
from swarm_runtime.store.event_lines import Envelope


class EventFilter(NamedTuple):
    """Which events a reader wants; None admits any value of that field."""

    task: str | None = None
    status: str | None = None
    worker: str | None = None

    def admits(self, envelope: Envelope) -> bool:
        wanted = ((self.task, envelope.task_id), (self.status, envelope.status))
        return all(want is None or want == got for want, got in wanted) and (
            self.worker is None or self.worker == envelope.worker_id
        )


EVERY_EVENT = EventFilter()


@dataclass(frozen=True)
class IndexedEvent:
    """`offset` is a cursor just before the event, `cursor` one just past it."""

    offset: int
    cursor: int
    event: dict[str, Any]


@dataclass(frozen=True)
class EventPage:
    """`reset` means the cursor was stale: `events` is then the recent backlog, not a sequel."""

    events: list[IndexedEvent]
    cursor: int
    epoch: str
    reset: bool
    more: bool


@dataclass(frozen=True)
class TaskInfo:
    events: int
    last_status: str
    last_timestamp: str | None


def sets_last_status(status: str) -> bool:
    """A discarded result (computed by a worker that had lost the lease) is on record,
    but never becomes a task's last status."""
    return status != Status.RESULT_DISCARDED


@dataclass(frozen=True)
class Malformed:
    line: int
    offset: int
    reason: str


@dataclass(frozen=True)
class IndexStats:
    """How far a source has read; the byte and line counts are the file's (zero for rows)."""

    epoch: str
    events: int
    lines: int
    tasks: int
    indexed_bytes: int
    file_bytes: int
    resets: int
    malformed_count: int
    malformed: list[Malformed]


class EventSource(Protocol):
    """The questions the panel and the command line ask of the events.

    `refresh` reads what was added since its last call (at most about `budget` of it,
    all of it for None) and returns how much it read, so a caller can step until it is
    caught up; the summaries (`task`, `workers_last_seen`, `stats`) cover what was read."""

    @property
    def epoch(self) -> str: ...

    @property
    def behind(self) -> int: ...

    def refresh(self, budget: int | None = None) -> int: ...

    def latest(self, limit: int, wanted: EventFilter = EVERY_EVENT) -> EventPage: ...

    def events_after(
        self,
        cursor: int,
        limit: int = 100,
        epoch: str | None = None,
        wanted: EventFilter = EVERY_EVENT,
    ) -> EventPage: ...

    def timeline(self, task_id: str, limit: int = 500) -> tuple[list[IndexedEvent], int]: ...

    def task(self, task_id: str) -> TaskInfo | None: ...

    def workers_last_seen(self) -> dict[str, str | None]: ...

    def stats(self) -> IndexStats: ...

    def close(self) -> None: ...


class Outage:
    """A follower's view of the database going away and coming back, so that it says
    each once instead of on every poll, and keeps its cursor for when it is back."""

    def __init__(self) -> None:
        self.error: StoreUnavailable | None = None

    def began(self, error: StoreUnavailable) -> bool:
        """Record the failure; True if the database was reachable until now."""
        first, self.error = self.error is None, error
        return first

    def ended(self) -> bool:
        """A read succeeded; True if it was away until now."""
        was_away, self.error = self.error is not None, None
        return was_away
