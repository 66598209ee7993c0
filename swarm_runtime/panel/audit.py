"""What the panel folds out of the audit trails: spend over time and safety refusals.

Each fold takes one record at a time (see log_tail.JsonlFold), so a line of the API or
safety audit is read once, however often the page asks.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from datetime import UTC, datetime
from typing import Any

LIST_LIMIT = 200
SPEND_BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}
SPEND_POINTS = 120
# Audit lines about a call that has a line of its own: OVER_RESERVATION repeats the cost
# of the API_CALL_SUCCESS line that follows it (llm.wrapper), so it is neither spend nor
# a call of its own.
NOTES_ON_A_CALL = frozenset({"OVER_RESERVATION"})


def parse_time(value: object) -> datetime | None:
    """An ISO timestamp as an aware datetime (naive means UTC); anything else is None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def finite_cost(value: object) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else 0.0


class SpendSeries:
    """LLM spend per minute from the API audit trail; coarser buckets are summed on demand."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        self.minutes: dict[int, list[float]] = {}
        self.total = 0.0
        self.events: Counter[str] = Counter()

    def add(self, record: dict[str, Any]) -> None:
        moment = parse_time(record.get("timestamp"))
        if moment is None:
            return
        self.events[str(record.get("event"))] += 1
        if record.get("event") in NOTES_ON_A_CALL:
            return
        cost = finite_cost(record.get("cost"))
        bucket = self.minutes.setdefault(int(moment.timestamp()) // 60, [0.0, 0])
        bucket[0] += cost
        bucket[1] += 1
        self.total += cost


def bucket_spend(minutes: dict[int, list[float]], width: int, points: int) -> list[dict[str, Any]]:
    """The latest `points` buckets of `width` seconds that saw any call, oldest first."""
    buckets: dict[int, list[float]] = {}
    for minute, (cost, calls) in minutes.items():
        start = minute * 60 // width * width
        total = buckets.setdefault(start, [0.0, 0])
        total[0] += cost
        total[1] += calls
    latest = sorted(buckets)[-points:]
    return [
        {
            "start": datetime.fromtimestamp(start, UTC).isoformat(),
            "cost": round(buckets[start][0], 6),
            "calls": int(buckets[start][1]),
        }
        for start in latest
    ]


class SafetyBlocks:
    """The latest refusals of the safety gateway, from its audit trail."""

    def __init__(self, kept: int = LIST_LIMIT):
        self._kept = kept
        self.forget()

    def forget(self) -> None:
        self.checked = 0
        self.blocked = 0
        self.latest: deque[dict[str, Any]] = deque(maxlen=self._kept)

    def add(self, record: dict[str, Any]) -> None:
        self.checked += 1
        if record.get("passed") is not False:
            return
        self.blocked += 1
        self.latest.append(
            {
                "timestamp": record.get("timestamp"),
                "task_id": record.get("task_id"),
                "reason": record.get("blocked_reason"),
                "rules": record.get("rules") or [],
            }
        )
