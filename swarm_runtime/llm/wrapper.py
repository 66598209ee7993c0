"""Every LLM call goes through here: rate limit, price, budgets, provider, audit.

The order matters. Everything that can refuse a call (the bucket, an unpriced model,
the task's max_budget, the global ledger) runs before the provider is contacted, and
the ledger holds the call's worst-case cost while it is in flight, so concurrent
calls cannot spend past the limit together. The hold is a true upper bound for an
honest provider (see bounds.py); the real cost, from the provider's usage counts,
replaces it afterwards, even when a provider reports more than it could honestly have
billed: that spend is real, so it is recorded and audited as OVER_RESERVATION, and the
ledger admits nothing more until spend plus holds is under the limit again. Each
outcome leaves one audit line that identifies the prompt by hash and never carries a
secret.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from swarm_runtime.contract import OFFLINE_MODEL, utc_now
from swarm_runtime.errors import (
    GlobalBudgetExceeded,
    ProviderError,
    RateLimited,
    TaskBudgetExceeded,
    UnpricedModelError,
)
from swarm_runtime.llm.bounds import input_token_bound, output_token_bound
from swarm_runtime.llm.budget import UNKNOWN_MODEL, BudgetLedger, BudgetSnapshot, UnsettledHold
from swarm_runtime.llm.pricing import FREE, Price, load_price_table, price_for
from swarm_runtime.llm.provider import Completion, Provider, build_provider, scrub_secrets
from swarm_runtime.llm.rate_limit import TokenBucket
from swarm_runtime.settings import DEFAULT_MAX_OUTPUT_TOKENS, Settings
from swarm_runtime.store.documents import SharedDocument
from swarm_runtime.store.state_files import Workspace, append_line

log = logging.getLogger(__name__)

REFUSAL_EVENTS: dict[type[Exception], str] = {
    RateLimited: "RATE_LIMITED",
    UnpricedModelError: "UNPRICED_MODEL",
    TaskBudgetExceeded: TaskBudgetExceeded.audit_event,
    GlobalBudgetExceeded: GlobalBudgetExceeded.audit_event,
}


@dataclass(frozen=True)
class LLMCallResult:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float


@dataclass(frozen=True)
class _Hold:
    """What a call was admitted with: its price, its worst-case cost, and the ledger hold
    covering that cost (None for a free call, which holds nothing)."""

    price: Price
    amount: float
    reservation: str | None


class SecureAPIWrapper:
    def __init__(
        self,
        *,
        provider: Provider,
        ledger: BudgetLedger,
        limiter: TokenBucket,
        prices: Mapping[str, Price],
        workspace: Workspace,
        default_model: str,
        audit_prompts: bool = False,
        secrets: Iterable[str] = (),
        max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
    ):
        self.provider = provider
        self.ledger = ledger
        self.limiter = limiter
        self.prices = prices
        self.workspace = workspace
        self.default_model = default_model
        self.audit_prompts = audit_prompts
        self._secrets = tuple(secrets)
        self.max_output_tokens = max_output_tokens
        # Holds whose settle or refund could not be written yet: reservation -> cost, or
        # None for a refund. The hold stays in the ledger file meanwhile; it covers the cost.
        self._unclosed: dict[str, float | None] = {}
        self._closing = threading.Lock()
        self._free_models_noted: set[str] = set()

    def call_llm(
        self,
        prompt: str,
        *,
        model: str | None = None,
        max_tokens: int,
        temperature: float,
        task_id: str | None = None,
        max_budget: float | None = None,
        system: str | None = None,
    ) -> LLMCallResult:
        served = self.provider.model_for(model or self.default_model)
        audit = _Audit(self, served, task_id, prompt)
        max_tokens = output_token_bound(max_tokens, self.max_output_tokens)
        hold = self._admit(audit, prompt, system, max_tokens, max_budget)
        started = time.monotonic()
        try:
            completion = self.provider.complete(
                prompt, model=served, max_tokens=max_tokens, temperature=temperature, system=system
            )
        except BaseException as exc:
            self._fail(audit, hold, exc, started)
            raise
        return self._settle(audit, hold, completion, started)

    def _fail(self, audit: _Audit, hold: _Hold, exc: BaseException, started: float) -> None:
        """A call that never reached the provider gives its hold back. One that may have
        been billed (no answer, or none we could read) is charged the hold, the worst case,
        and audited as such: refunding it could leave a billed call off the ledger."""
        audit.write("API_CALL_FAILURE", latency_ms=_ms_since(started), error=str(exc))
        if hold.reservation is None:
            return
        if not (isinstance(exc, ProviderError) and exc.maybe_billed):
            self._release(hold.reservation)
            return
        self._close(hold.reservation, hold.amount)
        audit.write(
            "UNSETTLED_CHARGED",
            cost=hold.amount,
            reservation=hold.reservation,
            error="the outcome is unknown, so the hold is charged in full",
        )

    def budget_snapshot(self) -> BudgetSnapshot:
        return self.ledger.snapshot()

    def _admit(
        self,
        audit: _Audit,
        prompt: str,
        system: str | None,
        max_tokens: int,
        max_budget: float | None,
    ) -> _Hold:
        """Every refusal, audited, before a byte goes to the provider. A free call takes no
        hold: it must not be refused because paid calls have used up the budget."""
        try:
            self.limiter.acquire()
            price = self._price(audit.model)
            estimate = price.cost(input_token_bound(prompt, system), max_tokens)
            if max_budget is not None and estimate > max_budget:
                raise TaskBudgetExceeded(audit.task_id, estimate, max_budget)
            reservation = None
            if price != FREE:
                reservation = self._reserve(audit, estimate, max_budget)
        except tuple(REFUSAL_EVENTS) as exc:
            audit.write(REFUSAL_EVENTS[type(exc)], error=str(exc))
            raise
        return _Hold(price, estimate, reservation)

    def _price(self, model: str) -> Price:
        """An unpriced model on a loopback provider is free. Say so once per model: a local
        gateway that forwards to a paid API would otherwise spend outside the budget."""
        price = price_for(model, self.prices, free_unpriced=self.provider.is_local)
        if price == FREE and model not in self.prices and model != OFFLINE_MODEL:
            if model not in self._free_models_noted:
                self._free_models_noted.add(model)
                log.warning(
                    "model %s on loopback provider %s has no price and is treated as free; "
                    "if that endpoint forwards to a paid API, price it in SWARM_PRICES_FILE",
                    model,
                    self.provider.name,
                )
        return price

    def _reserve(self, audit: _Audit, estimate: float, max_budget: float | None) -> str:
        """The hold is written as sent: the request goes out right after, with nothing left
        that could stop it, so a crash from here on leaves a call that may have been billed."""
        self._close_pending()
        admission = self.ledger.admit(
            estimate, task_id=audit.task_id, task_limit=max_budget, model=audit.model, sent=True
        )
        for unsettled in admission.unsettled:
            _audit_unsettled(self, unsettled)
        return admission.granted()

    def _settle(
        self, audit: _Audit, hold: _Hold, completion: Completion, started: float
    ) -> LLMCallResult:
        """Charge what the provider reported, even past the hold: that spend is real."""
        cost = hold.price.cost(completion.prompt_tokens, completion.completion_tokens)
        if hold.reservation is not None:
            self._close(hold.reservation, cost)
        latency_ms = _ms_since(started)
        if cost > hold.amount:
            audit.write("OVER_RESERVATION", **_usage(completion), cost=cost, reserved=hold.amount)
        audit.write("API_CALL_SUCCESS", **_usage(completion), cost=cost, latency_ms=latency_ms)
        return LLMCallResult(
            text=completion.text,
            model=completion.model,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost=cost,
        )

    def _release(self, reservation: str | None) -> None:
        if reservation is not None:
            self._close(reservation, None)

    def _close(self, reservation: str, cost: float | None) -> None:
        """Settle (a cost) or refund (None) a hold. When the ledger cannot be written (a
        full disk), the answer the provider already sent and billed is not thrown away:
        the hold stays on file, covering the cost, and is closed by the next reserve."""
        with self._closing:
            self._unclosed[reservation] = cost
        try:
            self._close_pending()
        except OSError as exc:
            log.error(
                "budget hold %s stays open until the ledger can be written: %s", reservation, exc
            )

    def _close_pending(self) -> None:
        """Write every settle and refund still owed; one thread at a time, so none twice."""
        with self._closing:
            while self._unclosed:
                reservation, cost = next(iter(self._unclosed.items()))
                if cost is None:
                    self.ledger.refund(reservation)
                else:
                    self.ledger.settle(reservation, cost)
                del self._unclosed[reservation]

    def scrub(self, text: str) -> str:
        return scrub_secrets(text, self._secrets)


class _Audit:
    """One call's audit lines share its model, task and prompt hash."""

    def __init__(
        self, wrapper: SecureAPIWrapper, model: str, task_id: str | None, prompt: str | None
    ):
        self.wrapper = wrapper
        self.model = model
        self.task_id = task_id
        self.prompt = prompt
        self.prompt_sha256 = None
        if prompt is not None:
            self.prompt_sha256 = hashlib.sha256(prompt.encode("utf-8")).hexdigest()

    def write(self, event: str, **fields: Any) -> None:
        record: dict[str, Any] = {
            "timestamp": utc_now().isoformat(),
            "event": event,
            "model": self.model,
            "task_id": self.task_id,
            "prompt_tokens": None,
            "completion_tokens": None,
            "cost": None,
            "latency_ms": None,
            "error": None,
            "prompt_sha256": self.prompt_sha256,
        }
        record.update(fields)
        if record["error"] is not None:
            record["error"] = self.wrapper.scrub(record["error"])
        if self.wrapper.audit_prompts and self.prompt is not None:
            record["prompt"] = self.wrapper.scrub(self.prompt)
        workspace = self.wrapper.workspace
        try:
            append_line(workspace, workspace.api_audit_path, record, durable=False)
        except OSError as exc:
            # Losing a paid answer (and calling again) would be worse than one missing line.
            log.error("audit line %s for task %s not written: %s", event, self.task_id, exc)


