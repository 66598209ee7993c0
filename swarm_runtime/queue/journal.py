"""`.swarm/queue_journal.jsonl`: the queue transactions not yet folded into queue.json.

Rewriting queue.json costs as much as the queue is long (2 MB and 8 ms of disk at
10,000 tasks); appending one record costs as much as the transaction changed. So a large
queue appends each transaction here and folds the journal into queue.json only now and
then (see `queue.store.QueueStore._persist`).

The first line names the journal and the version of queue.json it continues (inode,
mtime, size). The queue is that queue.json plus every complete record after it. Once
queue.json is replaced by anything else (a fold, a small queue's rewrite, an operator's
hand edit or deletion) the journal is obsolete and ignored: a fold already holds its
records, and a hand edit overrules them, exactly as it overrules a rewrite. So a crash
between a fold's rename and the journal's removal loses nothing and replays nothing.

A last line without its newline is a write that never finished: it was not committed,
is skipped, and the next append cuts it off. Writes happen under queue.json's lock;
reads need none, since a reader never counts a record before its newline is written.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from swarm_runtime.contract import QueueJournalRecord, describe_validation_error
from swarm_runtime.errors import QueueFileError
from swarm_runtime.store.private import open_for_reading
from swarm_runtime.store.state_files import append_after, atomic_write_bytes, remove_durably

Version = tuple[int, int, int] | None


@dataclass
class JournalPosition:
    """How far one process has read: which journal, where its last complete record ends."""

    name: str | None = None
    follows: Version = None
    end: int = 0
    records: int = 0
    lines: int = 0
    first_at: float | None = None


class QueueJournal:
    def __init__(self, path: Path):
        self.path = path
        self.position = JournalPosition()

    def holds_records_after(self, snapshot: Version) -> bool:
        """Records that queue.json (at version `snapshot`) does not contain yet."""
        return (
            self.position.name is not None
            and self.position.follows == snapshot
            and (self.position.records > 0)
        )

    # reading

    def forget(self) -> None:
        """Read the journal from its start next time (queue.json was read again)."""
        self.position = JournalPosition()

    def read_new(self, snapshot: Version) -> tuple[bool, list[QueueJournalRecord]]:
        """Records appended since the last read, if the journal continues queue.json at
        version `snapshot` (else none). The flag says the journal was replaced or removed
        since the last read: the caller must start over from queue.json."""
        try:
            with open_for_reading(self.path) as handle:
                head = handle.readline()
                name, follows = self._header(head)
                restarted = name != self.position.name
                if restarted:
                    self.position = JournalPosition(name, follows, end=len(head), lines=1)
                if follows != snapshot:
                    return restarted, []
                handle.seek(self.position.end)
                data = handle.read()
        except FileNotFoundError:
            restarted = self.position.name is not None
            self.position = JournalPosition()
            return restarted, []
        complete = data[: data.rfind(b"\n") + 1]
        records = [self._parse(line) for line in complete.splitlines()]
        self.position.end += len(complete)
        self.position.records += len(records)
        if records and self.position.first_at is None:
            self.position.first_at = records[0].at
        return restarted, records

    def _header(self, head: bytes) -> tuple[str, Version]:
        try:
            header = json.loads(head)
            name, follows = header["journal"], header["follows"]
            if isinstance(name, str) and head.endswith(b"\n"):
                return name, tuple(follows) if follows is not None else None
        except (ValueError, KeyError, TypeError):
            pass
        raise QueueFileError(self.path, ["line 1: not a queue journal header"])

    def _parse(self, line: bytes) -> QueueJournalRecord:
        self.position.lines += 1
        try:
            return QueueJournalRecord.model_validate_json(line)
        except ValidationError as exc:
            problems = [describe_validation_error(e) for e in exc.errors()[:3]]
            raise QueueFileError(
                self.path, [f"line {self.position.lines}: " + "; ".join(problems)]
            ) from None

    # writing

    def append(self, record: QueueJournalRecord, snapshot: Version) -> None:
        """Durably append `record` to the journal continuing queue.json at `snapshot`,
        starting that journal if the one on disk continues something else."""
        line = record.model_dump_json(exclude_unset=True).encode() + b"\n"
        if self.position.name is None or self.position.follows != snapshot:
            self._start(line, snapshot)
        else:
            self.position.end = append_after(self.path, self.position.end, line)
        self.position.records += 1
        self.position.lines += 1
        if self.position.first_at is None:
            self.position.first_at = record.at

    def _start(self, first_record: bytes, snapshot: Version) -> None:
        name = secrets.token_hex(8)
        header = {"journal": name, "follows": snapshot, "started": time.time()}
        head = json.dumps(header).encode() + b"\n"
        atomic_write_bytes(self.path, head + first_record)
        self.position = JournalPosition(name, snapshot, end=len(head) + len(first_record), lines=1)

    def discard(self) -> None:
        """The journal's records are in queue.json now (which already made it obsolete)."""
        remove_durably(self.path)
        self.forget()

    @property
    def size(self) -> int:
        return self.position.end

    def age(self) -> float:
        """Seconds since the oldest record not yet in queue.json was written (0 if none)."""
        first = self.position.first_at
        return 0.0 if first is None else max(0.0, time.time() - first)
