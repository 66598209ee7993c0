"""Whether a lease's holder is still there: this process's own leases, and others'."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from swarm_runtime.contract import Lease
from swarm_runtime.queue.leases import HOST, holder_is_alive, process_start_time, started_once

NOW = time.time()


def lease(pid: int, pid_started: float | None, host: str = HOST) -> Lease:
    return Lease(
        worker_id="w",
        pid=pid,
        host=host,
        pid_started=pid_started,
        claimed_at=NOW,
        expires_at=NOW + 30,
    )


def test_this_process_start_time_is_the_kernels() -> None:
    assert started_once(os.getpid()) == process_start_time(os.getpid()) is not None


@pytest.mark.parametrize(
    ("started_offset", "alive"),
    [(0.0, True), (None, True), (-100.0, False)],
    ids=["this process", "no start time", "an earlier process with this pid"],
)
def test_a_lease_naming_this_pid_is_alive_only_if_it_is_this_process(
    started_offset: float | None, alive: bool
) -> None:
    own_start = process_start_time(os.getpid())
    assert own_start is not None
    started = None if started_offset is None else own_start + started_offset
    assert holder_is_alive(lease(os.getpid(), started)) is alive


def test_a_lease_of_a_process_that_exited_is_dead_and_one_on_another_host_is_trusted() -> None:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    gone = int(child.stdout)
    assert not holder_is_alive(lease(gone, None))
    assert holder_is_alive(lease(gone, None, host=f"not-{HOST}"))
