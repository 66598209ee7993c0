"""Read models of what became of the work: review queue, safety blocks, rewards, spend."""

from __future__ import annotations

from collections import Counter
from typing import Any

from swarm_runtime.contract import QualityGateStatus, Status
from swarm_runtime.panel.audit import LIST_LIMIT, SPEND_BUCKETS, SPEND_POINTS, bucket_spend
from swarm_runtime.panel.health import budget_of
from swarm_runtime.panel.state import Panel
from swarm_runtime.phases.quality_gate import Change
from swarm_runtime.web.json_errors import HttpError

# The review queue shows the changes waiting on a human, and those turned down.
GATE_SHOWN = (QualityGateStatus.NEEDS_QA.value, QualityGateStatus.REJECTED.value)
NO_VOTE: dict[str, Any] = {"decision": None, "verdict": None, "confidence": None, "issues": []}


def gate_of(panel: Panel, status: str | None) -> dict[str, Any]:
    changes = list(panel.gate.get().changes.values())
    counts = Counter(change.status.value for change in changes)
    chosen = [c for c in changes if c.status.value == status] if status else changes
    chosen.sort(key=lambda c: c.updated_at or c.created_at, reverse=True)
    return {
        "counts": dict(counts),
        "total": len(chosen),
        "changes": [gate_row(c) for c in chosen[:LIST_LIMIT]],
    }


def gate_row(change: Change) -> dict[str, Any]:
    """Every change in the one shape the review table reads: a change the reference
    implementation wrote carries its blind_vote, not our critic's vote, and no updated_at."""
    row = change.model_dump(mode="json")
    row["vote"] = row["vote"] or NO_VOTE
    row["updated_at"] = row["updated_at"] or change.created_at
    return row


def safety_of(panel: Panel) -> dict[str, Any]:
    """Refusals from the gateway's audit trail, and the tasks they left safety_blocked."""
    with panel.safety_log.lock:
        blocks = list(reversed(panel.safety.latest))
        checked, blocked = panel.safety.checked, panel.safety.blocked
    try:
        tasks = [
            {"id": t.id, "error": t.last_error, "updated_at": t.updated_at}
            for t in panel.load_queue().tasks
            if t.status == Status.SAFETY_BLOCKED
        ]
    except HttpError:
        tasks = []
    return {
        "checked": checked,
        "blocked": blocked,
        "blocks": blocks,
        "tasks": tasks[-LIST_LIMIT:],
        "malformed_count": panel.safety_log.malformed.count,
    }


def rewards_of(panel: Panel) -> dict[str, Any]:
    grants = sorted(panel.grants.get().grants.values(), key=lambda g: g.granted_at, reverse=True)
    identities = {
        name: balance.model_dump(mode="json", exclude={"history"}) | {"total": balance.total_tokens}
        for name, balance in panel.balances.get().identities.items()
    }
    return {
        "grants": [g.model_dump(mode="json") for g in grants[:LIST_LIMIT]],
        "total_grants": len(grants),
        "identities": identities,
    }


def spend_of(panel: Panel, bucket: str) -> dict[str, Any]:
    with panel.spend_log.lock:
        points = bucket_spend(panel.spend.minutes, SPEND_BUCKETS[bucket], SPEND_POINTS)
        total, events = panel.spend.total, dict(panel.spend.events)
    return {
        "bucket": bucket,
        "points": points,
        "total_cost": round(total, 6),
        "events": events,
        "budget": budget_of(panel),
        "malformed_count": panel.spend_log.malformed.count,
    }
