"""The design's name for phase-5 rewards; it lives in swarm_runtime.phases.rewards."""

from swarm_runtime.phases.rewards import (
    Balances,
    Grant,
    RewardBook,
    RewardLedger,
    RewardOutcome,
    grant_key,
    is_under_budget,
    reward_tokens,
)

__all__ = [
    "Balances",
    "Grant",
    "RewardBook",
    "RewardLedger",
    "RewardOutcome",
    "grant_key",
    "is_under_budget",
    "reward_tokens",
]
