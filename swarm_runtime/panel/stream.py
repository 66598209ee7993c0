"""The live event stream: server-sent events, and long polling for clients without them.

Both start with a backlog (or what followed the client's cursor) and then send each
new event, read through the panel's event source: execution_log.jsonl by byte offset,
or with a database every host's events by row id. A cursor is `epoch:position`; one
from another epoch (the log was rotated or truncated) makes the client start over with
a `reset`. While the database is away a stream says so once (`unavailable`), keeps its
cursor, and goes on from it when the database is back (`available`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Response

from swarm_runtime.errors import StoreUnavailable
from swarm_runtime.panel.state import Panel
from swarm_runtime.store.event_source import EventPage, IndexedEvent, Outage

STREAM_POLL_SECONDS = 0.2
STREAM_KEEPALIVE_SECONDS = 15.0
STREAM_LIFETIME_SECONDS = 300.0
STREAM_RETRY_MS = 1000
LONG_POLL_MAX_SECONDS = 25.0
DEFAULT_BACKLOG = 100
MAX_EVENTS_PER_PAGE = 500


def event_item(item: IndexedEvent) -> dict[str, Any]:
    return {"cursor": item.cursor, "event": item.event}


def page_body(page: EventPage) -> dict[str, Any]:
    return {
        "events": [event_item(e) for e in page.events],
        "cursor": page.cursor,
        "epoch": page.epoch,
        "reset": page.reset,
        "more": page.more,
    }


def parse_cursor(token: str | None) -> tuple[int | None, str | None]:
    """`epoch:offset` (or a bare offset) from Last-Event-ID; anything else starts over."""
    if not token:
        return None, None
    epoch, _, offset = token.rpartition(":")
    try:
        return int(offset), epoch or None
    except ValueError:
        return -1, None


def sse(data: dict[str, Any], *, event_id: str | None, kind: str | None = None) -> str:
    """One server-sent event; without an id, the client's Last-Event-ID stays as it was."""
    head = f"event: {kind}\n" if kind else ""
    head += f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


def unavailable(error: StoreUnavailable) -> str:
    text = f"the event store is unreachable: {error}; the stream goes on once it is back"
    return sse({"error": text, "retryable": True}, event_id=None, kind="unavailable")


def sse_page(page: EventPage) -> Iterator[str]:
    if page.reset:
        yield sse({"epoch": page.epoch}, event_id=f"{page.epoch}:{page.cursor}", kind="reset")
    for item in page.events:
        yield sse(event_item(item), event_id=f"{page.epoch}:{item.cursor}")


def first_page(panel: Panel, cursor: int | None, epoch: str | None, limit: int) -> EventPage:
    """The backlog for a new client; what followed its cursor for a returning one."""
    panel.catch_up()
    if cursor is None:
        return panel.index.latest(limit)
    return panel.index.events_after(cursor, limit, epoch)


class StreamPosition:
    """Where one stream is in the events: its first page, then each page after the last.

    A failed read leaves the position where it was, so the stream resumes from the
    same cursor once the database is back, without a gap or a repeat."""

    def __init__(self, panel: Panel, cursor: int | None, epoch: str | None, backlog: int):
        self.panel = panel
        self.start = (cursor, epoch, backlog if cursor is None else MAX_EVENTS_PER_PAGE)
        self.page: EventPage | None = None
        self.outage = Outage()

    def advance(self) -> tuple[str, bool]:
        """The text to send next, and whether more events are waiting already."""
        try:
            page = self._next_page()
        except StoreUnavailable as exc:
            return (unavailable(exc) if self.outage.began(exc) else ""), False
        back = sse({}, event_id=None, kind="available") if self.outage.ended() else ""
        self.page = page
        return back + "".join(sse_page(page)), page.more

    def _next_page(self) -> EventPage:
        if self.page is None:
            return first_page(self.panel, *self.start)
        self.panel.catch_up()
        return self.panel.index.events_after(self.page.cursor, MAX_EVENTS_PER_PAGE, self.page.epoch)


def event_stream(
    panel: Panel,
    cursor: int | None,
    epoch: str | None,
    backlog: int,
    lifetime: float = STREAM_LIFETIME_SECONDS,
    ended: threading.Event | None = None,
) -> Iterator[str]:
    """Server-sent events: the backlog (or what followed Last-Event-ID), then each new event.

    The stream ends after `lifetime` seconds, when the panel stops or when `ended` is set
    (its slot went to a newer client), so no thread is held forever; the browser
    reconnects by itself, sending the id of the last event it got."""
    ended = ended or panel.stop
    yield f"retry: {STREAM_RETRY_MS}\n\n"
    position = StreamPosition(panel, cursor, epoch, backlog)
    deadline = time.monotonic() + lifetime
    quiet_since = time.monotonic()
    while True:
        chunk, more = position.advance()
        if chunk:
            quiet_since = time.monotonic()
            yield panel.scrub(chunk)
        elif time.monotonic() - quiet_since > STREAM_KEEPALIVE_SECONDS:
            quiet_since = time.monotonic()
            yield ": keepalive\n\n"
        if not more and (
            ended.wait(STREAM_POLL_SECONDS) or panel.stop.is_set() or time.monotonic() > deadline
        ):
            return


def stream_response(panel: Panel, cursor: int | None, epoch: str | None, backlog: int) -> Response:
    """An SSE response holding one of the panel's stream slots until it closes."""
    slot, ended = panel.streams.open()
    stream = event_stream(panel, cursor, epoch, backlog, ended=ended)
    response = Response(stream, mimetype="text/event-stream")
    response.headers["X-Accel-Buffering"] = "no"
    response.call_on_close(lambda: panel.streams.close(slot))
    return response


def long_poll(
    panel: Panel, cursor: int | None, epoch: str | None, limit: int, wait: int
) -> EventPage:
    """Events after `cursor` (the backlog without one), waiting up to `wait` s for the first."""
    deadline = time.monotonic() + wait
    while True:
        page = first_page(panel, cursor, epoch, limit)
        if cursor is None or page.events or page.reset or time.monotonic() >= deadline:
            return page
        if panel.stop.wait(STREAM_POLL_SECONDS):
            return page
