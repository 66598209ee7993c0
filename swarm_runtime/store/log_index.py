"""The file's event source: execution_log.jsonl indexed by byte offset, built on following
the file (store.jsonl_tail) and reading each line's envelope (store.event_lines).

The panel must serve a 1 GB log as fast as a 1 MB one, so nothing here rescans a file
to answer the panel: `JsonlTail` reads only the bytes appended since its last call, and
`LogIndex` remembers where each task's events start, so a timeline or a backlog costs a
few `pread`s. A file that was truncated, rotated (a new inode) or rewritten under the
last offset read is indexed again from its first byte, under a new `epoch`: a cursor
from an older epoch no longer means anything, and whoever holds one is told to start
over.

A cursor is the byte offset just past an event's line, so "events after cursor" is a
seek and a read, whatever the size of the log.
"""

from __future__ import annotations

import json
import logging
import threading
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from swarm_runtime.store.event_lines import read_envelope
from swarm_runtime.store.event_source import (
    EVERY_EVENT,
    EventFilter,
    EventPage,
    IndexedEvent,
    IndexStats,
    Malformed,
    TaskInfo,
    sets_last_status,
)
from swarm_runtime.store.jsonl_tail import READ_BLOCK_BYTES, JsonlTail, Line

log = logging.getLogger("swarm.store")

FIRST_WINDOW_BYTES = 4 * 1024
READ_WINDOW_BYTES = 1024 * 1024
RECENT_EVENTS = 1000
MALFORMED_KEPT = 50

Lines = Iterable[tuple[int, bytes]]


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


class Follower:
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


class LogIndex(Follower):
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
        envelope = read_envelope(line, self.malformed.add)
        if envelope is None:
            return
        task_id, worker_id, status, timestamp = envelope
        offsets = self._by_task.get(task_id)
        if offsets is None:
            offsets = self._by_task[task_id] = array("q")
        offsets.append(line.offset)
        if sets_last_status(status) or task_id not in self._last:
            self._last[task_id] = (status, timestamp)
        if worker_id is not None:
            self._workers[worker_id] = timestamp
        self._recent.append(line.offset)
        self.events += 1

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
        return self.latest(limit)

    def latest(self, limit: int, wanted: EventFilter = EVERY_EVENT) -> EventPage:
        """The latest `limit` events `wanted` admits, and the cursor after the last line read.

        The unfiltered backlog and a task's events are read at their known offsets; any
        other filter reads the log once, parsing only the lines it keeps."""
        with self.lock:
            if wanted == EVERY_EVENT and limit <= self._recent_size:
                events = self.recent(limit)
            elif wanted.task is not None:
                events = self._latest_of_task(limit, wanted)
            else:
                lines = self._admitted(self._lines_between(0, self.end), wanted)
                events = _events(deque(lines, maxlen=max(limit, 0)))
            return EventPage(events, self.end, self.epoch, reset=False, more=False)

    def timeline(self, task_id: str, limit: int = 500) -> tuple[list[IndexedEvent], int]:
        """The task's latest `limit` events, oldest first, and how many it has in all."""
        with self.lock:
            offsets = self._by_task.get(task_id)
            if not offsets:
                return [], 0
            return self._read_at(offsets[-limit:] if limit > 0 else []), len(offsets)

    def events_after(
        self,
        cursor: int,
        limit: int = 100,
        epoch: str | None = None,
        wanted: EventFilter = EVERY_EVENT,
    ) -> EventPage:
        """Events `wanted` admits whose lines start at `cursor` or later, up to `limit`.

        A cursor from another epoch, past the end, or not at a line boundary gets
        `reset=True` and the latest `limit` events instead, so a client starts over."""
        with self.lock:
            if not self._valid_cursor(cursor, epoch):
                stale = self.latest(limit, wanted)
                return EventPage(stale.events, self.end, self.epoch, reset=True, more=False)
            events, reached = self._read_from(cursor, limit, wanted)
            return EventPage(events, reached, self.epoch, reset=False, more=reached < self.end)

    def _valid_cursor(self, cursor: int, epoch: str | None) -> bool:
        if epoch is not None and epoch != self.epoch:
            return False
        if not 0 <= cursor <= self.end:
            return False
        return cursor == 0 or self._tail.pread(1, cursor - 1) == b"\n"

    def _latest_of_task(self, limit: int, wanted: EventFilter) -> list[IndexedEvent]:
        offsets = self._by_task.get(wanted.task or "", array("q"))
        lines = ((offset, self._line_at(offset)) for offset in reversed(offsets))
        return _events(reversed(list(islice(self._admitted(lines, wanted), max(limit, 0)))))

    def _read_at(self, offsets: Iterable[int]) -> list[IndexedEvent]:
        return _events((offset, self._line_at(offset)) for offset in offsets)

    def _line_at(self, offset: int) -> bytes:
        return next((data for _, data in self._lines_between(offset, self.end)), b"")

    def _read_from(
        self, cursor: int, limit: int, wanted: EventFilter
    ) -> tuple[list[IndexedEvent], int]:
        events: list[IndexedEvent] = []
        reached = cursor
        if limit <= 0:
            return events, reached
        for start, data in self._lines_between(cursor, self.end):
            reached = start + len(data) + 1
            if not self._admits(wanted, start, data):
                continue
            events += _events([(start, data)])
            if len(events) >= limit:
                break
        return events, reached

    def _admitted(self, lines: Lines, wanted: EventFilter) -> Iterator[tuple[int, bytes]]:
        return ((start, data) for start, data in lines if self._admits(wanted, start, data))

    def _admits(self, wanted: EventFilter, start: int, data: bytes) -> bool:
        """Whether the line is an event `wanted` admits; told from its prefix when it can be."""
        if wanted == EVERY_EVENT:
            return True
        envelope = read_envelope(Line(start, 0, data), _already_reported)
        return envelope is not None and wanted.admits(envelope)

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


def _already_reported(_line: Line, _reason: str) -> None:
    """A line read back was reported when it was indexed; reading it again says nothing."""


def _events(lines: Lines) -> list[IndexedEvent]:
    return [
        IndexedEvent(start, start + len(data) + 1, event)
        for start, data in lines
        if (event := _load(data)) is not None
    ]


def _load(data: bytes) -> dict[str, Any] | None:
    """An indexed line read back; one that no longer parses was rewritten, and is skipped."""
    try:
        event = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return event if isinstance(event, dict) else None
