"""How the panel says no: every refusal is a JSON ErrorBody, never an HTML page.

A handler raises `HttpError` (the error both servers answer with) anywhere; the
runtime's own errors (a missing task, a transition that does not apply, a state file
that cannot be used) become the status code an operator's request earns, with the
runtime's explanation.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, Response

from swarm_runtime.errors import (
    DuplicateTaskError,
    InvalidTransition,
    StateFileError,
    StoreUnavailable,
    SwarmError,
    UnknownTaskError,
)
from swarm_runtime.store.state_files import Workspace
from swarm_runtime.web.json_errors import HttpError, install_json_fallbacks, json_error

log = logging.getLogger("control_panel")


def refusal(exc: SwarmError, workspace: Workspace) -> HttpError:
    """The status code an operator's request earns, with the runtime's own explanation."""
    if isinstance(exc, UnknownTaskError):
        return HttpError(404, str(exc), field="id")
    if isinstance(exc, InvalidTransition | DuplicateTaskError):
        field = "id" if isinstance(exc, DuplicateTaskError) else None
        return HttpError(409, str(exc), field=field)
    if isinstance(exc, StoreUnavailable):
        return HttpError(503, unreachable_text(exc))
    if isinstance(exc, StateFileError):
        name = shown_path(exc.path, workspace)
        problems = "; ".join(exc.problems)
        return HttpError(
            503, f"{name} cannot be used and was left as it is: {problems}", field=name
        )
    return HttpError(500, str(exc))


def unreachable_text(exc: StoreUnavailable) -> str:
    return f"the queue's store is unreachable: {exc}"


def shown_path(path: Path, workspace: Workspace) -> str:
    """A state file as the operator knows it: relative to the workspace, never absolute."""
    try:
        return str(path.resolve().relative_to(workspace.root))
    except ValueError:
        return path.name


def install_error_handlers(app: Flask, workspace: Workspace) -> None:
    install_json_fallbacks(app, log)

    @app.errorhandler(SwarmError)
    def swarm_error(exc: SwarmError) -> Response:
        error = refusal(exc, workspace)
        return json_error(error.status, error.body)
