"""Which store holds the queue: PostgreSQL when SWARM_DATABASE_URL names a database,
else queue.json in the workspace. Every process builds its store here, so the worker,
the API, the panel and the operator commands always agree."""

from __future__ import annotations

from collections.abc import Mapping

from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.queue.store import QueueStore
from swarm_runtime.queue.transition_events import Applier
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace


def store_for(
    settings: Settings,
    workspace: Workspace,
    *,
    worker: bool = False,
    appliers: Mapping[str, Applier] | None = None,
) -> TaskQueue:
    """The database store is imported only when asked for: a file-only install never
    needs its driver. A worker's store lets queue.json trail its journal by a second;
    `appliers` redo what the journal vouches for after a machine crash (`queue.store`)."""
    if settings.database_url is None:
        return QueueStore.for_settings(
            workspace, settings, keep_current=not worker, appliers=appliers
        )
    from swarm_runtime.queue.postgres import PostgresQueueStore

    return PostgresQueueStore.for_settings(settings, workspace)
