"""Reading execution_log.jsonl back: each line's envelope, cheaply when it can be.

store.events writes the envelope first, in the contract's order, so most lines give
their task, worker, status and time to one regular expression; anything else (escapes,
another key order, a hand-written line) is parsed as JSON, and a line that is no event
is reported through the caller's `report` and skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from swarm_runtime.contract import TASK_ID_PATTERN, Event
from swarm_runtime.store.jsonl_tail import Line

Report = Callable[[Line, str], None]

# The envelope as store.events writes it: the contract's Event fields, in their order.
# Anything else (escapes, another key order, a hand-written line) takes the json path.
TASK_ID, WORKER_ID, STATUS, TIMESTAMP = list(Event.model_fields)[:4]
EVENT_PREFIX = re.compile(
    rb'\{"%b": "(%b)", "%b": "([^"\\]*)", "%b": "([a-z_]+)", "%b": "([^"\\]*)"'
    % (
        TASK_ID.encode(),
        TASK_ID_PATTERN.pattern.encode(),
        WORKER_ID.encode(),
        STATUS.encode(),
        TIMESTAMP.encode(),
    )
)


class Envelope(NamedTuple):
    task_id: str
    worker_id: str | None
    status: str
    timestamp: str | None


def parse_record(line: Line, report: Report) -> dict[str, Any] | None:
    """One JSON object per line; anything else is reported with its line number and skipped."""
    try:
        record = json.loads(line.data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        report(line, f"invalid JSON: {exc}")
        return None
    if not isinstance(record, dict):
        report(line, "not a JSON object")
        return None
    return record


def prefix_envelope(data: bytes) -> Envelope | None:
    """The envelope from the prefix alone, for a complete line store.events wrote."""
    match = EVENT_PREFIX.match(data)
    if match is None or not data.rstrip().endswith(b"}"):
        return None
    task_id, worker_id, status, timestamp = match.groups()
    return Envelope(
        task_id.decode("ascii"),
        worker_id.decode("utf-8", "replace"),
        status.decode("ascii"),
        timestamp.decode("utf-8", "replace"),
    )


def read_envelope(line: Line, report: Report) -> Envelope | None:
    """The line's envelope, from the prefix or else from the parsed record."""
    envelope = prefix_envelope(line.data)
    if envelope is not None:
        return envelope
    record = parse_record(line, report)
    return None if record is None else record_envelope(line, record, report)


def record_envelope(line: Line, record: dict[str, Any], report: Report) -> Envelope | None:
    task_id, status = record.get(TASK_ID), record.get(STATUS)
    if not isinstance(task_id, str) or not task_id or not isinstance(status, str):
        report(line, "not an event: task_id and status must be strings")
        return None
    worker_id, timestamp = record.get(WORKER_ID), record.get(TIMESTAMP)
    return Envelope(
        task_id,
        worker_id if isinstance(worker_id, str) else None,
        status,
        timestamp if isinstance(timestamp, str) else None,
    )
