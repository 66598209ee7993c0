"""Appending lifecycle events to execution_log.jsonl in the contract's shape."""

from __future__ import annotations

import json
from typing import Any

from swarm_runtime.contract import (
    EVENT_FIELD_CAP_BYTES,
    TRUNCATION_MARKER,
    Event,
    ExecutionEvent,
    LeaseEvent,
    Status,
)
from swarm_runtime.store.state_files import Workspace, append_line

ENVELOPE = ("task_id", "worker_id", "status", "timestamp")


def cap_text(text: str, limit: int = EVENT_FIELD_CAP_BYTES) -> str:
    """Shorten `text` to at most `limit` UTF-8 bytes, saying how much was cut."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    kept = encoded[:limit].decode("utf-8", errors="ignore")
    return kept + TRUNCATION_MARKER.format(dropped=len(encoded) - len(kept.encode("utf-8")))


def cap_value(value: Any, limit: int = EVENT_FIELD_CAP_BYTES) -> Any:
    """Strings are cut in place; a structure too large to keep is replaced by a marked preview."""
    if isinstance(value, str):
        return cap_text(value, limit)
    if isinstance(value, dict | list):
        serialized = json.dumps(value, ensure_ascii=False, default=str)
        if len(serialized.encode("utf-8")) > limit:
            return {"truncated": True, "preview": cap_text(serialized, limit)}
    return value


def build_event(
    task_id: str, worker_id: str, status: Status, kind: type[Event] | None = None, **fields: Any
) -> dict[str, Any]:
    """The event as written: envelope first, the design's keys present (null when empty).

    `kind` picks the event model whose keys must all appear; by default a lease event for
    `lease_expired` and an execution event otherwise."""
    if kind is None:
        kind = LeaseEvent if status == Status.LEASE_EXPIRED else ExecutionEvent
    event = kind(task_id=task_id, worker_id=worker_id, status=status, **fields)
    record = event.model_dump(mode="json")
    ordered = {key: record.pop(key) for key in ENVELOPE} | record
    return {key: cap_value(value) for key, value in ordered.items()}


class EventLog:
    """One worker's writer for execution_log.jsonl."""

    def __init__(self, workspace: Workspace, worker_id: str):
        self._workspace = workspace
        self.worker_id = worker_id

    def emit(
        self, task_id: str, status: Status, kind: type[Event] | None = None, **fields: Any
    ) -> dict[str, Any]:
        record = build_event(task_id, self.worker_id, status, kind, **fields)
        append_line(self._workspace, self._workspace.log_path, record)
        return record
