"""Runtime overhead per local task: worker.py + swarm.py against the bare commands.

Comparison point: the same `echo` commands run directly with `subprocess.run` in a loop.
The runtime's time per task is (worker run with N tasks - worker run with none) / N,
so the worker's start-up and exit are not charged to the tasks; each task goes the
whole way (claim, preflight, POST /cycle, the API's checks, the command, the critic,
the quality gate, the reward, every event). Targets: overhead <= 20 ms per task
(median), and one worker >= 30 local tasks/s.

    python benchmarks/bench_local_overhead.py [--tasks N] [--runs R] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchlib import (
    ROOT,
    Child,
    Figure,
    clean_env,
    durable_write_ms,
    median,
    print_table,
    seconds,
)

from swarm_runtime.contract import Status
from swarm_runtime.queue.store import QueueStore
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace

NAME = "1 local task overhead"
TARGET_OVERHEAD_MS = 20.0
TARGET_TASKS_PER_SECOND = 30.0
# Counted by benchmark 10 (`store.durability`): one fsynced queue-journal append per
# task, that of the transaction that commits its execution record with the worker's
# next claim, which also covers the verdict before it (appended without an fsync of its
# own); the fold's fsyncs, once a second, are shared by every task of that second.
FSYNCS_PER_TASK = 1


def direct_seconds_per_task(tasks: int) -> float:
    """The comparison point: the same commands, straight from a loop."""
    total = seconds(
        lambda: [
            subprocess.run(["echo", f"task {i}"], capture_output=True, check=True)
            for i in range(tasks)
        ]
    )
    return total / tasks


def worker_seconds(root: Path, api_url: str, tasks: int, run: int) -> float:
    """Wall time of `worker.py --once` draining `tasks` fresh echo tasks."""
    workspace = Workspace(root)
    store = QueueStore.for_settings(workspace, Settings(workspace=root))
    store.set_api_endpoint(api_url)
    store.add_many(
        [{"id": f"r{run}-t{i}", "mode": "local", "command": f"echo task {i}"} for i in range(tasks)]
    )
    elapsed = seconds(
        lambda: subprocess.run(
            [sys.executable, "worker.py", "--once"],
            cwd=ROOT,
            env=clean_env(root),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
    )
    doc = store.load()
    unfinished = [
        t.id for t in doc.tasks if t.id.startswith(f"r{run}-") and t.status != Status.APPROVED
    ]
    if unfinished:
        raise RuntimeError(f"tasks did not end approved: {unfinished[:5]}")
    return elapsed


def one_run(tasks: int) -> tuple[float, float]:
    """A fresh workspace and API per run, so no run inherits another's queue."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        Workspace(root).ensure_layout()
        api = Child(["swarm.py", "--port", "0"], clean_env(root), wait_for_url=True)
        try:
            return worker_seconds(root, api.url, 0, 0), worker_seconds(root, api.url, tasks, 1)
        finally:
            api.stop()


def run(quick: bool = False, tasks: int | None = None, runs: int | None = None) -> list[Figure]:
    tasks = tasks or (20 if quick else 60)
    runs = runs or (2 if quick else 5)
    runtime, direct = [], []
    for number in range(runs):
        empty, full = one_run(tasks)
        runtime.append((full - empty) / tasks)
        direct.append(direct_seconds_per_task(tasks))
        print(
            f"  run {number + 1}: worker start+exit {empty * 1000:.0f} ms, "
            f"{runtime[-1] * 1000:.1f} ms/task through the runtime, "
            f"{direct[-1] * 1000:.2f} ms/task direct",
            flush=True,
        )
    with tempfile.TemporaryDirectory() as folder:
        disk = durable_write_ms(Path(folder))
    per_task, bare = median(runtime), median(direct)
    overhead_ms = (per_task - bare) * 1000
    rate = 1 / per_task
    return [
        Figure(
            NAME,
            "overhead per task (median)",
            f"{overhead_ms:.1f} ms",
            f"<= {TARGET_OVERHEAD_MS:.0f} ms",
            overhead_ms <= TARGET_OVERHEAD_MS,
        ),
        Figure(
            NAME,
            "runtime vs direct subprocess",
            f"{per_task / bare:.1f}x ({per_task * 1000:.1f} vs {bare * 1000:.2f} ms)",
        ),
        Figure(
            NAME,
            "disk: one atomic state write",
            f"{disk:.2f} ms; a task makes {FSYNCS_PER_TASK} fsynced journal append",
        ),
        Figure(
            NAME,
            "one worker, local tasks/s",
            f"{rate:.1f}/s",
            f">= {TARGET_TASKS_PER_SECOND:.0f}/s",
            rate >= TARGET_TASKS_PER_SECOND,
        ),
    ]


def tasks_and_runs_main(
    doc: str | None, run: Callable[[bool, int | None, int | None], list[Figure]]
) -> None:
    """The command line of a benchmark of N tasks per run, R runs (this one's, and the
    cost breakdown's)."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, help="tasks per run (default 60, quick 20)")
    parser.add_argument("--runs", type=int, help="runs to take the median of (default 5)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print_table(run(args.quick, args.tasks, args.runs))


def main() -> None:
    tasks_and_runs_main(__doc__, run)


if __name__ == "__main__":
    main()
