"""What a queue transaction commits with its own changes: events, and effects.

A claim's events are decided inside the claim (which lease it reclaimed, which tasks it
failed, which task it leased), so they are built here, from what the claim did, by the
claiming worker's name. Every other transition's events are built by the caller and
handed to the transaction whole.

An effect is a change beside the queue that belongs to the same step (a review's vote
in the quality gate, its reward). It runs inside the transaction, after the lease is
checked, so a worker that lost its lease changes nothing there either. Its result adds
fields to the transition's last event, and may vouch for it: a payload the journal keeps
with the transaction.

On the files, a vouched effect writes nothing when it runs: the journal record is its
commit, and the journal's fold applies every vouched payload to its file at once, with
one durable write a file (`queue.store`). Until then the effect's files trail the
journal, so an effect decides on its file with the payloads still outstanding laid over
it (`Outstanding`). In a database, an effect writes its rows in the transaction itself
and is given None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from swarm_runtime.contract import Status, Task, iso, utc_now
from swarm_runtime.store.events import build_event

if TYPE_CHECKING:
    from swarm_runtime.queue.leases import WorkerIdentity
    from swarm_runtime.queue.transactions import ClaimOutcome

# The event an operator's action logs, made from the task as the action left it.
EventNote = Callable[[Task], dict[str, Any]]


@dataclass(frozen=True)
class EffectResult:
    """The fields an effect adds to the transition's last event, and (by the name of the
    applier that can redo it) the payload the journal keeps for it."""

    fields: dict[str, Any] = field(default_factory=dict)
    vouch: tuple[str, Any] | None = None


# The payloads the journal vouches for that their files do not hold yet, in order, by the
# name of their applier.
Outstanding = Mapping[str, Sequence[Any]]
# Runs with what is outstanding, or None when it is to write its own rows.
Effect = Callable[[Outstanding | None], EffectResult]
# Applies vouched payloads to their file, in order, with one durable write; a payload the
# file holds already changes nothing.
Applier = Callable[[Sequence[Any]], None]


def claim_events(claim: ClaimOutcome, worker: WorkerIdentity) -> list[dict[str, Any]]:
    """What the claim did, in the order it did it: reclaims, failures, then the start."""
    events = [
        build_event(
            item.task_id,
            worker.worker_id,
            Status.LEASE_EXPIRED,
            previous_holder=item.previous,
            reason=item.reason,
            host=worker.host,
        )
        for item in claim.reclaimed
    ]
    finished_at = iso(utc_now())
    events += [
        build_event(
            failed.task_id,
            worker.worker_id,
            failed.status,
            errors=failed.reason,
            completed_at=finished_at,
            host=worker.host,
        )
        for failed in claim.propagated
    ]
    task = claim.task
    if task is not None and task.status == Status.IN_PROGRESS:
        events.append(started_event(task, worker, claim.started_at or finished_at))
    return events


def started_event(task: Task, worker: WorkerIdentity, started_at: str) -> dict[str, Any]:
    """`in_progress`: an attempt begins (a review resumed is not a new attempt)."""
    return build_event(
        task.id,
        worker.worker_id,
        Status.IN_PROGRESS,
        started_at=started_at,
        mode=task.effective_mode,
        attempt=task.attempts,
        claimed_at=task.lease.claimed_at if task.lease else None,
        host=worker.host,
    )
