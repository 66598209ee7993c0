"""Folds of the audit trails, and the names of the log index the panel reads events by
(store.log_index, which the command line shares), followed by byte offset.

A fold sees each record of an append-only JSONL file once, as it is appended; a file
that was cut, rotated or rewritten is folded again from its first byte, after the
caller's aggregate was forgotten.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarm_runtime.store.event_lines import EVENT_PREFIX, parse_record
from swarm_runtime.store.event_source import EventPage, IndexedEvent, IndexStats, TaskInfo
from swarm_runtime.store.jsonl_tail import READ_BLOCK_BYTES, JsonlTail, Line
from swarm_runtime.store.log_index import Follower, LogIndex

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


class JsonlFold(Follower):
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
