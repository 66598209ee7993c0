"""The health header: API reachable, workers alive, paused or running, budget, queue, log.

Each part is read on its own and reports its own error, so one unreadable state file
darkens one tile and never the whole header.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from swarm_runtime.contract import QUEUE_FILE
from swarm_runtime.errors import StateFileError, StoreUnavailable
from swarm_runtime.llm.budget import budget_view
from swarm_runtime.panel.errors import refusal
from swarm_runtime.panel.state import Panel
from swarm_runtime.queue.endpoint import endpoint_for
from swarm_runtime.queue.overview import alive_workers, live_leases, queue_counts
from swarm_runtime.queue.presence import live_workers
from swarm_runtime.store.pause import read_pause
from swarm_runtime.web.json_errors import HttpError

MALFORMED_SHOWN = 5


def summary_of(panel: Panel, now: datetime) -> dict[str, Any]:
    moment = now.timestamp()
    leased: dict[str, str] = {}
    try:
        doc = panel.load_queue()
    except HttpError as exc:
        queue: dict[str, Any] = {"error": exc.body.error}
        # The API is named in the queue: not knowing where it is is not its being down.
        api = {"reachable": None, "error": f"unknown while {QUEUE_FILE} is unreadable"}
    else:
        queue = queue_counts(doc)
        api = panel.probe.check(endpoint_for(panel.settings, panel.workspace, doc.api_endpoint))
        leased = live_leases(doc, moment)
    present = live_workers(panel.workspace, moment, panel.documents.database)
    return {
        "api": api,
        "workers": alive_workers(present, leased, panel.index.workers_last_seen()),
        "pause": pause_of(panel),
        "budget": budget_of(panel),
        "queue": queue,
        "log": log_of(panel),
        "now": now.isoformat(),
    }


def pause_of(panel: Panel) -> dict[str, Any]:
    try:
        return read_pause(panel.documents.pause).model_dump(mode="json") | {"error": None}
    except (StateFileError, StoreUnavailable) as exc:
        return {
            "paused": True,
            "error": f"{refusal(exc, panel.workspace).body.error}; "
            "workers claim nothing while it is unreadable",
        }


def budget_of(panel: Panel) -> dict[str, Any]:
    return budget_view(panel.budget, lambda exc: refusal(exc, panel.workspace).body.error)


def log_of(panel: Panel) -> dict[str, Any]:
    stats = panel.index.stats()
    return {
        "events": stats.events,
        "lines": stats.lines,
        "tasks": stats.tasks,
        "file_bytes": stats.file_bytes,
        "indexed_bytes": stats.indexed_bytes,
        "behind_bytes": panel.index.behind,
        "resets": stats.resets,
        "epoch": stats.epoch,
        "malformed_count": stats.malformed_count,
        "malformed": [vars(m) for m in stats.malformed[-MALFORMED_SHOWN:]],
    }
