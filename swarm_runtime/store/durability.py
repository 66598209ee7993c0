"""How many fsyncs this process made, of what, and how long they took.

A durable state write costs an fsync far more than it costs anything else, so "how
many, of what" is the first question about a task's cost. The store calls
`fsync(fd, kind)` instead of `os.fsync`, naming what the call makes durable: "queue
rewrite", "event append", "folder" (the rename into place), and so on; see `kind_of`.
Tests and benchmarks read `totals()`. Always on: a count and four clock reads (about a
microsecond) beside a system call that takes a fraction of a millisecond.

A process started with `SWARM_FSYNC_REPORT=<path>` writes its totals to that path as
JSON when it exits normally (`{pid}` in the path becomes its pid):
`{"queue rewrite": {"count": 3, "seconds": 0.0021, "cpu_seconds": 0.0009}, ...}`:
`seconds` is the wall time inside the calls, `cpu_seconds` the part of it the calling
thread spent on a CPU (in the kernel) rather than waiting for the disk. A process
killed by a signal it does not handle writes nothing.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from swarm_runtime.contract import (
    API_AUDIT_FILE,
    API_ENDPOINT_FILE,
    BALANCES_FILE,
    BUDGET_LEDGER_FILE,
    EXECUTION_LOG_FILE,
    PAUSE_FILE,
    QUALITY_GATE_FILE,
    QUEUE_ARCHIVE_FILE,
    QUEUE_FILE,
    QUEUE_JOURNAL_FILE,
    REWARD_LEDGER_FILE,
    SAFETY_AUDIT_FILE,
    TOKEN_FILE,
    TOOL_STORE_FILE,
    WORKERS_DIR,
)

REPORT_ENV = "SWARM_FSYNC_REPORT"
# How a file was made durable: replaced whole, appended to, or published once; or, for
# a file written without an fsync while the queue journal held its lines, at the fold.
REWRITE, APPEND, CREATE, CHECKPOINT = "rewrite", "append", "create", "checkpoint"
# The folder's fsync that makes a rename, a link or a deletion survive a crash.
FOLDER = "folder"
SUBJECTS = {
    QUEUE_FILE: "queue",
    QUEUE_JOURNAL_FILE: "journal",
    QUEUE_ARCHIVE_FILE: "archive",
    EXECUTION_LOG_FILE: "event",
    QUALITY_GATE_FILE: "gate",
    REWARD_LEDGER_FILE: "reward ledger",
    BALANCES_FILE: "balances",
    BUDGET_LEDGER_FILE: "budget ledger",
    API_AUDIT_FILE: "api audit",
    SAFETY_AUDIT_FILE: "safety audit",
    TOOL_STORE_FILE: "tool store",
    PAUSE_FILE: "pause",
    API_ENDPOINT_FILE: "endpoint",
    TOKEN_FILE: "token",
}


@dataclass
class Tally:
    count: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0


_tallies: dict[str, Tally] = {}
_lock = threading.Lock()


def fsync(fd: int, kind: str) -> None:
    """`os.fsync(fd)`, counted and timed under `kind`. A failed fsync made nothing
    durable and is not counted."""
    start, start_cpu = time.perf_counter(), time.thread_time()
    os.fsync(fd)
    elapsed, cpu = time.perf_counter() - start, time.thread_time() - start_cpu
    with _lock:
        tally = _tallies.get(kind)
        if tally is None:
            tally = _tallies[kind] = Tally()
        tally.count += 1
        tally.seconds += elapsed
        tally.cpu_seconds += cpu


def kind_of(path: Path, how: str) -> str:
    """The file by what it holds (a worker's presence file by its folder), then how it
    was made durable: "queue rewrite", "event append", "presence rewrite"."""
    subject = SUBJECTS.get(path.name)
    if subject is None:
        subject = "presence" if path.parent.name == WORKERS_DIR else "other"
    return f"{subject} {how}"


def totals() -> dict[str, Tally]:
    """A copy of this process's tallies so far, by kind."""
    with _lock:
        return {kind: Tally(t.count, t.seconds, t.cpu_seconds) for kind, t in _tallies.items()}


def reset() -> None:
    with _lock:
        _tallies.clear()


def write_report(path: str) -> None:
    """This process's tallies as one JSON object, at `path` with `{pid}` filled in."""
    report = {kind: asdict(tally) for kind, tally in sorted(totals().items())}
    Path(path.replace("{pid}", str(os.getpid()))).write_text(json.dumps(report) + "\n")


def _report_at_exit() -> None:
    path = os.environ.get(REPORT_ENV, "").strip()
    if path:
        atexit.register(write_report, path)


_report_at_exit()
