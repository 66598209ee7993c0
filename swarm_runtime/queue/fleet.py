"""The fleet: every host that shares this runtime, its workers and what they hold, and
why a task pinned to a host or to labels waits.

Many hosts may share one database; an operator on any of them sees them all here, from
the workers' presence, the queue's leases and the pause switch. `fleet_of` and
`waiting_for` are plain functions of those values, so the panel, `/status` and the
command line show the same rows; `read_fleet` is the thin shell that reads them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from swarm_runtime.contract import CLAIMABLE_STATUSES, Task, WorkerPresence, placement_refusal
from swarm_runtime.errors import StateFileError, StoreUnavailable
from swarm_runtime.queue.presence import live_workers
from swarm_runtime.queue.store import lease_is_live
from swarm_runtime.store.documents import SharedDocument
from swarm_runtime.store.pause import HostPause, PauseState, read_pause
from swarm_runtime.store.state_files import Workspace

if TYPE_CHECKING:
    from swarm_runtime.store.database import Database

WorkerState = Literal["idle", "busy", "paused"]
PauseScope = Literal["fleet", "host"]


class FleetWorker(BaseModel):
    """A live worker. `busy` holds a task (and finishes it even when paused), `paused`
    claims nothing new, `idle` waits for work."""

    worker_id: str
    host: str
    pid: int
    labels: list[str]
    state: WorkerState
    task_id: str | None
    paused: bool
    last_seen: str | None


class FleetHost(BaseModel):
    host: str
    workers: list[FleetWorker]
    running: int  # tasks whose lease a live worker of this host holds
    pinned_waiting: int  # claimable tasks pinned to this host
    paused: bool  # by its own pause or the fleet's
    pause: HostPause | None  # the pause that covers it, when one does
    pause_scope: PauseScope | None  # whether that pause is the fleet's or the host's own


class Fleet(BaseModel):
    paused: bool  # every host, by the fleet's pause (or a switch that cannot be read)
    pause: PauseState | None
    pause_error: str | None
    hosts: list[FleetHost]


def fleet_of(
    present: list[WorkerPresence],
    tasks: list[Task],
    pause: PauseState | None,
    now: float,
    pause_error: str | None = None,
) -> Fleet:
    """One row per host that has a live worker, a running or pinned task, or a pause.
    `pause` None means the switch is unreadable: workers claim nothing, so all is paused."""
    held = {t.lease.worker_id: t for t in tasks if lease_is_live(t.lease, now)}
    workers = [fleet_worker(p, held.get(p.worker_id), pause) for p in present]
    announced = {p.worker_id for p in present}
    workers += [lease_holder(t, pause) for w, t in held.items() if w not in announced]
    pinned = [t.host for t in tasks if t.host and t.status in CLAIMABLE_STATUSES]
    names = {w.host for w in workers} | set(pinned)
    names |= set(pause.paused_hosts() if pause else [])
    rows = [
        fleet_host(name, workers, held.values(), pinned.count(name), pause)
        for name in sorted(names)
    ]
    return Fleet(
        paused=pause is None or pause.paused, pause=pause, pause_error=pause_error, hosts=rows
    )


def covering(pause: PauseState | None, host: str) -> HostPause | None:
    if pause is None:
        return HostPause(paused=True, reason="the pause switch cannot be read")
    return pause.covering(host)


def fleet_worker(
    presence: WorkerPresence, task: Task | None, pause: PauseState | None
) -> FleetWorker:
    paused = presence.paused or covering(pause, presence.host) is not None
    return FleetWorker(
        worker_id=presence.worker_id,
        host=presence.host,
        pid=presence.pid,
        labels=presence.labels,
        state=worker_state(task, paused),
        task_id=task.id if task else None,
        paused=paused,
        last_seen=datetime.fromtimestamp(presence.last_seen, UTC).isoformat(),
    )


def lease_holder(task: Task, pause: PauseState | None) -> FleetWorker:
    """A worker known only by the lease it renews (its presence missing): alive and busy."""
    assert task.lease is not None
    lease = task.lease
    return FleetWorker(
        worker_id=lease.worker_id,
        host=lease.host,
        pid=lease.pid,
        labels=[],
        state="busy",
        task_id=task.id,
        paused=covering(pause, lease.host) is not None,
        last_seen=None,
    )


def worker_state(task: Task | None, paused: bool) -> WorkerState:
    if task is not None:
        return "busy"
    return "paused" if paused else "idle"


def fleet_host(
    name: str,
    workers: list[FleetWorker],
    running: Iterable[Task],
    pinned_waiting: int,
    pause: PauseState | None,
) -> FleetHost:
    entry = covering(pause, name)
    scope: PauseScope = "host" if pause is not None and entry is not pause else "fleet"
    return FleetHost(
        host=name,
        workers=sorted((w for w in workers if w.host == name), key=lambda w: w.worker_id),
        running=sum(1 for t in running if t.lease is not None and t.lease.host == name),
        pinned_waiting=pinned_waiting,
        paused=entry is not None,
        pause=HostPause.model_validate(entry.model_dump(exclude={"hosts"})) if entry else None,
        pause_scope=scope if entry else None,
    )


# --- why a task waits -----------------------------------------------------------------


def waiting_for(task: Task, present: list[WorkerPresence], pause: PauseState | None) -> str | None:
    """Why a claimable task pinned to a host or to labels has no live worker that will take
    it, in the operator's terms; None when one may (or when nothing pins it)."""
    if task.status not in CLAIMABLE_STATUSES or (task.host is None and not task.worker_labels):
        return None
    fit = [p for p in present if placement_refusal(task, p.host, p.labels) is None]
    if not fit:
        return f"waiting for {wanted_worker(task)}{absence(task, present)}"
    if pause is None or pause.paused:
        return None  # every task waits alike: the header says so, not each row
    stopped = sorted({p.host for p in fit if pause.covering(p.host) is not None})
    if len(stopped) < len({p.host for p in fit}):
        return None
    return f"waiting for {wanted_worker(task)} ({hosts_named(stopped)} paused)"


