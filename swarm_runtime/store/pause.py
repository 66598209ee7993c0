"""The kill switch in `.swarm/`: while it is on, workers claim nothing new.

A file rather than a signal, so it survives restarts, works for every worker at
once, and the control panel can show who paused the runtime and when. A worker
checks it before each claim and always finishes the task in hand.

One switch holds the whole fleet's pause and, under `hosts`, each paused host's, so
an operator can stop one machine of many sharing a database; a worker is paused when
either covers it. A switch written before hosts existed reads as no host paused.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError

from swarm_runtime.contract import describe_validation_error, utc_now
from swarm_runtime.errors import StateFileError
from swarm_runtime.store.documents import FileDocument, SharedDocument
from swarm_runtime.store.state_files import Workspace


class HostPause(BaseModel):
    paused: bool = False
    reason: str | None = None
    by: str | None = None
    since: str | None = None


class PauseState(HostPause):
    """The fleet's pause in the top-level fields, each paused host's under `hosts`."""

    hosts: dict[str, HostPause] = Field(default_factory=dict)

    def covering(self, host: str) -> HostPause | None:
        """The pause that stops a worker on `host`: the fleet's first, else the host's own."""
        if self.paused:
            return self
        own = self.hosts.get(host)
        return own if own is not None and own.paused else None

    def paused_hosts(self) -> list[str]:
        return sorted(name for name, entry in self.hosts.items() if entry.paused)


def pause_message(state: PauseState, host: str) -> str | None:
    """What a worker on `host` says while paused, naming whether its host or the fleet is."""
    entry = state.covering(host)
    if entry is None:
        return None
    who = entry.by or "an operator"
    reason = f": {entry.reason}" if entry.reason else ""
    if entry is state:
        return f"paused by {who} for every host{reason}"
    return f"host {host!r} paused by {who}{reason}"


def switch(source: Workspace | SharedDocument) -> SharedDocument:
    """The switch of a workspace (its file), or the shared document given."""
    if isinstance(source, Workspace):
        return FileDocument(source, source.pause_path)
    return source


def read_pause(source: Workspace | SharedDocument) -> PauseState:
    """A missing switch means running; a broken one is reported, never guessed."""
    document = switch(source)
    return parsed(document.read(dict), document)


def parsed(raw: Any, document: SharedDocument) -> PauseState:
    try:
        return PauseState.model_validate(raw)
    except ValidationError as exc:
        problems = [describe_validation_error(e) for e in exc.errors()]
        raise StateFileError(document.path, problems) from None


def set_pause(
    source: Workspace | SharedDocument,
    paused: bool,
    *,
    by: str,
    reason: str | None = None,
    host: str | None = None,
) -> PauseState:
    """Pause or resume the fleet (`host` None) or one host, keeping every other entry:
    the change is one read-modify-write under the document's own lock."""
    document = switch(source)
    entry = HostPause(paused=paused, reason=reason, by=by, since=utc_now().isoformat())
    if host is not None:
        return document.update(lambda raw: changed(parsed(raw, document), host, entry), dict)
    try:
        return document.update(lambda raw: changed(parsed(raw, document), None, entry), dict)
    except StateFileError:
        # The fleet's switch must work over a broken document: it is replaced, as before
        # hosts existed (the hosts' entries it held were unreadable anyway).
        state = PauseState(**entry.model_dump())
        document.write(state.model_dump(mode="json"))
        return state


def changed(
    state: PauseState, host: str | None, entry: HostPause
) -> tuple[dict[str, Any], PauseState]:
    """The state with `entry` as the fleet's or `host`'s; a resumed host leaves no entry."""
    if host is None:
        new = PauseState(**entry.model_dump(), hosts=state.hosts)
    else:
        hosts = {name: e for name, e in state.hosts.items() if name != host}
        if entry.paused:
            hosts[host] = entry
        new = state.model_copy(update={"hosts": dict(sorted(hosts.items()))})
    return new.model_dump(mode="json"), new
