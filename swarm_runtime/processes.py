"""Two questions every supervisor of the runtime's processes asks: is that pid still
there, and how to stop a child so it can finish what it holds."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

STOP_GRACE_SECONDS = 20.0


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
