"""Who holds a lease, and whether that holder is still there.

A lease names its worker, process and host; a holder on this host whose process is gone
(or whose pid now belongs to a younger process) has lost it before it expires. A holder
on another host is trusted until its lease expires.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import TypeGuard

from swarm_runtime.contract import Lease, Task, placement_refusal
from swarm_runtime.processes import process_exists
from swarm_runtime.queue.state import holds_lease
from swarm_runtime.settings import this_host

# Read once, as the process's pid is: the name this process's leases and presence carry.
HOST = this_host()


@dataclass(frozen=True)
class WorkerIdentity:
    worker_id: str
    pid: int = field(default_factory=os.getpid)
    host: str = HOST
    labels: frozenset[str] = frozenset()

    def may_run(self, task: Task) -> bool:
        return placement_refusal(task, self.host, self.labels) is None

    @cached_property
    def pid_started(self) -> float | None:
        """Read once: a process's start time never changes (a claim used to read /proc)."""
        return started_once(self.pid) if self.pid == os.getpid() else process_start_time(self.pid)


def process_start_time(pid: int) -> float | None:
    """The kernel's start time of `pid` (clock ticks), to tell a live holder from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", errors="replace")
    except OSError:
        return None
    try:
        return float(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


@cache
def started_once(pid: int) -> float | None:
    """This process's start time (`pid` is its own, a child's after a fork): read once."""
    return process_start_time(pid)


def holder_is_alive(lease: Lease, host: str = HOST) -> bool:
    """False only when we can prove the holder is gone: same host and no such process.

    A lease naming this process's pid is looked up without a system call: the process
    is alive, and its start time, read once, tells its own leases from those of an
    earlier process that had the same pid. Every transaction looks at the leases of the
    tasks in flight, its own among them, and /proc cost each look an open and a read."""
    if lease.host != host:
        return True
    if lease.pid == os.getpid():
        started = started_once(lease.pid)
    elif process_exists(lease.pid):
        started = process_start_time(lease.pid)
    else:
        return False
    return not (lease.pid_started and started and started != lease.pid_started)


def lease_is_live(lease: Lease | None, now: float) -> TypeGuard[Lease]:
    return lease is not None and lease.expires_at > now and holder_is_alive(lease)


def owned_by(task: Task, worker: WorkerIdentity) -> bool:
    lease = task.lease
    return (
        holds_lease(task)
        and lease is not None
        and (lease.worker_id, lease.pid, lease.host) == (worker.worker_id, worker.pid, worker.host)
    )


def another_at_work(tasks: Iterable[Task], worker: WorkerIdentity, now: float) -> bool:
    """Whether a worker other than `worker` holds a live lease on one of `tasks`."""
    return any(lease_is_live(task.lease, now) and not owned_by(task, worker) for task in tasks)
