"""The internal execution token shared by the worker and the execution API."""

from __future__ import annotations

import secrets

from swarm_runtime.errors import StateFileError
from swarm_runtime.settings import Settings
from swarm_runtime.store.private import read_secret
from swarm_runtime.store.state_files import Workspace, create_secret_file


def resolve_token(settings: Settings, workspace: Workspace) -> str:
    """SWARM_INTERNAL_TOKEN if set, else the workspace's token file, created once.

    Creation is exclusive, so a worker and an API started together end up with the
    same token whichever of them wins the race. A token file that is a link, not ours,
    or readable by others is refused (UnsafeStateError), never used."""
    if settings.internal_token and settings.internal_token.get_secret_value().strip():
        return settings.internal_token.get_secret_value().strip()
    workspace.ensure_layout()
    try:
        token = read_secret(workspace.token_path)
    except FileNotFoundError:
        create_secret_file(workspace.token_path, secrets.token_urlsafe(48))
        token = read_secret(workspace.token_path)
    if not token:
        raise StateFileError(workspace.token_path, ["token file is empty; delete it to regenerate"])
    return token
