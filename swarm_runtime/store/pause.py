"""The kill switch in `.swarm/`: while it is on, workers claim nothing new.

A file rather than a signal, so it survives restarts, works for every worker at
once, and the control panel can show who paused the runtime and when. A worker
checks it before each claim and always finishes the task in hand.
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from swarm_runtime.contract import describe_validation_error, utc_now
from swarm_runtime.errors import StateFileError
from swarm_runtime.store.documents import FileDocument, SharedDocument
from swarm_runtime.store.state_files import Workspace


class PauseState(BaseModel):
    paused: bool = False
    reason: str | None = None
    by: str | None = None
    since: str | None = None


def switch(source: Workspace | SharedDocument) -> SharedDocument:
    """The switch of a workspace (its file), or the shared document given."""
    if isinstance(source, Workspace):
        return FileDocument(source, source.pause_path)
    return source


def read_pause(source: Workspace | SharedDocument) -> PauseState:
    """A missing switch means running; a broken one is reported, never guessed."""
    document = switch(source)
    raw = document.read(dict)
    try:
        return PauseState.model_validate(raw)
    except ValidationError as exc:
        problems = [describe_validation_error(e) for e in exc.errors()]
        raise StateFileError(document.path, problems) from None


def set_pause(
    source: Workspace | SharedDocument, paused: bool, *, by: str, reason: str | None = None
) -> PauseState:
    state = PauseState(paused=paused, reason=reason, by=by, since=utc_now().isoformat())
    switch(source).write(state.model_dump(mode="json"))
    return state
