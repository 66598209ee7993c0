"""Identity rewards (phase 5): approved, under-budget work earns free-time tokens.

The reward formula is a pure function so it can be tabled in tests; granting and
the ledger that makes each grant happen once arrive with the review phase.
"""

from __future__ import annotations

SAVINGS_WEIGHT = 8.0
CONFIDENCE_WEIGHT = 2.0
MIN_TOKENS, MAX_TOKENS = 1, 10


def reward_tokens(max_budget: float, budget_used: float, review_confidence: float) -> int:
    """Savings ratio weighted 8 plus review confidence weighted 2, clamped to [1, 10]."""
    savings = (max_budget - budget_used) / max_budget if max_budget > 0 else 0.0
    raw = savings * SAVINGS_WEIGHT + review_confidence * CONFIDENCE_WEIGHT
    return int(max(MIN_TOKENS, min(MAX_TOKENS, round(raw))))
