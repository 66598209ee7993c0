"""Two questions every supervisor of the runtime's processes asks: is that pid still
there, and how to stop a child so it can finish what it holds."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import Any

STOP_GRACE_SECONDS = 20.0
# Set by a launcher (run.py) for its children: the pid whose death they must not outlive.
SUPERVISOR_PID_VARIABLE = "SWARM_SUPERVISOR_PID"
SUPERVISOR_POLL_SECONDS = 0.5


def process_exists(pid: int) -> bool:
    """False only when there is provably no such process on this host; a process we may
    not signal (another user's) still exists."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_gracefully(proc: subprocess.Popen[Any], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM lets a worker finish the task in hand; SIGKILL only after the grace period."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def exit_with_supervisor(environ: Mapping[str, str] = os.environ) -> None:
    """When a launcher named itself in SWARM_SUPERVISOR_PID, stop (by SIGTERM to ourselves,
    so the usual clean shutdown runs) as soon as it is gone, however it died: `kill -9`
    gives it no chance to stop us, and a child in a session of its own hears no hangup.

    Death is seen as our parent changing (we were adopted) or the pid vanishing."""
    raw = environ.get(SUPERVISOR_PID_VARIABLE, "")
    if not raw.isdigit():
        return
    supervisor = int(raw)
    threading.Thread(
        target=_watch, args=(supervisor,), name="supervisor-watch", daemon=True
    ).start()


def _watch(supervisor: int) -> None:
    while os.getppid() == supervisor and process_exists(supervisor):
        time.sleep(SUPERVISOR_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)
