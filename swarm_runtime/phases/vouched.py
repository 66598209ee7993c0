"""What applies the effects a queue journal vouches for (a review's gate vote and its
reward) to their files, when the journal is folded (`queue.transition_events`).

Every process that folds a workspace's journal needs them: a worker, and the panel, the
API and the operator commands, whose own transactions fold a small queue at once. A
store without them leaves a journal that holds such effects for one that has them."""

from __future__ import annotations

from swarm_runtime.phases.quality_gate import GATE_APPLIER, QualityGate
from swarm_runtime.phases.rewards import REWARD_APPLIER, RewardBook
from swarm_runtime.queue.transition_events import Applier
from swarm_runtime.store.state_files import Workspace


def effect_appliers(gate: QualityGate, rewards: RewardBook) -> dict[str, Applier]:
    return {GATE_APPLIER: gate.apply, REWARD_APPLIER: rewards.apply}


def workspace_appliers(workspace: Workspace) -> dict[str, Applier]:
    """The appliers for the workspace's own files (a database store never calls them)."""
    return effect_appliers(QualityGate(workspace), RewardBook(workspace))
