"""One state-file write through the runtime's own store code, in a process a test can kill.

    faults_state_writer.py WORKSPACE KIND STEP

KIND names the document: queue (a task `task-STEP` added), queue_journal (the same, as
a large queue does it: a record appended to the journal), queue_fold (that, then the
journal folded into queue.json), quality_gate (a vote on
`task-STEP`), reward (a grant for `task-STEP`: the reward ledger, then the balances),
budget (a reservation settled at 0.25). With SWARM_FAILPOINTS=write:<file>:<instant>
the process kills itself inside the atomic writer of that file.
"""

from __future__ import annotations

import sys

from swarm_runtime.contract import Verdict
from swarm_runtime.llm.budget import BudgetLedger
from swarm_runtime.phases.critic import Review
from swarm_runtime.phases.quality_gate import QualityGate
from swarm_runtime.phases.rewards import RewardBook
from swarm_runtime.queue.store import QueueStore
from swarm_runtime.store.state_files import Workspace

IDENTITY = "resident_fault"
BUDGET_LIMIT = 10.0
SETTLED_COST = 0.25


def write(workspace: Workspace, kind: str, task_id: str) -> None:
    if kind == "queue":
        QueueStore(workspace).add({"id": task_id, "prompt": f"say {task_id}"})
    elif kind in ("queue_journal", "queue_fold"):
        # A slow machine must not fold the journal on age between the test's steps.
        store = QueueStore(workspace, small_queue_bytes=0, fold_after_seconds=3600)
        store.add({"id": task_id, "prompt": f"say {task_id}"})
        if kind == "queue_fold":
            store.flush()
    elif kind == "quality_gate":
        review = Review(verdict=Verdict.APPROVE, confidence=0.9)
        QualityGate(workspace).record(task_id, f"say {task_id}", "faults", review, 0)
    elif kind == "reward":
        outcome = RewardBook(workspace).grant(
            task_id, IDENTITY, max_budget=1.0, budget_used=0.0, review_confidence=0.9
        )
        assert outcome.applied, outcome
    elif kind == "budget":
        ledger = BudgetLedger(workspace, BUDGET_LIMIT)
        ledger.settle(ledger.reserve(0.5, task_id=task_id), SETTLED_COST)
    else:
        raise SystemExit(f"unknown kind {kind!r}")


def main() -> int:
    workspace = Workspace(sys.argv[1])
    workspace.ensure_layout()
    write(workspace, sys.argv[2], f"task-{sys.argv[3]}")
    print("written", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
