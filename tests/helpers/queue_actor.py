"""A separate process that hammers the queue store, for concurrency and crash tests.

queue_actor.py WORKSPACE add PREFIX COUNT      add COUNT tasks PREFIX-0..N
queue_actor.py WORKSPACE drain NAME OUT        claim+finish until drained; ids to OUT
queue_actor.py WORKSPACE churn                 add tasks forever (to be killed)

The queue is the workspace's queue.json, or the database SWARM_DATABASE_URL names.
"""

from __future__ import annotations

import itertools
import os
import sys

from swarm_runtime.contract import Status
from swarm_runtime.queue.select import store_for
from swarm_runtime.queue.store import WorkerIdentity
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace


def main() -> int:
    workspace = Workspace(sys.argv[1])
    url = os.environ.get("SWARM_DATABASE_URL") or None
    settings = Settings(
        workspace=workspace.root, queue_retain=1_000_000, review=False, database_url=url
    )
    store = store_for(settings, workspace)
    action = sys.argv[2]
    if action == "add":
        prefix, count = sys.argv[3], int(sys.argv[4])
        for index in range(count):
            store.add({"id": f"{prefix}-{index}", "prompt": "x" * 200})
    elif action == "drain":
        me = WorkerIdentity(sys.argv[3])
        with open(sys.argv[4], "w") as out:
            while True:
                claim = store.claim(me, lease_seconds=60)
                if claim.task is None:
                    if claim.drained:
                        return 0
                    continue
                out.write(claim.task.id + "\n")
                out.flush()
                store.finish(claim.task.id, me, Status.COMPLETED)
    elif action == "churn":
        print("ready", flush=True)
        for index in itertools.count():
            store.add({"id": f"churn-{os.getpid()}-{index}", "prompt": "y" * 500})
    return 0


if __name__ == "__main__":
    sys.exit(main())
