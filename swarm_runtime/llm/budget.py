"""The global LLM budget, kept on disk so it survives restarts and binds every process.

A call first *reserves* its worst-case cost under the ledger's file lock, and only
then talks to the provider; afterwards it *settles* the real cost or is *refunded*.
Because the check and the reservation happen in one locked read-modify-write, any
number of threads and processes together can never commit more than the limit. The
same write checks the task's own `max_budget` against what that task has spent and holds.

A hold left by a process that died is closed by the next reservation. If its request may
have reached the provider (`sent`), the outcome is unknown and the provider may have
billed it, so the hold is charged in full; only a hold that was never sent is released.

Every charge is also counted for its model (`models`), in the same write: the ledger is
the one record every host's API writes, so it is where the fleet's spend by model is
counted once. A ledger written before `models` existed reads as having none; its earlier
spend stays in `spent` only.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarm_runtime.contract import describe_validation_error, utc_now
from swarm_runtime.errors import (
    BudgetError,
    GlobalBudgetExceeded,
    StateFileError,
    StoreUnavailable,
    SwarmError,
    TaskBudgetExceeded,
)
from swarm_runtime.llm.bounds import admits
from swarm_runtime.processes import process_exists
from swarm_runtime.store.documents import FileDocument, SharedDocument
from swarm_runtime.store.state_files import Workspace

log = logging.getLogger(__name__)

# Tasks whose spend the ledger remembers, the most recently charged kept: enough for a
# task's review and its retries to find its spend, few enough to rewrite on every call
# (each costs about 1.5 us of CPU on every write, mostly float parsing and printing). A
# task charged again after this many others starts its max_budget afresh.
TASK_SPEND_RETAIN = 256

Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]
# The model charged for a hold that names none (a reserve() without one), or is gone.
UNKNOWN_MODEL = "unknown"


class Reservation(BaseModel):
    amount: Amount
    task_id: str | None = None
    pid: int
    host: str | None = None
    created_at: str
    model: str | None = None
    # A hold written before this field existed may have been sent: the safe reading.
    sent: bool = True


class TaskSpend(BaseModel):
    """What each task has spent, the task charged last at the end. Nested one level so the
    ledger file holds it on one line, encoded at once: it is rewritten on every call."""

    model_config = ConfigDict(extra="forbid")

    spent: dict[str, Amount] = Field(default_factory=dict)


class ModelSpend(BaseModel):
    """One model's charged calls: answered ones at their real cost, and holds charged in
    full when the outcome was unknown. A refunded hold cost nothing and is not counted."""

    model_config = ConfigDict(extra="forbid")

    calls: int = Field(default=0, ge=0)
    spent: Amount = 0.0


class LedgerDocument(BaseModel):
    """budget_ledger.json: what was spent, and what calls in flight may still spend."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    spent: Amount = 0.0
    reservations: dict[str, Reservation] = Field(default_factory=dict)
    tasks: TaskSpend = Field(default_factory=TaskSpend)
    models: dict[str, ModelSpend] = Field(default_factory=dict)

    @property
    def reserved(self) -> float:
        return sum(r.amount for r in self.reservations.values())

    def task_exposure(self, task_id: str) -> tuple[float, float]:
        """What the task has spent, and what its calls in flight hold."""
        held = sum(r.amount for r in self.reservations.values() if r.task_id == task_id)
        return self.tasks.spent.get(task_id, 0.0), held

    def charge(self, held: Reservation | None, cost: float) -> None:
        """Real spend for one call, counted for its model and its task too (`held` is its
        hold, None if it is gone); the oldest task beyond the cap is forgotten."""
        self.spent += cost
        model = held.model if held is not None else None
        by_model = self.models.setdefault(model or UNKNOWN_MODEL, ModelSpend())
        by_model.calls += 1
        by_model.spent += cost
        task_id = held.task_id if held is not None else None
        if task_id is None:
            return
        spent = self.tasks.spent
        spent[task_id] = spent.pop(task_id, 0.0) + cost
        while len(spent) > TASK_SPEND_RETAIN:
            del spent[next(iter(spent))]


@dataclass(frozen=True)
class BudgetSnapshot:
    limit: float
    spent: float
    reserved: float
    models: Mapping[str, ModelSpend] = field(default_factory=dict)

    @property
    def remaining(self) -> float:
        return max(0.0, self.limit - self.spent - self.reserved)


@dataclass(frozen=True)
class UnsettledHold:
    """A dead process's hold whose call may have been billed, now charged in full."""

    reservation_id: str
    reservation: Reservation


@dataclass(frozen=True)
class Admission:
    """The outcome of one reservation: a hold id, or the refusal; and the dead holds
    charged on the way, which the caller audits either way."""

    reservation_id: str | None
    refusal: BudgetError | None
    unsettled: tuple[UnsettledHold, ...]

    def granted(self) -> str:
        """The hold's id; or the refusal, raised."""
        if self.refusal is not None:
            raise self.refusal
        assert self.reservation_id is not None, "an admission holds an id or a refusal"
        return self.reservation_id


def refusal(
    ledger: LedgerDocument,
    limit: float,
    amount: float,
    task_id: str | None,
    task_limit: float | None,
) -> BudgetError | None:
    """Why `amount` cannot be held now, checking the task's max_budget first."""
    if task_limit is not None and task_id is not None:
        spent, held = ledger.task_exposure(task_id)
        if not admits(spent, held, amount, task_limit):
            return TaskBudgetExceeded(task_id, spent + held + amount, task_limit)
    if not admits(ledger.spent, ledger.reserved, amount, limit):
        return GlobalBudgetExceeded(limit, ledger.spent, ledger.reserved, amount)
    return None


