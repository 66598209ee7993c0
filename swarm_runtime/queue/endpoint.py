"""Where a host's workers find its API.

With queue.json the queue names the API (`api_endpoint`), since a workspace is one host.
A database's queue is shared by every host, and each host runs its own API on its own
loopback, so there the API records where it listens in its own workspace
(`.swarm/api_endpoint.json`), where that host's worker, panel and CLI look first.
`SWARM_API_PORT`, when set, overrides both (`worker.loop.configured_endpoint`).
"""

from __future__ import annotations

from pydantic import ValidationError

from swarm_runtime.contract import API_ENDPOINT_FILE, QUEUE_FILE, STATE_DIR, ApiEndpointRecord
from swarm_runtime.errors import StateFileError
from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace, atomic_write_json, read_json


def record_endpoint(settings: Settings, workspace: Workspace, queue: TaskQueue, url: str) -> None:
    """Say where this host's API listens, where this host's processes will look."""
    if settings.database_url is None:
        queue.set_api_endpoint(url)
        return
    atomic_write_json(workspace.api_endpoint_path, ApiEndpointRecord(url=url).model_dump())


def endpoint_for(settings: Settings, workspace: Workspace, named_by_queue: str) -> str:
    """This host's API: its own record when the queue is shared, else the queue's name
    for it. A record that cannot be read is the queue's name, never a guess."""
    return endpoint_and_source(settings, workspace, named_by_queue)[0]


def endpoint_and_source(
    settings: Settings, workspace: Workspace, named_by_queue: str
) -> tuple[str, str]:
    """`endpoint_for`, and where it was read, for a process's start-up line."""
    recorded = host_record(workspace) if settings.database_url is not None else None
    if recorded is None:
        return named_by_queue, QUEUE_FILE
    return recorded, f"{STATE_DIR}/{API_ENDPOINT_FILE}"


def host_record(workspace: Workspace) -> str | None:
    try:
        raw = read_json(workspace.api_endpoint_path, default=lambda: None)
        return ApiEndpointRecord.model_validate(raw).url if raw is not None else None
    except (StateFileError, ValidationError):
        return None
