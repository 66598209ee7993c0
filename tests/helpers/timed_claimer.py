"""A worker reduced to its queue: claim, "run" for a moment, finish, until drained.

timed_claimer.py WORKSPACE NAME OUT

Writes one line per task to OUT: `id start end`, the moments (this host's clock) just
after its claim returned and just before its finish began, so a test can see which tasks
ran at the same time. A task that must run alone is held a little longer, to give an
overlap the chance to show. The queue is the workspace's queue.json, or the database
SWARM_DATABASE_URL names.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from swarm_runtime.contract import Status
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
    me = WorkerIdentity(sys.argv[2])
    with open(sys.argv[3], "w") as out:
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
            end = time.time()
            out.write(f"{claim.task.id} {start} {end}\n")
            out.flush()
            store.finish(claim.task.id, me, Status.COMPLETED)


if __name__ == "__main__":
    sys.exit(main())
