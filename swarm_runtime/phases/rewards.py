"""Identity rewards (phase 5): approved, under-budget work earns free-time tokens.

A ledger says which task paid which identity what, and the balances say what each
identity holds. A task pays an identity exactly once. What a grant comes to is decided
by one pure function (`settle_grant`); where it is kept is one of two stores behind the
same two calls:

- In a database (store.reward_rows), each grant is a row keyed by (task, identity),
  inserted in the transaction that pays the identity: a second grant for the key is
  refused by the key, and a crash leaves neither or both.
- In the workspace, two files, so a grant is a two-step commit made under both files'
  locks, always taken in the same order (ledger, then balances):

  1. the balances are paid, and the payment names the grant in the identity's history;
  2. the ledger records the grant, `applied`.

  Every grant (and `recover`) first ledgers the payments it finds unledgered: a crash
  between the two writes leaves one, and its history line says what was paid. So a crash
  at any instant ends, after the next grant, in exactly one payment, ledgered. Since
  nothing is paid before that, an unledgered payment is always the newest of its
  identity, which is why looking at each identity's newest payment is enough. (A ledger
  written before this order may hold a grant marked `pending`: the intent to pay. It is
  paid unless its identity's history names it, then marked applied.)

  A worker's grant is decided inside its verdict's queue transaction and written then
  by no one: the journal record vouches for it, and the journal's fold pays the grants
  outstanding (`apply`), balances then ledger, a history's worth at a time, so that a
  crash between the two writes leaves every payment of the chunk named in its
  identity's history, and the fold done again pays none twice. Until then a decision
  lays the outstanding grants over the files (`FileRewards._section`).

Files written by the design's reference implementation are read as they are. Its ledger
entries have no shares and no state: they were paid before they were written, so they
count as applied, and a task they name is not paid again for that identity, unless the
entry awarded nothing (a full pool): that one is replaced by the next grant, which keeps
it under `replaces`. Its balances (identities at the top level, the free-time pool named
`tokens`) are read into our shape, its own history kept under `reference_history`.

The formula and the split are pure functions, so tests can table them.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from swarm_runtime.contract import (
    RewardFields,
    describe_validation_error,
    is_valid_task_id,
    utc_now,
)
from swarm_runtime.errors import StateFileError, SwarmError
from swarm_runtime.queue.transition_events import Effect, EffectResult, Outstanding
from swarm_runtime.store.documents import FileDocument, SharedDocument, together
from swarm_runtime.store.failpoints import failpoint
from swarm_runtime.store.reward_rows import (
    KEY_SEPARATOR,
    Paid,
    RewardRows,
    RowsDocument,
    grant_key,
)
from swarm_runtime.store.state_files import Workspace

log = logging.getLogger(__name__)

SAVINGS_WEIGHT = 8.0
CONFIDENCE_WEIGHT = 2.0
MIN_TOKENS, MAX_TOKENS = 1, 10
NEUTRAL_CONFIDENCE = 0.5
FREE_TIME_PERCENT = 70
FREE_TIME_CAP = 500
JOURNAL_CAP = 200
HISTORY_LIMIT = 50
REFERENCE_HISTORY = "reference_history"
# The name under which a queue transaction vouches for a grant (`queue.transition_events`).
REWARD_APPLIER = "reward"
IDENTITY_PATTERN = re.compile(r"[A-Za-z0-9._:@-]{1,128}")

M = TypeVar("M", bound=BaseModel)


class Reason(StrEnum):
    """Why a reward was or was not paid; the approved one is suffixed `:<task_id>`."""

    APPROVED_UNDER_BUDGET = "worker_approved_under_budget"
    ALREADY_GRANTED = "already_granted"
    NOT_UNDER_BUDGET = "not_under_budget"
    REVIEW_NOT_APPROVED = "review_not_approved"
    POOL_FULL = "pool_full"
    REWARD_ERROR = "reward_error"


class GrantState(StrEnum):
    PENDING = "pending"
    APPLIED = "applied"


# --- the formula ---------------------------------------------------------------------


def savings_ratio(max_budget: float | None, budget_used: float | None) -> float:
    """The unspent share of the budget; 0 when the spend is unknown or nothing was saved."""
    if max_budget is None or budget_used is None or not math.isfinite(max_budget):
        return 0.0
    if not (max_budget > 0 and 0 <= budget_used < max_budget):
        return 0.0
    return (max_budget - budget_used) / max_budget


def is_under_budget(max_budget: float | None, budget_used: float | None) -> bool:
    return savings_ratio(max_budget, budget_used) > 0


def reward_tokens(
    max_budget: float | None, budget_used: float | None, review_confidence: float | None
) -> int:
    """Savings ratio weighted 8 plus review confidence weighted 2, halves rounded up and
    clamped to [1, 10]. Only savings earn: a task not under budget gets 0, not the minimum."""
    ratio = savings_ratio(max_budget, budget_used)
    if ratio <= 0:
        return 0
    raw = ratio * SAVINGS_WEIGHT + clamp_confidence(review_confidence) * CONFIDENCE_WEIGHT
    return max(MIN_TOKENS, min(MAX_TOKENS, math.floor(raw + 0.5)))


def clamp_confidence(value: float | None) -> float:
    """A critic that gave no usable confidence counts as undecided (0.5), not as sure."""
    if value is None or not math.isfinite(value):
        return NEUTRAL_CONFIDENCE
    return max(0.0, min(1.0, value))


def split_grant(tokens: int, free_time_headroom: int, journal_headroom: int) -> tuple[int, int]:
    """70% free time (halves up), the rest journal, each cut to its pool's headroom. A cut
    share is not moved to the other pool, so an identity never gets more than was asked."""
    tokens = max(0, tokens)
    free_time = (tokens * FREE_TIME_PERCENT + 50) // 100
    journal = tokens - free_time
    return min(free_time, max(0, free_time_headroom)), min(journal, max(0, journal_headroom))


# --- identities and keys ---------------------------------------------------------------


def is_valid_identity(value: object) -> bool:
    return isinstance(value, str) and IDENTITY_PATTERN.fullmatch(value) is not None


def _checked_identity(value: str) -> str:
    if not is_valid_identity(value):
        raise ValueError("must match [A-Za-z0-9._:@-]{1,128}")
    return value


IdentityId = Annotated[str, AfterValidator(_checked_identity)]


def timestamp(now: datetime | None) -> str:
    return (now or utc_now()).isoformat()


def check_ids(task_id: str, identity_id: str) -> None:
    if not is_valid_task_id(task_id):
        raise ValueError(f"task id {task_id!r} must match [A-Za-z0-9._-]{{1,128}}")
    if not is_valid_identity(identity_id):
        raise ValueError(f"identity id {identity_id!r} must match [A-Za-z0-9._:@-]{{1,128}}")


# --- the documents ---------------------------------------------------------------------


class Grant(BaseModel):
    """One ledger entry: what a task earned an identity, and whether it is paid yet. The
    task id is not checked against our pattern: the reference implementation's ids were
    free text, and a recorded grant only needs to be matched, never used as a path."""

    model_config = ConfigDict(extra="allow")

    task_id: str = Field(min_length=1)
    identity_id: IdentityId
    tokens_requested: int = Field(ge=0)
    free_time_awarded: int | None = Field(default=None, ge=0)
    journal_awarded: int | None = Field(default=None, ge=0)
    tokens_awarded: int = Field(ge=0)
    reason: str
    granted_at: str
    review_confidence: float | None = Field(default=None, allow_inf_nan=False)
    budget_used: float | None = Field(default=None, allow_inf_nan=False)
    max_budget: float | None = Field(default=None, allow_inf_nan=False)
    state: GrantState = GrantState.APPLIED

    @model_validator(mode="after")
    def _awarded_is_the_sum(self) -> Grant:
        if self.free_time_awarded is None and self.journal_awarded is None:
            return self
        if self.tokens_awarded != sum(self.shares):
            raise ValueError("tokens_awarded must equal free_time_awarded + journal_awarded")
        return self

    @property
    def key(self) -> str:
        return grant_key(self.task_id, self.identity_id)

    @property
    def shares(self) -> tuple[int, int]:
        """(free time, journal); a reference entry did not record its split."""
        return self.free_time_awarded or 0, self.journal_awarded or 0

    def with_shares(self, free_time_headroom: int, journal_headroom: int) -> Grant:
        """The requested tokens split between the pools, as far as they have room."""
        free_time, journal = split_grant(
            self.tokens_requested, free_time_headroom, journal_headroom
        )
        return self.model_copy(
            update={
                "free_time_awarded": free_time,
                "journal_awarded": journal,
                "tokens_awarded": free_time + journal,
            }
        )


class RewardLedger(BaseModel):
    """phase5_reward_ledger.json. Entries are never removed: the key is the once-only guard
    (a reference entry that paid nothing is replaced, and kept inside its replacement)."""

    model_config = ConfigDict(extra="allow")

    version: Literal[1] = 1
    grants: dict[str, Grant] = Field(default_factory=dict)

    @field_validator("grants")
    @classmethod
    def _keyed_by_task_and_identity(cls, grants: dict[str, Grant]) -> dict[str, Grant]:
        for key, grant in grants.items():
            if key != grant.key:
                raise ValueError(f"the key {key!r} holds the grant {grant.key!r}")
        return grants

    def pending(self) -> list[Grant]:
        return [g for g in self.grants.values() if g.state == GrantState.PENDING]

    def has_paid(self, key: str) -> bool:
        """A grant under `key` paid something (a reference entry that paid nothing is
        replaced by the next grant for its key)."""
        grant = self.grants.get(key)
        return grant is not None and grant.tokens_awarded > 0


class Payment(BaseModel):
    """A history line; `grant` is the ledger key, so an interrupted grant is recognisable."""

    model_config = ConfigDict(extra="allow")

    grant: str
    free_time: int = Field(ge=0)
    journal: int = Field(ge=0)
    paid_at: str


class IdentityBalance(BaseModel):
    model_config = ConfigDict(extra="allow")

    free_time_tokens: int = Field(default=0, ge=0)
    journal_tokens: int = Field(default=0, ge=0)
    free_time_cap: int = Field(default=FREE_TIME_CAP, ge=0)
    journal_cap: int = Field(default=JOURNAL_CAP, ge=0)
    history: list[Payment] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _from_reference(cls, data: Any) -> Any:
        """The reference's `{tokens, journal_tokens, free_time_cap, history,
        spending_history}`: the pool is renamed, its history kept apart from ours."""
        if not isinstance(data, dict) or "tokens" not in data or "free_time_tokens" in data:
            return data
        converted = {k: v for k, v in data.items() if k not in ("tokens", "history")}
        converted["free_time_tokens"] = data["tokens"]
        if "history" in data:
            converted[REFERENCE_HISTORY] = data["history"]
        return converted

    @property
    def total_tokens(self) -> int:
        return self.free_time_tokens + self.journal_tokens

    def headroom(self) -> tuple[int, int]:
        return (
            max(0, self.free_time_cap - self.free_time_tokens),
            max(0, self.journal_cap - self.journal_tokens),
        )

    def has_paid(self, key: str) -> bool:
        return any(payment.grant == key for payment in self.history)

    def pay(self, grant: Grant, paid_at: str) -> None:
        free_time, journal = grant.shares
        self.free_time_tokens += free_time
        self.journal_tokens += journal
        self.history.append(
            Payment(grant=grant.key, free_time=free_time, journal=journal, paid_at=paid_at)
        )
        del self.history[:-HISTORY_LIMIT]


class Balances(BaseModel):
    """free_time_balances.json: each identity's pools, caps and recent payments."""

    model_config = ConfigDict(extra="allow")

    version: Literal[1] = 1
    identities: dict[IdentityId, IdentityBalance] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_reference(cls, data: Any) -> Any:
        """The reference keys identities at the top level, with no version."""
        if isinstance(data, dict) and data and not {"version", "identities"} & data.keys():
            return {"version": 1, "identities": data}
        return data

    def of(self, identity_id: str) -> IdentityBalance:
        """The identity's balance, added (empty) if it has none yet: for paying it."""
        return self.identities.setdefault(identity_id, IdentityBalance())

    def looked_up(self, identity_id: str) -> IdentityBalance:
        """The identity's balance, or an empty one; the balances are left as they are."""
        return self.identities.get(identity_id) or IdentityBalance()

    def has_paid(self, grant: Grant) -> bool:
        balance = self.identities.get(grant.identity_id)
        return balance is not None and balance.has_paid(grant.key)


def parse_state(model: type[M], raw: Any, path: Path) -> M:
    """Validate a state file; a broken one raises and is never replaced by an empty one."""
    if not isinstance(raw, dict):
        raise StateFileError(path, ["the document must be a JSON object"])
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise StateFileError(path, [describe_validation_error(e) for e in exc.errors()]) from None


# --- outcomes --------------------------------------------------------------------------


class RewardOutcome(BaseModel):
    """What the final review event says about the reward."""

    applied: bool = False
    identity: str | None = None
    reason: str
    tokens_requested: int | None = None
    tokens_awarded: int | None = None
    granted_at: str | None = None
    ledger_recorded: bool | None = None
    error: str | None = None
    # The grant this outcome paid, for the queue transaction to vouch for.
    paid: Grant | None = Field(default=None, exclude=True)

    def event_fields(self) -> dict[str, Any]:
        """Every phase5_reward_* key, null where there is nothing to say."""
        return RewardFields(
            phase5_reward_applied=self.applied,
            phase5_reward_tokens_requested=self.tokens_requested,
            phase5_reward_tokens_awarded=self.tokens_awarded,
            phase5_reward_identity=self.identity,
            phase5_reward_reason=self.reason,
            phase5_reward_granted_at=self.granted_at,
            phase5_reward_ledger_recorded=self.ledger_recorded,
            phase5_reward_error=self.error,
        ).model_dump(mode="json")


def not_approved_fields(identity_id: str | None) -> dict[str, Any]:
    """Only approved work earns; the event still says so, with the identity it would have paid."""
    return RewardOutcome(identity=identity_id, reason=Reason.REVIEW_NOT_APPROVED).event_fields()


def unledgered_payments(ledger: RewardLedger, balances: Balances, moment: str) -> list[Grant]:
    """The grants that identities' newest payments made and the ledger lacks, rebuilt
    from their history lines (what was paid, when); what the grant was asked for and on
    what budget is not in the line, so the rebuilt entry says only what was paid."""
    found = []
    for identity_id, balance in balances.identities.items():
        newest = balance.history[-1] if balance.history else None
        if newest is None or ledger.has_paid(newest.grant):
            continue
        grant = grant_of_payment(identity_id, newest, moment)
        if grant is not None:
            found.append(grant)
    return found


def grant_of_payment(identity_id: str, payment: Payment, moment: str) -> Grant | None:
    """The applied grant a history line of ours records; None for a line that names
    another identity or paid nothing (not ours: left as it is)."""
    task_id, _, named = payment.grant.partition(KEY_SEPARATOR)
    paid = payment.free_time + payment.journal
    if named != identity_id or not task_id or paid == 0:
        return None
    return Grant(
        task_id=task_id,
        identity_id=identity_id,
        tokens_requested=paid,
        free_time_awarded=payment.free_time,
        journal_awarded=payment.journal,
        tokens_awarded=paid,
        reason=f"{Reason.APPROVED_UNDER_BUDGET}:{task_id}",
        granted_at=payment.paid_at,
        state=GrantState.APPLIED,
        ledgered_after_a_crash_at=moment,
    )


def pay_once(ledger: RewardLedger, balances: Balances, grant: Grant) -> None:
    """Pay and ledger `grant`, in memory, unless the ledger has it paid; a payment the
    balances hold already (a crash came between the two writes) is only ledgered."""
    if ledger.has_paid(grant.key):
        return
    if not balances.has_paid(grant):
        balances.of(grant.identity_id).pay(grant, grant.granted_at)
    grant.state = GrantState.APPLIED
    ledger.grants[grant.key] = grant


def reported(grant: Grant, *, applied: bool) -> RewardOutcome:
    """A ledgered grant as an outcome: paid by this call, or found already paid."""
    return RewardOutcome(
        paid=grant if applied else None,
        applied=applied,
        identity=grant.identity_id,
        reason=grant.reason if applied else Reason.ALREADY_GRANTED,
        tokens_requested=grant.tokens_requested,
        tokens_awarded=grant.tokens_awarded,
        granted_at=grant.granted_at,
        ledger_recorded=True,
    )


def settle_grant(
    draft: Grant, earlier: Grant | None, balance: IdentityBalance
) -> Grant | RewardOutcome:
    """The grant to pay, split as far as the pools have room, or, when nothing is to be
    paid, the outcome: the key paid before, or the pools cannot hold any of it (then
    nothing is ledgered, so a later review may still earn)."""
    if earlier is not None and earlier.tokens_awarded > 0:
        return reported(earlier, applied=False)
    grant = draft.with_shares(*balance.headroom())
    if grant.tokens_awarded == 0:
        return RewardOutcome(
            identity=draft.identity_id,
            reason=Reason.POOL_FULL,
            tokens_requested=draft.tokens_requested,
            tokens_awarded=0,
            ledger_recorded=False,
        )
    if earlier is None:
        return grant
    replaced = earlier.model_dump(mode="json", exclude_unset=True)
    return grant.model_copy(update={"replaces": replaced})


# --- the book --------------------------------------------------------------------------


class RewardStore(Protocol):
    """Where grants are kept; either way `settle` pays a key at most once."""

    def settle(self, draft: Grant, outstanding: Sequence[Any] | None = None) -> RewardOutcome:
        """With `outstanding` (the grants the queue journal holds and the files do not
        yet), decide as if they were paid, and write nothing (`queue.transition_events`)."""
        ...

    def apply(self, payloads: Sequence[Any]) -> None:
        """Pay each grant (as the journal holds it), in order, that the store does not
        hold yet: the fold's work."""
        ...

    def recover(self, moment: str) -> int:
        """Finish the grants a crash left pending; returns how many there were."""
        ...


class RewardBook:
    """Grants rewards exactly once per task and identity; see the module docstring."""

    def __init__(
        self,
        workspace: Workspace,
        ledger: SharedDocument | None = None,
        balances: SharedDocument | None = None,
    ):
        """`ledger` and `balances` are where the two live: the workspace's files unless
        given; given as the views `documents_for` makes of a database's rows, grants are
        kept in those rows."""
        self.workspace = workspace
        self._ledger = ledger or FileDocument(workspace, workspace.reward_ledger_path)
        self._balances = balances or FileDocument(workspace, workspace.balances_path)
        self.ledger_path = self._ledger.path
        self.balances_path = self._balances.path
        self._store = reward_store(self._ledger, self._balances)
        workspace.ensure_layout()

    def grant(
        self,
        task_id: str,
        identity_id: str,
        *,
        max_budget: float | None,
        budget_used: float | None,
        review_confidence: float | None,
        now: datetime | None = None,
        outstanding: Sequence[Any] | None = None,
    ) -> RewardOutcome:
        """Pay for approved work once. Not under budget touches nothing. A grant
        interrupted earlier for this same key and finished here counts as applied.
        With `outstanding`, the grant is only decided (`RewardStore.settle`)."""
        check_ids(task_id, identity_id)
        requested = reward_tokens(max_budget, budget_used, review_confidence)
        if requested == 0:
            return RewardOutcome(identity=identity_id, reason=Reason.NOT_UNDER_BUDGET)
        draft = Grant(
            task_id=task_id,
            identity_id=identity_id,
            tokens_requested=requested,
            free_time_awarded=0,
            journal_awarded=0,
            tokens_awarded=0,
            reason=f"{Reason.APPROVED_UNDER_BUDGET}:{task_id}",
            granted_at=timestamp(now),
            review_confidence=clamp_confidence(review_confidence),
            budget_used=budget_used,
            max_budget=max_budget,
        )
        outcome = self._store.settle(draft, outstanding)
        if outcome.applied:
            log.info("task %s earned %s %s token(s)", task_id, identity_id, outcome.tokens_awarded)
        return outcome

    def grant_safely(
        self,
        task_id: str,
        identity_id: str,
        *,
        max_budget: float | None,
        budget_used: float | None,
        review_confidence: float | None,
        now: datetime | None = None,
        outstanding: Sequence[Any] | None = None,
    ) -> RewardOutcome:
        """Like `grant`, but a failure becomes the event's phase5_reward_error, not a crash;
        whatever it left pending is finished by the next grant."""
        try:
            return self.grant(
                task_id,
                identity_id,
                max_budget=max_budget,
                budget_used=budget_used,
                review_confidence=review_confidence,
                now=now,
                outstanding=outstanding,
            )
        except (SwarmError, OSError, ValueError) as exc:
            log.error("reward for task %s could not be granted: %s", task_id, exc)
            return RewardOutcome(identity=identity_id, reason=Reason.REWARD_ERROR, error=str(exc))

    def recover(self, *, now: datetime | None = None) -> int:
        """Finish grants a crash left pending; returns how many there were."""
        return self._store.recover(timestamp(now))

    def paying(self, task_id: str, identity_id: str, **terms: Any) -> Effect:
        """`grant_safely` as an effect of the review's transition: it adds the phase5_*
        fields to the verdict's event and vouches for the grant it paid."""

        def effect(outstanding: Outstanding | None) -> EffectResult:
            pending = None if outstanding is None else outstanding.get(REWARD_APPLIER, ())
            outcome = self.grant_safely(task_id, identity_id, outstanding=pending, **terms)
            paid = outcome.paid
            vouch = None if paid is None else (REWARD_APPLIER, paid.model_dump(mode="json"))
            return EffectResult(outcome.event_fields(), vouch)

        return effect

    def apply(self, payloads: Sequence[Any]) -> None:
        """Pay the vouched grants the files lack, in order (`queue.store`'s fold)."""
        self._store.apply(payloads)

    def ledger(self) -> RewardLedger:
        """The ledger as it is now, for readers such as the control panel."""
        return parse_state(RewardLedger, self._ledger.read(dict), self.ledger_path)

    def balances(self) -> Balances:
        return parse_state(Balances, self._balances.read(dict), self.balances_path)


def reward_store(ledger: SharedDocument, balances: SharedDocument) -> RewardStore:
    """The rows when given their views, else the two files."""
    if isinstance(ledger, RowsDocument):
        return RowRewards(ledger.rows)
    assert isinstance(ledger, FileDocument) and isinstance(balances, FileDocument), (
        "rewards are kept in the workspace's files or in the database's rows"
    )
    return FileRewards(ledger, balances)


class RowRewards:
    """Grants as rows of a database (store.reward_rows). The row and the payment commit in
    one transaction, so a crash never leaves a grant pending: nothing is ever recovered."""

    def __init__(self, rows: RewardRows):
        self.rows = rows
        self.ledger_path = rows.ledger.path
        self.balances_path = rows.balances.path

    def settle(self, draft: Grant, outstanding: Sequence[Any] | None = None) -> RewardOutcome:
        """A database's transaction commits the grant's rows itself: nothing is outstanding."""
        return self.rows.grant(
            draft.task_id,
            draft.identity_id,
            lambda earlier, balance: self._decide(draft, earlier, balance),
        )

    def recover(self, moment: str) -> int:
        return 0

    def apply(self, payloads: Sequence[Any]) -> None:
        """A database's grants are committed with their transaction: none is vouched for."""

    def _decide(
        self, draft: Grant, entry: Any, balance_row: Any
    ) -> tuple[Paid | None, RewardOutcome]:
        """`settle_grant` on what the rows hold: the key's entry, the identity's balance."""
        earlier = None if entry is None else parse_state(Grant, entry, self.ledger_path)
        balance = parse_state(IdentityBalance, balance_row, self.balances_path)
        settled = settle_grant(draft, earlier, balance)
        if isinstance(settled, RewardOutcome):
            return None, settled
        balance.pay(settled, settled.granted_at)
        paid = Paid(settled.model_dump(mode="json"), balance.model_dump(mode="json"))
        return paid, reported(settled, applied=True)


@dataclass
class Known:
    """Both files as this process last read or wrote them, with the models that are
    exactly those bytes with the grants `overlaid` paid in them too (no longer handed
    out, so nothing changes them meanwhile)."""

    ledger_bytes: bytes | None
    balances_bytes: bytes | None
    ledger: RewardLedger
    balances: Balances
    overlaid: frozenset[str] = frozenset()

    def still_on_disk(self, ledger_bytes: bytes | None, balances_bytes: bytes | None) -> bool:
        return ledger_bytes == self.ledger_bytes and balances_bytes == self.balances_bytes


@dataclass
class Section:
    """What one locked section works on: the models, the keys a crash left that it
    finished, and the outstanding grants laid over the models (paid in memory only)."""

    ledger: RewardLedger
    balances: Balances
    finished: set[str] = field(default_factory=set)
    overlaid: set[str] = field(default_factory=set)


class FileRewards:
    """Grants in the workspace's two files, a two-step commit; see the module docstring.

    A worker that pays grant after grant finds both files as it left them, unless
    another process wrote since: it compares their bytes with what it last read or
    wrote and, when they are the same, takes up the models it had instead of parsing and
    validating both documents again. This holds because every section writes whatever
    it changed in the models before it ends (`settle` only looks an identity up), except
    the outstanding grants it lays over them, which the models remember (`Known`)."""

    def __init__(self, ledger: FileDocument, balances: FileDocument):
        self._ledger = ledger
        self._balances = balances
        self.ledger_path = ledger.path
        self.balances_path = balances.path
        self._inside = False  # a section holds both locks
        self._wrote: dict[Path, bytes] = {}
        self._known: Known | None = None

    def settle(self, draft: Grant, outstanding: Sequence[Any] | None = None) -> RewardOutcome:
        """Unfinished grants are finished first; one for this very key is then reported paid."""
        with self._locked(draft.granted_at, outstanding or ()) as section:
            ledger, balances = section.ledger, section.balances
            if draft.key in section.finished:
                return reported(ledger.grants[draft.key], applied=True)
            earlier = ledger.grants.get(draft.key)
            settled = settle_grant(draft, earlier, balances.looked_up(draft.identity_id))
            if isinstance(settled, RewardOutcome):
                return settled
            if outstanding is None:
                self._commit(ledger, balances, settled)
            else:
                pay_once(ledger, balances, settled)
                section.overlaid.add(settled.key)
            return reported(settled, applied=True)

    def recover(self, moment: str) -> int:
        with self._locked(moment) as section:
            return len(section.finished)

    def apply(self, payloads: Sequence[Any]) -> None:
        """Pay them, then ledger them, a few at a time: after a crash between the two
        writes, each identity's history still names every grant just paid (it keeps the
        newest `HISTORY_LIMIT`), so applying them again pays none twice. Each is
        validated as it is laid over the files (`_section`)."""
        for start in range(0, len(payloads), HISTORY_LIMIT):
            chunk = payloads[start : start + HISTORY_LIMIT]
            with self._locked(utc_now().isoformat(), chunk) as section:
                self._write(self._balances, section.balances)
                failpoint("reward.after_balances")
                self._write(self._ledger, section.ledger)
                section.overlaid.clear()

    @contextmanager
    def _locked(self, moment: str, outstanding: Sequence[Any] = ()) -> Iterator[Section]:
        """Both locks, ledger first, for the whole decision; both read inside them."""
        with together([self._ledger, self._balances]):
            self._inside, self._wrote = True, {}
            try:
                ledger_bytes = self._ledger.read_bytes()
                balances_bytes = self._balances.read_bytes()
                section = self._section(ledger_bytes, balances_bytes, moment, outstanding)
                yield section
                self._known = Known(
                    self._wrote.get(self.ledger_path, ledger_bytes),
                    self._wrote.get(self.balances_path, balances_bytes),
                    section.ledger,
                    section.balances,
                    frozenset(section.overlaid),
                )
            finally:
                self._inside = False

    def _section(
        self,
        ledger_bytes: bytes | None,
        balances_bytes: bytes | None,
        moment: str,
        outstanding: Sequence[Any],
    ) -> Section:
        """The models this process had, if the files are still exactly those bytes and
        every grant laid over them is still outstanding (taken back: a section that
        fails keeps nothing); else the files parsed and a crash's leftovers finished.
        Then the outstanding grants not laid over them yet are."""
        known, self._known = self._known, None
        keyed = [(grant_key(p["task_id"], p["identity_id"]), p) for p in outstanding]
        if (
            known is not None
            and known.still_on_disk(ledger_bytes, balances_bytes)
            and known.overlaid <= {key for key, _ in keyed}
        ):
            section = Section(known.ledger, known.balances, overlaid=set(known.overlaid))
        else:
            ledger = parse_state(
                RewardLedger, self._ledger.parse(ledger_bytes, dict), self.ledger_path
            )
            balances = parse_state(
                Balances, self._balances.parse(balances_bytes, dict), self.balances_path
            )
            section = Section(ledger, balances, self._finish(ledger, balances, moment))
        for key, payload in keyed:
            if key not in section.overlaid:
                grant = parse_state(Grant, payload, self.ledger_path)
                pay_once(section.ledger, section.balances, grant)
                section.overlaid.add(key)
        return section

    def _commit(self, ledger: RewardLedger, balances: Balances, grant: Grant) -> None:
        """Pay, then ledger: the payment names the grant, so a crash between the two
        leaves a payment that `_finish` ledgers."""
        balances.of(grant.identity_id).pay(grant, grant.granted_at)
        self._write(self._balances, balances)
        failpoint("reward.after_balances")
        grant.state = GrantState.APPLIED
        ledger.grants[grant.key] = grant
        self._write(self._ledger, ledger)

    def _finish(self, ledger: RewardLedger, balances: Balances, moment: str) -> set[str]:
        """Finish what a crash left half done; returns the keys of the grants finished."""
        return self._finish_pending(ledger, balances, moment) | self._ledger_unledgered(
            ledger, balances, moment
        )

    def _ledger_unledgered(self, ledger: RewardLedger, balances: Balances, moment: str) -> set[str]:
        """Ledger each identity's newest payment if the ledger lacks it: the crash came
        between paying and ledgering, and the history line says what was paid."""
        found = unledgered_payments(ledger, balances, moment)
        for grant in found:
            earlier = ledger.grants.get(grant.key)
            if earlier is not None:
                grant = grant.model_copy(update={"replaces": earlier.model_dump(mode="json")})
            ledger.grants[grant.key] = grant
        if found:
            self._write(self._ledger, ledger)
            log.warning("ledgered %d reward payment(s) a crash left unledgered", len(found))
        return {grant.key for grant in found}

    def _finish_pending(self, ledger: RewardLedger, balances: Balances, moment: str) -> set[str]:
        """A ledger written before payments came first may hold pending grants: pay what
        is unpaid, then mark every pending grant applied."""
        pending = ledger.pending()
        if not pending:
            return set()
        unpaid = [grant for grant in pending if not balances.has_paid(grant)]
        for grant in unpaid:
            balances.of(grant.identity_id).pay(grant, moment)
        if unpaid:
            self._write(self._balances, balances)
        for grant in pending:
            grant.state = GrantState.APPLIED
        self._write(self._ledger, ledger)
        log.warning(
            "finished %d interrupted reward grant(s), %d paid now", len(pending), len(unpaid)
        )
        return {grant.key for grant in pending}

    def _write(self, document: FileDocument, model: BaseModel) -> None:
        """Only inside `_locked`: the write belongs to its critical section."""
        assert self._inside, "rewards are written under their locks"
        self._wrote[document.path] = document.write_returning_bytes(model.model_dump(mode="json"))
