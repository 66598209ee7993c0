"""`.swarm/queue_journal.jsonl`: the queue transactions not yet folded into queue.json.

Rewriting queue.json costs as much as the queue is long (2 MB and 8 ms of disk at
10,000 tasks); appending one record costs as much as the transaction changed. So a
transaction appends one record here (with the events it logs, and what it vouches for)
and the journal is folded into queue.json only now and then (see
`queue.store.QueueStore._persist`).

The first line names the journal, the version of queue.json it continues (inode,
mtime, size) and the boot of the machine it was started in (`boot_id`): files written
without an fsync since then survive a process's crash, not the machine's. The queue is
that queue.json plus every complete record after it. Once queue.json is replaced by
anything else (a fold, a small queue's rewrite, an operator's hand edit or deletion)
the journal is obsolete and ignored: a fold already holds its records, and a hand edit
overrules them, exactly as it overrules a rewrite. So a crash between a fold's rename
and the journal's removal loses nothing and replays nothing.

A last line without its newline is a write that never finished: it was not committed,
is skipped, and the next append cuts it off. Writes happen under queue.json's lock;
reads need none, since a reader never counts a record before its newline is written.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from functools import cache
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
    boot: str | None = None


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
                name, follows, boot = self._header(head)
                restarted = name != self.position.name
                if restarted:
                    self.position = JournalPosition(
                        name, follows, end=len(head), lines=1, boot=boot
                    )
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

    def _header(self, head: bytes) -> tuple[str, Version, str | None]:
        try:
            header = json.loads(head)
            name, follows, boot = header["journal"], header["follows"], header.get("boot")
            if isinstance(name, str) and head.endswith(b"\n"):
                return name, tuple(follows) if follows is not None else None, boot
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

    def append(self, record: QueueJournalRecord, snapshot: Version) -> bool:
        """Append `record` to the journal continuing queue.json at `snapshot`, starting
        that journal if the one on disk continues something else. True when the caller
        must still make the record durable (`queue.group_commit`): a new journal is
        written durably whole."""
        line = record.model_dump_json(exclude_unset=True).encode() + b"\n"
        started = self.position.name is None or self.position.follows != snapshot
        if started:
            self._start(line, snapshot)
        else:
            self.position.end = append_after(self.path, self.position.end, line, durable=False)
        self.position.records += 1
        self.position.lines += 1
        if self.position.first_at is None:
            self.position.first_at = record.at
        return not started

    def _start(self, first_record: bytes, snapshot: Version) -> None:
        name, boot = secrets.token_hex(8), boot_id()
        header = {"journal": name, "follows": snapshot, "started": time.time(), "boot": boot}
        head = json.dumps(header).encode() + b"\n"
        atomic_write_bytes(self.path, head + first_record)
        end = len(head) + len(first_record)
        self.position = JournalPosition(name, snapshot, end=end, lines=1, boot=boot)

    def discard(self) -> None:
        """The journal's records are in queue.json now (which already made it obsolete)."""
        remove_durably(self.path)
        self.forget()

    @property
    def size(self) -> int:
        return self.position.end

    def from_another_boot(self) -> bool:
        """Written before the machine last started: lines written since without an fsync
        (the log's) may be lost."""
        return self.position.name is not None and self.position.boot != boot_id()

    def age(self) -> float:
        """Seconds since the oldest record not yet in queue.json was written (0 if none)."""
        first = self.position.first_at
        return 0.0 if first is None else max(0.0, time.time() - first)


@cache
def boot_id() -> str | None:
    """This boot of the machine (Linux); None where the kernel does not say."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None
