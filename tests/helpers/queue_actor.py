"""A separate process that hammers the queue store, for concurrency and crash tests.

queue_actor.py WORKSPACE add PREFIX COUNT      add COUNT tasks PREFIX-0..N
queue_actor.py WORKSPACE drain NAME OUT        claim+finish until drained; ids to OUT
queue_actor.py WORKSPACE timed NAME OUT        the same, as `id start end` lines (below)
queue_actor.py WORKSPACE churn                 add tasks forever (to be killed)

`timed` writes the moments (this host's clock) just after a claim returned and just
before its finish began, so a test can see which tasks ran at the same time; a task
that must run alone is held a little longer, to give an overlap the chance to show.

The queue is the workspace's queue.json, or the database SWARM_DATABASE_URL names.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time

from swarm_runtime.contract import Status
from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.queue.select import store_for
from swarm_runtime.queue.store import WorkerIdentity
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace

ALONE_SECONDS = 0.02


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
    elif action == "timed":
        return timed_drain(store, WorkerIdentity(sys.argv[3]), sys.argv[4])
    elif action == "churn":
        print("ready", flush=True)
        for index in itertools.count():
            store.add({"id": f"churn-{os.getpid()}-{index}", "prompt": "y" * 500})
    return 0


def timed_drain(store: TaskQueue, me: WorkerIdentity, output: str) -> int:
    with open(output, "w") as out:
        while True:
            claim = store.claim(me, lease_seconds=60)
            if claim.task is None:
                if claim.drained:
                    return 0
                store.wait_for_change(0.05, threading.Event())
                continue
            start = time.time()
            if not claim.task.parallel_safe:
                time.sleep(ALONE_SECONDS)
            out.write(f"{claim.task.id} {start} {time.time()}\n")
            out.flush()
            store.finish(claim.task.id, me, Status.COMPLETED)


if __name__ == "__main__":
    sys.exit(main())