def wanted_worker(task: Task) -> str:
    where = f" on host {task.host!r}" if task.host else ""
    labels = task.worker_labels
    if not labels:
        return f"a worker{where}"
    plural = "s" if len(labels) > 1 else ""
    return f"a worker{where} serving label{plural} " + ", ".join(map(repr, labels))


def absence(task: Task, present: list[WorkerPresence]) -> str:
    """What the live workers lack: none on the host at all, or not the labels."""
    if task.host is None:
        return "" if present else " (no worker alive)"
    on_host = sum(1 for p in present if p.host == task.host)
    if not on_host:
        return " (none alive)"
    if on_host == 1:
        return " (its one live worker does not serve it)"
    return f" (none of its {on_host} live workers serves it)"


def hosts_named(hosts: list[str]) -> str:
    return ("host " if len(hosts) == 1 else "hosts ") + ", ".join(map(repr, hosts))


def task_host(task: Task) -> str | None:
    """Where a task runs or will run: its pin, else the host holding its lease, else the
    host of its last execution when the record says."""
    if task.host:
        return task.host
    if task.lease:
        return task.lease.host
    return task.execution.host if task.execution else None


# --- the shell ------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """What says whether a pinned task can run now: the live workers and the pause."""

    present: list[WorkerPresence]
    pause: PauseState | None
    pause_error: str | None = None

    def waiting_for(self, task: Task) -> str | None:
        return waiting_for(task, self.present, self.pause)

    def fleet(self, tasks: list[Task], now: float) -> Fleet:
        return fleet_of(self.present, tasks, self.pause, now, self.pause_error)


def read_placement(
    workspace: Workspace,
    database: Database | None,
    pause_source: Workspace | SharedDocument,
    now: float,
) -> Placement:
    present = live_workers(workspace, now, database)
    return Placement(present, *read_pause_or_error(pause_source))


def read_pause_or_error(
    source: Workspace | SharedDocument,
) -> tuple[PauseState | None, str | None]:
    """The switch, or None and why it cannot be read (workers then claim nothing)."""
    try:
        return read_pause(source), None
    except (StateFileError, StoreUnavailable) as exc:
        return None, f"{exc}; workers claim nothing while it is unreadable"
