"""quality_gate_queue.json: one change per reviewed task, carrying the critic's vote.

Every worker writes here, so each record is a read-modify-write under the file's lock
and lands atomically. A re-review after a requeue updates the same change in place. A
file that does not match the schema is reported with its path and the field at fault and
left exactly as it is: an operator's QA history is never reset to empty.

A file the design's reference implementation wrote (version "1.0") is read as it is:
its changes carry a `blind_vote` instead of our `vote`, and its ballots, `vote_outbox`
and QA-flow keys are kept, so recording a vote here loses none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from swarm_runtime.contract import (
    ChangeStatus,
    QualityGateFields,
    QualityGateStatus,
    Status,
    Verdict,
    describe_validation_error,
    iso,
    utc_now,
)
from swarm_runtime.errors import StateFileError, SwarmError
from swarm_runtime.phases.critic import Review
from swarm_runtime.queue.transition_events import Effect, EffectResult, Outstanding
from swarm_runtime.store.documents import FileDocument, SharedDocument
from swarm_runtime.store.events import cap_text
from swarm_runtime.store.state_files import Workspace

log = logging.getLogger(__name__)

TITLE_CHARS = 240
DESCRIPTION_BYTES = 2_000
GateDecision = Literal[Status.APPROVED, QualityGateStatus.REJECTED]
# The name under which a queue transaction vouches for a vote (`queue.transition_events`).
GATE_APPLIER = "quality_gate"


class Vote(BaseModel):
    model_config = ConfigDict(extra="allow")

    decision: GateDecision
    verdict: Verdict
    confidence: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    issues: list[str] = Field(default_factory=list)
    attempt: int = Field(ge=0)
    voted_at: str


class Change(BaseModel):
    """Unknown keys are kept, so a QA tool may annotate a change without losing it. A change
    the reference implementation wrote has no `vote` or `updated_at` of ours, and its id is
    whatever task id it was given: it is kept, never renamed."""

    model_config = ConfigDict(extra="allow")

    change_id: str = Field(min_length=1)
    title: str
    description: str = ""
    author_id: str
    created_at: str
    updated_at: str | None = None
    status: ChangeStatus
    vote: Vote | None = None


class GateDocument(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: Literal[1, "1.0"] = 1
    created_at: str
    updated_at: str
    changes: dict[str, Change] = Field(default_factory=dict)

    @field_validator("changes")
    @classmethod
    def _keyed_by_change_id(cls, changes: dict[str, Change]) -> dict[str, Change]:
        for key, change in changes.items():
            if key != change.change_id:
                raise ValueError(f"the key {key!r} holds change_id {change.change_id!r}")
        return changes


class QualityGate:
    def __init__(self, workspace: Workspace, document: SharedDocument | None = None):
        """`document` is where the gate lives: the workspace's file unless given."""
        self.workspace = workspace
        self.document = gate_document(document or workspace)
        self.path = self.document.path
        self._valid = ValidChanges(self.path)

    def record(
        self,
        task_id: str,
        task_text: str,
        author_id: str,
        review: Review,
        rejections: int,
        *,
        now: datetime | None = None,
        outstanding: Sequence[Any] | None = None,
    ) -> QualityGateFields:
        """Cast the critic's vote on the task's change, creating the change on first review.

        With `outstanding` (the changes the queue journal holds for this file and it does
        not yet), the change is only made, not written: the journal's record of the
        transition commits it, and its fold writes it (`queue.transition_events`)."""
        moment = iso(now or utc_now())
        vote = Vote(
            decision=decision_for(review),
            verdict=review.verdict,
            confidence=review.confidence,
            issues=list(review.issues),
            attempt=rejections,
            voted_at=moment,
        )

        def voted(raw: Any, pending: Sequence[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
            """The document's valid changes, and the task's change with the vote cast."""
            changes = self._valid.changes_of(raw)
            latest = latest_change(pending, task_id) or changes.get(task_id)
            earlier = None if latest is None else Change.model_validate(latest)
            change = _changed(earlier, task_id, task_text, author_id, vote)
            return changes, self._valid.written(task_id, change)

        def mutate(raw: Any) -> tuple[dict[str, Any], QualityGateFields]:
            changes, entry = voted(raw, ())
            document = {**raw, "changes": {**changes, task_id: entry}, "updated_at": moment}
            return document, fields_for(task_id, vote)

        if outstanding is None:
            return self.document.update(mutate, lambda: _empty(moment))
        voted(self.document.peek(lambda: _empty(moment)), outstanding)
        return fields_for(task_id, vote)

    def vote(
        self, task_id: str, task_text: str, author_id: str, review: Review, rejections: int
    ) -> Effect:
        """`record` as an effect of the review's transition: it adds the gate's fields to
        the verdict's event and vouches for the change it made. A failure becomes the
        event's quality_gate_error, not a crash."""

        def effect(outstanding: Outstanding | None) -> EffectResult:
            pending = None if outstanding is None else outstanding.get(GATE_APPLIER, ())
            try:
                fields = self.record(
                    task_id, task_text, author_id, review, rejections, outstanding=pending
                )
            except (SwarmError, OSError) as exc:
                log.error("quality gate could not record task %s: %s", task_id, exc)
                return EffectResult(gate_error_fields(review, exc))
            vouch = (GATE_APPLIER, self._valid.last_written(task_id))
            return EffectResult(fields.model_dump(mode="json"), vouch)

        return effect

    def apply(self, payloads: Sequence[Any]) -> None:
        """Write the vouched changes, in order, with one write; none if the gate holds
        them all already (`queue.store`'s fold)."""
        changes = [Change.model_validate(payload) for payload in payloads]
        if not changes:
            return
        moment = max(change.updated_at or change.created_at for change in changes)

        def mutate(raw: Any) -> tuple[dict[str, Any] | None, None]:
            held = self._valid.changes_of(raw)
            entries = {c.change_id: c.model_dump(mode="json") for c in changes}
            if all(held.get(change_id) == entry for change_id, entry in entries.items()):
                return None, None
            for change_id, entry in entries.items():
                self._valid.remember(change_id, entry)
            document = {**raw, "changes": {**held, **entries}, "updated_at": moment}
            return document, None

        self.document.update(mutate, lambda: _empty(moment))


def gate_error_fields(review: Review, exc: Exception) -> dict[str, Any]:
    """The event's quality_gate_* fields when the vote could not be recorded."""
    return QualityGateFields(
        quality_gate_status=QualityGateStatus.ERROR,
        quality_gate_decision=decision_for(review),
        quality_gate_error=str(exc),
    ).model_dump(mode="json")


class ValidChanges:
    """The changes of one gate document as last validated (their JSON, by id). A review
    validates the whole document, which only grows, a change per reviewed task; a change
    whose JSON is the same as when it was last validated or written is not validated
    again. (Validating every change on every review was over a third of a worker's CPU
    at 300 reviewed tasks.) Untouched changes are written back exactly as read."""

    def __init__(self, path: Path):
        self.path = path
        self._known: dict[str, Any] = {}
        # The document validated last, itself: a file's document is shared, never changed
        # (`FileDocument.peek`), so the same object is valid still.
        self._checked: Any = None

    def changes_of(self, raw: Any) -> dict[str, Any]:
        """`raw`'s changes, every one of them valid; a fault raises StateFileError naming
        its place, as validating the whole document would."""
        if raw is self._checked:
            checked: dict[str, Any] = raw["changes"]
            return checked
        changes = raw.get("changes", {}) if isinstance(raw, dict) else None
        if not isinstance(changes, dict):
            parse_document(raw, self.path)
            raise StateFileError(self.path, ["changes: must be an object"])
        parse_document({**raw, "changes": {}}, self.path)
        for change_id, entry in changes.items():
            if self._known.get(change_id) != entry:
                parse_document({**raw, "changes": {change_id: entry}}, self.path)
                self._known[change_id] = entry
        self._checked = raw if "changes" in raw else None
        return changes

    def written(self, change_id: str, change: Change) -> dict[str, Any]:
        entry: dict[str, Any] = change.model_dump(mode="json")
        self._known[change_id] = entry
        return entry

    def remember(self, change_id: str, entry: dict[str, Any]) -> None:
        """`entry` is a valid change's JSON: not to be validated again."""
        self._known[change_id] = entry

    def last_written(self, change_id: str) -> dict[str, Any]:
        """The change's JSON as this gate last wrote it."""
        entry: dict[str, Any] = self._known[change_id]
        return entry


def latest_change(outstanding: Sequence[Any], change_id: str) -> Any:
    """The newest of the outstanding changes with this id, if any."""
    return next((c for c in reversed(outstanding) if c.get("change_id") == change_id), None)


def decision_for(review: Review) -> GateDecision:
    return Status.APPROVED if review.accepted else QualityGateStatus.REJECTED


def fields_for(change_id: str, vote: Vote) -> QualityGateFields:
    return QualityGateFields(
        quality_gate_status=status_after(vote),
        quality_gate_decision=vote.decision,
        quality_gate_change_id=change_id,
    )


def status_after(vote: Vote) -> QualityGateStatus:
    approved = vote.decision == Status.APPROVED
    return QualityGateStatus.NEEDS_QA if approved else QualityGateStatus.REJECTED


def _changed(
    existing: Change | None, task_id: str, task_text: str, author_id: str, vote: Vote
) -> Change:
    """A new change, or the existing one with the new vote; created_at is kept, and so are
    keys we do not model. A change the reference implementation submitted (it has a
    blind_vote) also keeps the title, description and author it was given."""
    updates: dict[str, Any] = {
        "updated_at": vote.voted_at,
        "status": ChangeStatus(status_after(vote)),
        "vote": vote,
    }
    if existing is None or "blind_vote" not in (existing.model_extra or {}):
        updates |= {
            "title": title_of(task_text, task_id),
            "description": cap_text(task_text, DESCRIPTION_BYTES),
            "author_id": author_id,
        }
    if existing is not None:
        return existing.model_copy(update=updates)
    return Change(change_id=task_id, created_at=vote.voted_at, **updates)


def title_of(task_text: str, task_id: str) -> str:
    first_line = next((line.strip() for line in task_text.splitlines() if line.strip()), "")
    return (first_line or f"Task {task_id}")[:TITLE_CHARS]


def parse_document(raw: Any, path: Path) -> GateDocument:
    """Validate the file; a broken one raises instead of being replaced by an empty one."""
    if not isinstance(raw, dict):
        raise StateFileError(path, ["the document must be a JSON object"])
    try:
        return GateDocument.model_validate(raw)
    except ValidationError as exc:
        problems = [describe_validation_error(error) for error in exc.errors()]
        raise StateFileError(path, problems) from None


def gate_document(source: Workspace | SharedDocument) -> SharedDocument:
    if isinstance(source, Workspace):
        return FileDocument(source, source.quality_gate_path)
    return source


def load(source: Workspace | SharedDocument) -> GateDocument:
    """The gate as it is now, for readers such as the control panel; missing means empty."""
    moment = iso(utc_now())
    document = gate_document(source)
    return parse_document(document.read(lambda: _empty(moment)), document.path)


def _empty(moment: str | None) -> dict[str, Any]:
    return {"version": 1, "created_at": moment, "updated_at": moment, "changes": {}}
