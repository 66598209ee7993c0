"""The event log as an operator reads it: one line per event, filtered, and followed.

`EventFeed` reads execution_log.jsonl through the same byte-offset tail as the panel:
the backlog costs one pass over the file that parses only the lines it keeps (the
envelope of the rest is read from each line's prefix), and following costs only what
was appended since the last look. `event_line` is a pure function of one event.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from swarm_runtime.operator.text import clean, moment, short
from swarm_runtime.store.event_lines import Envelope, parse_record, read_envelope
from swarm_runtime.store.jsonl_tail import JsonlTail, Line

Detail = Callable[[Mapping[str, Any]], str | None]


class EventFilter(NamedTuple):
    task: str | None = None
    status: str | None = None
    worker: str | None = None

    def admits(self, envelope: Envelope) -> bool:
        wanted = ((self.task, envelope.task_id), (self.status, envelope.status))
        return all(want is None or want == got for want, got in wanted) and (
            self.worker is None or self.worker == envelope.worker_id
        )


class EventFeed:
    """The events that pass `wanted`: first the latest few, then each one appended."""

    def __init__(self, path: Path, wanted: EventFilter):
        self._tail = JsonlTail(path)
        self.wanted = wanted
        self.matched = 0

    def backlog(self, count: int) -> list[dict[str, Any]]:
        """The latest `count` matching events, oldest first; reads the log to its end."""
        kept = deque(self._matching_lines(), maxlen=max(count, 0))
        return self._parsed(kept)

    def new_events(self) -> list[dict[str, Any]]:
        return self._parsed(self._matching_lines())

    def close(self) -> None:
        self._tail.close()

    def _matching_lines(self) -> Iterator[Line]:
        while True:
            batch = self._tail.poll()
            for line in batch.lines:
                envelope = read_envelope(line, skipped) if line.data.strip() else None
                if envelope is not None and self.wanted.admits(envelope):
                    self.matched += 1
                    yield line
            if batch.read == 0:
                return

    @staticmethod
    def _parsed(lines: Iterator[Line] | deque[Line]) -> list[dict[str, Any]]:
        return [event for line in lines if (event := parse_record(line, skipped)) is not None]


def skipped(line: Line, reason: str) -> None:
    print(f"warning: event log line {line.number} skipped: {short(reason)}", file=sys.stderr)


def event_line(event: Mapping[str, Any]) -> str:
    """time, task, status, worker and what the event says, on one line."""
    task, status, worker = (clean(event.get(key) or "-") for key in ENVELOPE_SHOWN)
    line = f"{moment(event.get('timestamp')):<19}  {task:<20} {status:<17} {worker:<16} "
    return (line + short(detail(event) or "")).rstrip()


ENVELOPE_SHOWN = ("task_id", "status", "worker_id")


def detail(event: Mapping[str, Any]) -> str | None:
    """The first thing the event says, in the order an operator looks for it."""
    return next((text for describe in DETAILS if (text := describe(event))), None)


def _operator(event: Mapping[str, Any]) -> str | None:
    action = event.get("operator_action")
    return f"operator {action}" if action else None


def _retry(event: Mapping[str, Any]) -> str | None:
    if event.get("api_retry") is None:
        return None
    return f"API retry {event['api_retry']} in {event.get('retry_in')}s: {event.get('errors')}"


def _review(event: Mapping[str, Any]) -> str | None:
    verdict = event.get("review_verdict")
    if not verdict:
        return None
    issues = event.get("review_issues") or []
    return f"review {verdict}" + (f": {issues[0]}" if issues else "")


def _errors(event: Mapping[str, Any]) -> str | None:
    errors = event.get("errors") or event.get("review_error")
    return f"error: {errors}" if errors else None


def _reason(event: Mapping[str, Any]) -> str | None:
    reason = event.get("reason")
    return str(reason) if reason else None


def _plan(event: Mapping[str, Any]) -> str | None:
    subtasks = event.get("phase4_subtasks")
    return f"split into {len(subtasks)} subtasks" if isinstance(subtasks, list) else None


def _result(event: Mapping[str, Any]) -> str | None:
    text = event.get("result_summary") or event.get("output")
    return str(text) if text else None


def _attempt(event: Mapping[str, Any]) -> str | None:
    attempt, mode = event.get("attempt"), event.get("mode")
    return f"attempt {attempt} ({mode or 'llm'})" if attempt else None


DETAILS: tuple[Detail, ...] = (
    _operator,
    _retry,
    _review,
    _errors,
    _reason,
    _plan,
    _result,
    _attempt,
)