def from_settings(
    settings: Settings, workspace: Workspace, budget: SharedDocument | None = None
) -> SecureAPIWrapper:
    """The one wrapper a server process uses, with its ledger in `budget` (the
    workspace's file unless given)."""
    workspace.ensure_layout()
    return SecureAPIWrapper(
        provider=build_provider(settings),
        ledger=BudgetLedger(workspace, settings.budget_limit, budget),
        limiter=TokenBucket(settings.rate_limit),
        prices=load_price_table(settings.prices_file),
        workspace=workspace,
        default_model=settings.default_model,
        audit_prompts=settings.audit_prompts,
        secrets=settings.secret_values(),
        max_output_tokens=settings.max_output_tokens,
    )


def _audit_unsettled(wrapper: SecureAPIWrapper, unsettled: UnsettledHold) -> None:
    """A dead process's call whose outcome nobody saw: charged at its hold, the worst case."""
    held = unsettled.reservation
    audit = _Audit(wrapper, held.model or UNKNOWN_MODEL, held.task_id, None)
    audit.write(
        "UNSETTLED_CHARGED",
        cost=held.amount,
        reservation=unsettled.reservation_id,
        error=f"process {held.pid} died with this call in flight; its hold is charged in full",
    )


def _usage(completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
    }


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
