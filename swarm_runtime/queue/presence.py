"""Workers say they are alive in `.swarm/workers/<id>.json`, so an idle one is visible.

A worker holding a lease is visible through queue.json; one waiting for work holds
nothing. Each writes its own small file (no shared lock, no contention) every few
seconds and removes it on a clean exit; a reader trusts a file only while it is fresh
and, on this host, while its process exists.
"""

from __future__ import annotations

import contextlib
import json
import time

from pydantic import ValidationError

from swarm_runtime.contract import Lease, WorkerPresence, utc_now
from swarm_runtime.queue.store import WorkerIdentity, holder_is_alive
from swarm_runtime.store.state_files import Workspace, atomic_write_json

ANNOUNCE_EVERY_SECONDS = 5.0
FRESH_FOR_SECONDS = 30.0


class PresenceBeacon:
    def __init__(self, workspace: Workspace, identity: WorkerIdentity):
        self._path = workspace.workers_dir / f"{identity.worker_id}.json"
        self._presence = WorkerPresence(
            worker_id=identity.worker_id,
            pid=identity.pid,
            host=identity.host,
            started_at=utc_now().isoformat(),
            last_seen=0.0,
        )
        workspace.workers_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def announce(self, *, paused: bool, now: float | None = None) -> None:
        """Rewrite the file when it is due or the paused state changed."""
        now = time.time() if now is None else now
        due = now - self._presence.last_seen >= ANNOUNCE_EVERY_SECONDS
        if not due and paused == self._presence.paused:
            return
        self._presence = self._presence.model_copy(update={"last_seen": now, "paused": paused})
        atomic_write_json(self._path, self._presence.model_dump(mode="json"))

    def withdraw(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


def live_workers(workspace: Workspace, now: float | None = None) -> list[WorkerPresence]:
    """Workers whose file is fresh and whose process still exists (when on this host)."""
    now = time.time() if now is None else now
    found = []
    for path in sorted(workspace.workers_dir.glob("*.json")):
        try:
            presence = WorkerPresence.model_validate(json.loads(path.read_text("utf-8")))
        except (OSError, ValueError, ValidationError):
            continue
        if now - presence.last_seen <= FRESH_FOR_SECONDS and _process_exists(presence):
            found.append(presence)
    return found


def _process_exists(presence: WorkerPresence) -> bool:
    lease = Lease(
        worker_id=presence.worker_id,
        pid=presence.pid,
        host=presence.host,
        claimed_at=presence.last_seen,
        expires_at=presence.last_seen,
    )
    return holder_is_alive(lease)
