"""Run worker.py with its failpoints counted instead of armed by name.

    SWARM_FAILPOINTS=counted SWARM_FAILPOINT_CENSUS=/tmp/names python counted_failpoints.py --once
        records the name of every failpoint the worker passes, once each, in the order it
        first passes them, and kills nothing;
    SWARM_FAILPOINTS=counted SWARM_FAILPOINT_AT='queue.journal_appended#3' python ...
        SIGKILLs the worker the 3rd time it passes that failpoint (`SWARM_FAILPOINTS=name`
        can only kill it the first time).

SWARM_FAILPOINTS must be set (to any name) so that the code builds the names of its
failpoints; `failpoints.armed` is replaced by a set that sees each name asked about."""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CENSUS_ENV = "SWARM_FAILPOINT_CENSUS"
AT_ENV = "SWARM_FAILPOINT_AT"


class Counted(frozenset[str]):
    """Holds no name: counts each one asked about, records it, and dies at the chosen pass."""

    def __init__(self) -> None:
        self.passes: Counter[str] = Counter()
        target = os.environ.get(AT_ENV, "")
        name, _, nth = target.rpartition("#")
        self.target = (name, int(nth)) if name else None
        self.census = os.environ.get(CENSUS_ENV)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        self.passes[name] += 1
        if self.census and self.passes[name] == 1:
            with open(self.census, "a", encoding="utf-8") as out:
                out.write(name + "\n")
        if self.target == (name, self.passes[name]):
            os.kill(os.getpid(), signal.SIGKILL)
        return False


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from swarm_runtime.launch import worker
    from swarm_runtime.store import failpoints

    counted = Counted()
    failpoints.armed = lambda: counted
    sys.argv[0] = str(ROOT / "worker.py")
    sys.exit(worker())
