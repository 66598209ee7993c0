"""Named crash points, so tests can kill a real process at an exact instant.

A crash-safety claim ("a crash between the balance write and the ledger write pays
nothing twice") can only be tested by crashing there. Code marks such instants with
`failpoint("reward.after_balances")`; a process started with
`SWARM_FAILPOINTS=reward.after_balances` kills itself with SIGKILL when it gets there,
exactly like a power cut would: no cleanup, no finally blocks, no flushing.

With the variable unset (always, outside tests) a failpoint costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

FAILPOINTS_ENV = "SWARM_FAILPOINTS"


def armed() -> frozenset[str]:
    return frozenset(
        name.strip() for name in os.environ.get(FAILPOINTS_ENV, "").split(",") if name.strip()
    )


def any_armed() -> bool:
    """One environment lookup: lets a hot path skip building failpoint names outside tests."""
    return bool(os.environ.get(FAILPOINTS_ENV))


def failpoint(name: str) -> None:
    """Die here, at once, if the operator's test armed `name`."""
    if name in armed():
        os.kill(os.getpid(), signal.SIGKILL)
