"""The index of execution_log.jsonl, and folds of the audit trails, built on following
each file by byte offset (store.jsonl_tail) and reading each line's envelope
(store.event_lines), which the command line's `events` shares.

The panel must serve a 1 GB log as fast as a 1 MB one, so nothing here rescans a file:
`JsonlTail` reads only the bytes appended since its last call, and `LogIndex` remembers
where each task's events start, so a timeline or a backlog costs a few `pread`s. A file
that was truncated, rotated (a new inode) or rewritten under the last offset read is
indexed again from its first byte, under a new `epoch`: a cursor from an older epoch
no longer means anything, and whoever holds one is told to start over.

A cursor is the byte offset just past an event's line, so "events after cursor" is a
seek and a read, whatever the size of the log.
"""

from __future__ import annotations

import json
import logging
import threading
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm_runtime.store.event_lines import EVENT_PREFIX, Envelope, parse_record, read_envelope
from swarm_runtime.store.jsonl_tail import READ_BLOCK_BYTES, JsonlTail, Line

__all__ = [
    "EVENT_PREFIX",
    "READ_BLOCK_BYTES",
    "EventPage",
    "IndexStats",
    "IndexedEvent",
    "JsonlFold",
    "JsonlTail",
    "LogIndex",
    "TaskInfo",
]

log = logging.getLogger(__name__)

FIRST_WINDOW_BYTES = 4 * 1024
READ_WINDOW_BYTES = 1024 * 1024
RECENT_EVENTS = 1000
MALFORMED_KEPT = 50


@dataclass(frozen=True)
class Malformed:
    line: int
    offset: int
    reason: str


@dataclass(frozen=True)
class IndexedEvent:
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


@dataclass(frozen=True)
class IndexStats:
    epoch: str
    events: int
    lines: int
    tasks: int
    indexed_bytes: int
    file_bytes: int
    resets: int
    malformed_count: int
    malformed: list[Malformed]


class MalformedLines:
    """How many lines could not be read, and the latest few with their line numbers."""

    def __init__(self, path: Path, kept: int = MALFORMED_KEPT):
        self.path = path
        self.count = 0
        self.latest: deque[Malformed] = deque(maxlen=kept)

    def add(self, line: Line, reason: str) -> None:
        self.count += 1
        self.latest.append(Malformed(line.number, line.offset, reason))
        log.warning("%s line %d (byte %d) skipped: %s", self.path, line.number, line.offset, reason)

    def clear(self) -> None:
        self.count = 0
        self.latest.clear()


class _Follower:
    """Feeds a file's new lines to `_take`, in bounded steps, under `lock`.

    Whoever reads what `_take` built holds `lock` too, so a refresh in another thread
    cannot change it midway."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._tail = JsonlTail(self.path)
        self.lock = threading.RLock()
        self.malformed = MalformedLines(self.path)

    def refresh(self, max_bytes: int | None = None) -> int:
        """Read what was appended, at most `max_bytes` of it (all of it for None).

        Returns the bytes read, so a caller can keep stepping until it is caught up
        without holding the lock for the whole of a large file."""
        total = 0
        with self.lock:
            while max_bytes is None or total < max_bytes:
                step = READ_BLOCK_BYTES if max_bytes is None else max_bytes - total
                batch = self._tail.poll(min(step, READ_BLOCK_BYTES))
                if batch.reset:
                    self.malformed.clear()
                    self._forget()
                for line in batch.lines:
                    if line.data.strip():
                        self._take(line)
                total += batch.read
                if batch.read == 0:
                    break
        return total

    @property
    def behind(self) -> int:
        """Bytes of the file, as last seen, not read yet."""
        return max(0, self._tail.size - self._tail.read_to)

    def close(self) -> None:
        with self.lock:
            self._tail.close()

    def _forget(self) -> None:
        raise NotImplementedError

    def _take(self, line: Line) -> None:
        raise NotImplementedError


class JsonlFold(_Follower):
    """Folds each record of an append-only JSONL file into a caller's aggregate, once."""

    def __init__(
        self,
        path: Path | str,
        fold: Callable[[dict[str, Any]], None],
        forget: Callable[[], None],
    ):
        super().__init__(path)
        self._fold = fold
        self._forget_all = forget

    def _forget(self) -> None:
        self._forget_all()

    def _take(self, line: Line) -> None:
        record = parse_record(line, self.malformed.add)
        if record is not None:
            self._fold(record)


