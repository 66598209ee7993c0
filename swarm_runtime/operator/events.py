"""The event log as an operator reads it: one line per event, filtered, and followed.

The events come through the panel's own event source (store.events.event_source): the
workspace's execution_log.jsonl, or with a database every host's rows. `EventFollower`
prints the latest few and then each new one, saying once if the database goes away and
going on from the same cursor when it is back; `event_line` is a pure function of one
event.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from swarm_runtime.errors import StoreUnavailable
from swarm_runtime.operator.text import clean, moment, short
from swarm_runtime.store.event_source import EventFilter, EventPage, EventSource, Outage

__all__ = ["EventFilter", "EventFollower", "detail", "event_line"]

Detail = Callable[[Mapping[str, Any]], str | None]
FOLLOW_POLL_SECONDS = 0.2
FOLLOW_PAGE_EVENTS = 500


class EventFollower:
    """The events of `source` that `wanted` admits: the latest `count`, then each new one."""

    def __init__(
        self, source: EventSource, wanted: EventFilter, show: Callable[[dict[str, Any]], None]
    ):
        self.source = source
        self.wanted = wanted
        self.show = show
        self.outage = Outage()

    def backlog(self, count: int) -> EventPage:
        self.source.refresh()
        page = self.source.latest(count, self.wanted)
        self._print(page)
        return page

    def follow(self, page: EventPage, stop: threading.Event) -> None:
        """Each event from `page`'s cursor on, until `stop` (Ctrl-C) is set."""
        while not stop.wait(FOLLOW_POLL_SECONDS):
            page = self._next(page)
            while page.more and not stop.is_set():
                page = self._next(page)

    def _next(self, page: EventPage) -> EventPage:
        try:
            self.source.refresh()
            following = self.source.events_after(
                page.cursor, FOLLOW_PAGE_EVENTS, page.epoch, self.wanted
            )
        except StoreUnavailable as exc:
            if self.outage.began(exc):
                say(f"warning: {exc}; following again from here once it is back")
            return _stalled(page)
        if self.outage.ended():
            say("the database is back: following from where it stopped")
        self._print(following)
        return following

    def _print(self, page: EventPage) -> None:
        for item in page.events:
            self.show(item.event)


def _stalled(page: EventPage) -> EventPage:
    """Nothing new, and the same cursor for the next try."""
    return EventPage([], page.cursor, page.epoch, reset=False, more=False)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


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
