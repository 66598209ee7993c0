"""execution_log.jsonl brought up to the queue journal: the events of each record.

A transaction's events are durable once its journal record is: one fsync for both. The
log gets their lines right after, under the queue's lock and without an fsync of its
own; it is made durable before a fold drops the journal (`sync_log`). A writer that dies
between the two leaves a record whose lines the log lacks, or holds only in part. The
next transaction, by any process, finds it before it changes anything and writes what
is missing, once: the record says where its lines begin (`log_at`), and the bytes
there say how much of them is already written.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from swarm_runtime.contract import QueueJournalRecord
from swarm_runtime.store import durability
from swarm_runtime.store.private import open_for_reading
from swarm_runtime.store.state_files import json_line, sync_file, write_at

log = logging.getLogger("swarm.queue")


def lines_of(record: QueueJournalRecord) -> bytes:
    """The record's events as the log holds them."""
    return "".join(json_line(event) for event in record.events).encode("utf-8")


@dataclass(frozen=True)
class Repair:
    """Write `payload` at `offset`: what the log lacks of one record's lines."""

    offset: int
    payload: bytes


@dataclass(frozen=True)
class LogTail:
    """What the log holds where a record's lines belong."""

    size: int
    present: bytes  # from the record's `log_at` on, at most as long as its lines
    ends_line: bool  # empty, or its last byte ends a line


def repair_for(lines: bytes, log_at: int, tail: LogTail) -> Repair | None:
    """What to write so that the log holds `lines` once; None if it does already.

    - The lines are there: nothing.
    - A prefix of them is there and the log ends with it (a write cut short): the rest.
    - Otherwise (the log emptied or cut by hand, or other bytes there): all of them,
      after the log's last whole line."""
    if tail.present == lines:
        return None
    if tail.size == log_at + len(tail.present) and lines.startswith(tail.present):
        return Repair(tail.size, lines[len(tail.present) :])
    return Repair(tail.size, lines if tail.ends_line else b"\n" + lines)


def bring_up_to(path: Path, record: QueueJournalRecord) -> None:
    """Make the log hold `record`'s lines, writing only what it lacks."""
    if not record.events or record.log_at is None:
        return
    lines = lines_of(record)
    repair = repair_for(lines, record.log_at, _tail(path, record.log_at, len(lines)))
    if repair is None:
        return
    if repair.offset != record.log_at and not lines.endswith(repair.payload):
        log.warning("%s lacked a committed transaction's events; added them", path.name)
    write_at(path, repair.offset, repair.payload)


def cut_lost_lines(path: Path, records: list[QueueJournalRecord]) -> None:
    """After the machine crashed: lines past the last durable record's events belong to
    records the crash lost (a record is made durable after its lines are written,
    `queue.group_commit`), so they go too."""
    logged = [r for r in records if r.events and r.log_at is not None]
    if not logged:
        return
    last = logged[-1]
    assert last.log_at is not None
    end = last.log_at + len(lines_of(last))
    if log_size(path) > end:
        log.warning("%s: cut the events of transactions a machine crash lost", path.name)
        write_at(path, end, b"")


def sync_log(path: Path) -> None:
    """Before a fold drops the journal, the lines it held must be on disk in the log."""
    sync_file(path, durability.CHECKPOINT)


def line_start(path: Path) -> int:
    """Where the next line of the log begins: its end, after ending a last line left
    without its newline (by a hand edit, or a writer of old) so that nothing runs on."""
    tail = _tail(path, 0, 0)
    if tail.ends_line:
        return tail.size
    write_at(path, tail.size, b"\n")
    return tail.size + 1


def log_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _tail(path: Path, offset: int, length: int) -> LogTail:
    try:
        with open_for_reading(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - 1))
            ends_line = size == 0 or handle.read(1) == b"\n"
            handle.seek(offset)
            present = handle.read(length) if size > offset else b""
    except FileNotFoundError:
        return LogTail(0, b"", True)
    return LogTail(size, present, ends_line)