class LogIndex(_Follower):
    """Where every event of execution_log.jsonl starts, by task, kept up to date by `refresh`.

    Memory is a few machine words per event (an `array('q')` of offsets per task), never
    the events themselves; reading them back seeks to those offsets."""

    def __init__(self, path: Path | str, *, recent: int = RECENT_EVENTS):
        super().__init__(path)
        self._recent_size = recent
        self._forget()

    # --- indexing ---------------------------------------------------------------------

    def _forget(self) -> None:
        self.events = 0
        self._by_task: dict[str, array[int]] = {}
        self._last: dict[str, tuple[str, str | None]] = {}
        self._workers: dict[str, str | None] = {}
        self._recent: deque[int] = deque(maxlen=self._recent_size)

    def _take(self, line: Line) -> None:
        envelope = self._envelope(line)
        if envelope is None:
            return
        task_id, worker_id, status, timestamp = envelope
        offsets = self._by_task.get(task_id)
        if offsets is None:
            offsets = self._by_task[task_id] = array("q")
        offsets.append(line.offset)
        self._last[task_id] = (status, timestamp)
        if worker_id is not None:
            self._workers[worker_id] = timestamp
        self._recent.append(line.offset)
        self.events += 1

    def _envelope(self, line: Line) -> Envelope | None:
        return read_envelope(line, self.malformed.add)

    # --- reading ----------------------------------------------------------------------

    @property
    def epoch(self) -> str:
        return self._tail.epoch

    @property
    def end(self) -> int:
        """The cursor after the last indexed event."""
        return self._tail.offset

    def stats(self) -> IndexStats:
        with self.lock:
            tail = self._tail
            return IndexStats(
                epoch=tail.epoch,
                events=self.events,
                lines=tail.lines,
                tasks=len(self._by_task),
                indexed_bytes=tail.offset,
                file_bytes=tail.size,
                resets=tail.resets,
                malformed_count=self.malformed.count,
                malformed=list(self.malformed.latest),
            )

    def task(self, task_id: str) -> TaskInfo | None:
        with self.lock:
            if task_id not in self._last:
                return None
            status, timestamp = self._last[task_id]
            return TaskInfo(len(self._by_task[task_id]), status, timestamp)

    def workers_last_seen(self) -> dict[str, str | None]:
        with self.lock:
            return dict(self._workers)

    def recent(self, limit: int = 100) -> list[IndexedEvent]:
        with self.lock:
            return self._read_at(list(self._recent)[-limit:] if limit > 0 else [])

    def backlog(self, limit: int = 100) -> EventPage:
        """The latest `limit` events and the cursor after them: where a new client starts."""
        with self.lock:
            return EventPage(self.recent(limit), self.end, self.epoch, reset=False, more=False)

    def timeline(self, task_id: str, limit: int = 500) -> tuple[list[IndexedEvent], int]:
        """The task's latest `limit` events, oldest first, and how many it has in all."""
        with self.lock:
            offsets = self._by_task.get(task_id)
            if not offsets:
                return [], 0
            return self._read_at(offsets[-limit:] if limit > 0 else []), len(offsets)

    def events_after(self, cursor: int, limit: int = 100, epoch: str | None = None) -> EventPage:
        """Events whose lines start at `cursor` or later, up to `limit` of them.

        A cursor from another epoch, past the end, or not at a line boundary gets
        `reset=True` and the latest `limit` events instead, so a client starts over."""
        with self.lock:
            if not self._valid_cursor(cursor, epoch):
                return EventPage(self.recent(limit), self.end, self.epoch, reset=True, more=False)
            events, reached = self._read_from(cursor, limit)
            return EventPage(events, reached, self.epoch, reset=False, more=reached < self.end)

    def _valid_cursor(self, cursor: int, epoch: str | None) -> bool:
        if epoch is not None and epoch != self.epoch:
            return False
        if not 0 <= cursor <= self.end:
            return False
        return cursor == 0 or self._tail.pread(1, cursor - 1) == b"\n"

    def _read_at(self, offsets: Any) -> list[IndexedEvent]:
        events = []
        for offset in offsets:
            data = next((d for _, d in self._lines_between(offset, self.end)), None)
            event = _load(data) if data is not None else None
            if event is not None and data is not None:
                events.append(IndexedEvent(offset, offset + len(data) + 1, event))
        return events

    def _read_from(self, cursor: int, limit: int) -> tuple[list[IndexedEvent], int]:
        events: list[IndexedEvent] = []
        reached = cursor
        if limit <= 0:
            return events, reached
        for start, data in self._lines_between(cursor, self.end):
            reached = start + len(data) + 1
            event = _load(data)
            if event is not None:
                events.append(IndexedEvent(start, reached, event))
                if len(events) >= limit:
                    break
        return events, reached

    def _lines_between(self, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
        """Complete lines in [start, stop), read in growing windows; `stop` is a line end."""
        carry, carry_at, position = b"", start, start
        window = FIRST_WINDOW_BYTES
        while position < stop:
            chunk = self._tail.pread(min(window, stop - position), position)
            window = min(window * 4, READ_WINDOW_BYTES)
            if not chunk:
                return
            position += len(chunk)
            parts = (carry + chunk).split(b"\n")
            carry = parts.pop()
            for part in parts:
                yield carry_at, part
                carry_at += len(part) + 1


def _load(data: bytes) -> dict[str, Any] | None:
    """An indexed line read back; one that no longer parses was rewritten, and is skipped."""
    try:
        event = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return event if isinstance(event, dict) else None