class BudgetLedger:
    def __init__(self, workspace: Workspace, limit: float, document: SharedDocument | None = None):
        """`document` is where the ledger lives: the workspace's file unless given."""
        if not (math.isfinite(limit) and limit >= 0):
            raise ValueError(f"budget limit must be a finite amount >= 0, not {limit!r}")
        self.workspace = workspace
        self.limit = float(limit)
        self.document = document or FileDocument(workspace, workspace.budget_ledger_path)
        self.path = self.document.path
        self._host = socket.gethostname()
        workspace.ensure_layout()

    def reserve(
        self, amount: float, *, task_id: str | None, task_limit: float | None = None
    ) -> str:
        """Hold `amount` against the limit, or raise the refusal holding nothing."""
        return self.admit(amount, task_id=task_id, task_limit=task_limit).granted()

    def admit(
        self,
        amount: float,
        *,
        task_id: str | None,
        task_limit: float | None = None,
        model: str | None = None,
        sent: bool = False,
    ) -> Admission:
        """One locked write: close dead holds, check both budgets, and hold `amount`.

        `sent` says the call goes to the provider right after this write, with nothing
        left that could stop it; recording that here spares a second durable write."""
        if not (math.isfinite(amount) and amount >= 0):
            raise ValueError(f"a reservation must be a finite amount >= 0, not {amount!r}")
        reservation_id = uuid.uuid4().hex
        held = Reservation(
            amount=amount,
            task_id=task_id,
            pid=os.getpid(),
            host=self._host,
            created_at=utc_now().isoformat(),
            model=model,
            sent=sent,
        )

        def mutate(raw: Any) -> tuple[dict[str, Any] | None, Admission]:
            ledger = self._parse(raw)
            unsettled, changed = self._close_orphans(ledger)
            refused = refusal(ledger, self.limit, amount, task_id, task_limit)
            if refused is not None:
                return (_dump(ledger) if changed else None), Admission(None, refused, unsettled)
            ledger.reservations[reservation_id] = held
            return _dump(ledger), Admission(reservation_id, None, unsettled)

        return self.document.update(mutate, _empty)

    def settle(self, reservation_id: str, actual_cost: float) -> None:
        """Turn a reservation into real spend; the spend counts even if the hold is gone,
        and counts in full when the provider reported more than the hold."""
        if not (math.isfinite(actual_cost) and actual_cost >= 0):
            raise ValueError(f"a cost must be a finite amount >= 0, not {actual_cost!r}")

        def mutate(raw: Any) -> tuple[dict[str, Any], None]:
            ledger = self._parse(raw)
            held = ledger.reservations.pop(reservation_id, None)
            if held is None:
                log.warning("settling unknown budget reservation %s", reservation_id)
            ledger.charge(held, actual_cost)
            return _dump(ledger), None

        self.document.update(mutate, _empty)

    def refund(self, reservation_id: str) -> None:
        """Give a reservation back untouched: the call it covered cost nothing."""

        def mutate(raw: Any) -> tuple[dict[str, Any] | None, None]:
            ledger = self._parse(raw)
            if ledger.reservations.pop(reservation_id, None) is None:
                return None, None
            return _dump(ledger), None

        self.document.update(mutate, _empty)

    def snapshot(self) -> BudgetSnapshot:
        ledger = self._parse(self.document.read(_empty))
        return BudgetSnapshot(self.limit, ledger.spent, ledger.reserved, ledger.models)

    def _parse(self, raw: Any) -> LedgerDocument:
        """Validate the file; a broken ledger stops spending instead of being reset to zero."""
        try:
            return LedgerDocument.model_validate(raw)
        except ValidationError as exc:
            problems = [describe_validation_error(error) for error in exc.errors()]
            raise StateFileError(self.path, problems) from None

    def _close_orphans(self, ledger: LedgerDocument) -> tuple[tuple[UnsettledHold, ...], bool]:
        """Close the holds of dead processes on this host, so a crash cannot pin budget
        forever: charge those whose call may have been billed, release the others."""
        orphans = [
            key
            for key, held in ledger.reservations.items()
            if held.host in (None, self._host) and not process_exists(held.pid)
        ]
        unsettled = []
        for key in orphans:
            held = ledger.reservations.pop(key)
            if held.sent:
                ledger.charge(held, held.amount)
                unsettled.append(UnsettledHold(key, held))
                log.warning("charged in full the hold %s of dead pid %s", key, held.pid)
            else:
                log.warning("released the unsent hold %s of dead pid %s", key, held.pid)
        return tuple(unsettled), bool(orphans)


def _empty() -> dict[str, Any]:
    return LedgerDocument().model_dump(mode="json")


def _dump(ledger: LedgerDocument) -> dict[str, Any]:
    return ledger.model_dump(mode="json")


def budget_view(
    ledger: BudgetLedger, describe: Callable[[SwarmError], str] = str
) -> dict[str, Any]:
    """The budget as the panel's header and the CLI's status show it; an unreadable
    ledger is shown as its error, described the way the caller's operator reads errors."""
    try:
        snapshot = ledger.snapshot()
    except (StateFileError, StoreUnavailable) as exc:
        return {"limit": ledger.limit, "error": describe(exc)}
    return {
        "limit": snapshot.limit,
        "spent": round(snapshot.spent, 6),
        "reserved": round(snapshot.reserved, 6),
        "remaining": round(snapshot.remaining, 6),
        "by_model": {
            model: {"calls": spend.calls, "spent": round(spend.spent, 6)}
            for model, spend in sorted(snapshot.models.items())
        },
        "error": None,
    }
