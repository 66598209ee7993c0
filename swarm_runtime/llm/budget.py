"""The global LLM budget, kept on disk so it survives restarts and binds every process.

A call first *reserves* its worst-case cost under the ledger's file lock, and only
then talks to the provider; afterwards it *settles* the real cost or is *refunded*.
Because the check and the reservation happen in one locked read-modify-write, any
number of threads and processes together can never commit more than the limit.
A reservation left by a process that died is released by the next `reserve`.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarm_runtime.contract import describe_validation_error, utc_now
from swarm_runtime.errors import GlobalBudgetExceeded, StateFileError
from swarm_runtime.processes import process_exists
from swarm_runtime.store.state_files import Workspace, read_json, update_json

log = logging.getLogger(__name__)


class Reservation(BaseModel):
    amount: float = Field(ge=0, allow_inf_nan=False)
    task_id: str | None = None
    pid: int
    host: str | None = None
    created_at: str


class LedgerDocument(BaseModel):
    """budget_ledger.json: what was spent, and what calls in flight may still spend."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    spent: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    reservations: dict[str, Reservation] = Field(default_factory=dict)

    @property
    def reserved(self) -> float:
        return sum(r.amount for r in self.reservations.values())


@dataclass(frozen=True)
class BudgetSnapshot:
    limit: float
    spent: float
    reserved: float

    @property
    def remaining(self) -> float:
        return max(0.0, self.limit - self.spent - self.reserved)


class BudgetLedger:
    def __init__(self, workspace: Workspace, limit: float):
        if not (math.isfinite(limit) and limit >= 0):
            raise ValueError(f"budget limit must be a finite amount >= 0, not {limit!r}")
        self.workspace = workspace
        self.limit = float(limit)
        self.path = workspace.budget_ledger_path
        self._host = socket.gethostname()
        workspace.ensure_layout()

    def reserve(self, amount: float, *, task_id: str | None) -> str:
        """Hold `amount` against the limit, or raise GlobalBudgetExceeded holding nothing."""
        if not (math.isfinite(amount) and amount >= 0):
            raise ValueError(f"a reservation must be a finite amount >= 0, not {amount!r}")
        reservation_id = uuid.uuid4().hex

        def mutate(raw: Any) -> tuple[dict[str, Any] | None, GlobalBudgetExceeded | None]:
            ledger = self._parse(raw)
            released = self._release_orphans(ledger)
            if ledger.spent + ledger.reserved + amount > self.limit:
                refusal = GlobalBudgetExceeded(self.limit, ledger.spent, ledger.reserved, amount)
                return (_dump(ledger) if released else None), refusal
            ledger.reservations[reservation_id] = self._reservation(amount, task_id)
            return _dump(ledger), None

        refusal = update_json(self.workspace, self.path, mutate, _empty)
        if refusal is not None:
            raise refusal
        return reservation_id

    def settle(self, reservation_id: str, actual_cost: float) -> None:
        """Turn a reservation into real spend; the spend counts even if the hold is gone."""
        if not (math.isfinite(actual_cost) and actual_cost >= 0):
            raise ValueError(f"a cost must be a finite amount >= 0, not {actual_cost!r}")

        def mutate(raw: Any) -> tuple[dict[str, Any], None]:
            ledger = self._parse(raw)
            if ledger.reservations.pop(reservation_id, None) is None:
                log.warning("settling unknown budget reservation %s", reservation_id)
            ledger.spent += actual_cost
            return _dump(ledger), None

        update_json(self.workspace, self.path, mutate, _empty)

    def refund(self, reservation_id: str) -> None:
        """Give a reservation back untouched: the call it covered cost nothing."""

        def mutate(raw: Any) -> tuple[dict[str, Any] | None, None]:
            ledger = self._parse(raw)
            if ledger.reservations.pop(reservation_id, None) is None:
                return None, None
            return _dump(ledger), None

        update_json(self.workspace, self.path, mutate, _empty)

    def snapshot(self) -> BudgetSnapshot:
        ledger = self._parse(read_json(self.path, _empty))
        return BudgetSnapshot(self.limit, ledger.spent, ledger.reserved)

    def _parse(self, raw: Any) -> LedgerDocument:
        """Validate the file; a broken ledger stops spending instead of being reset to zero."""
        try:
            return LedgerDocument.model_validate(raw)
        except ValidationError as exc:
            problems = [describe_validation_error(error) for error in exc.errors()]
            raise StateFileError(self.path, problems) from None

    def _reservation(self, amount: float, task_id: str | None) -> Reservation:
        return Reservation(
            amount=amount,
            task_id=task_id,
            pid=os.getpid(),
            host=self._host,
            created_at=utc_now().isoformat(),
        )

    def _release_orphans(self, ledger: LedgerDocument) -> bool:
        """Drop holds of dead processes on this host, so a crash cannot pin budget forever."""
        orphans = [
            key
            for key, held in ledger.reservations.items()
            if held.host in (None, self._host) and not process_exists(held.pid)
        ]
        for key in orphans:
            held = ledger.reservations.pop(key)
            log.warning("released budget reservation %s of dead pid %s", key, held.pid)
        return bool(orphans)


def _empty() -> dict[str, Any]:
    return LedgerDocument().model_dump(mode="json")


def _dump(ledger: LedgerDocument) -> dict[str, Any]:
    return ledger.model_dump(mode="json")
