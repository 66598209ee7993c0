"""A process granting rewards as the worker does, through the store its environment
names (the workspace's files, or SWARM_DATABASE_URL's rows), released by the test.

    reward_granter.py TASK_ID...

It connects, prints "ready", waits for a line on stdin so that every granter a test
started can be released at once, then grants each task to `ada` and prints each outcome
as one JSON line. With SWARM_FAILPOINTS it can be killed at an exact instant of a grant.
"""

from __future__ import annotations

import sys
from typing import Any

from swarm_runtime.phases.rewards import RewardBook
from swarm_runtime.settings import Settings
from swarm_runtime.store.documents import documents_for
from swarm_runtime.store.state_files import Workspace

IDENTITY = "ada"
GRANT: dict[str, Any] = {"max_budget": 0.20, "budget_used": 0.05, "review_confidence": 0.9}


def main() -> int:
    settings = Settings.from_env()
    workspace = Workspace(settings.workspace)
    documents = documents_for(settings, workspace)
    book = RewardBook(workspace, documents.reward_ledger, documents.balances)
    print("ready", flush=True)
    sys.stdin.readline()
    for task_id in sys.argv[1:]:
        print(book.grant(task_id, IDENTITY, **GRANT).model_dump_json(), flush=True)
    documents.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
