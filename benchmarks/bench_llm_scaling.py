"""LLM-path throughput and worker scaling against a provider that answers after 100 ms.

A loopback OpenAI-compatible server (tests/fake_llm_server.py) holds every answer back
by `--delay`; swarm.py talks to it as to any provider. For 1, 2, 4 and 8 workers,
started idle and waiting for work, the same number of llm tasks per worker is added at
once and timed until every task is final (approved after review). Comparison point: one
worker; the ideal speed-up with N workers is N. Targets: 4 workers >= 3.7x, 8 workers
>= 7x.

Each worker gets the same number of tasks, so that every measurement is as many rounds
of provider calls long. With a fixed 64 tasks, eight workers had eight each: a run was
eight rounds, and its first (every worker claiming at once) and its last (partly idle
as the workers run out of tasks) were a large share of it, where one worker's 64
rounds hid them.

    python benchmarks/bench_llm_scaling.py [--per-worker N] [--runs R] [--delay S] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from benchlib import Child, Figure, clean_env, cpu_seconds, median, print_table
from fake_llm_server import FakeLLMServer

from swarm_runtime.contract import Status
from swarm_runtime.queue.store import QueueStore
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace, read_json

NAME = "2 LLM worker scaling"
WORKER_COUNTS = (1, 2, 4, 8)
TARGETS = {4: 3.7, 8: 7.0}
FINAL = {
    Status.APPROVED,
    Status.COMPLETED,  # the end when review is off
    Status.FAILED,
    Status.SAFETY_BLOCKED,
    Status.CANCELLED,
}
DEADLINE_SECONDS = 300.0


def provider_env(root: Path, provider_url: str) -> dict[str, str]:
    """A workspace's environment for llm tasks against the loopback provider, with no
    rate limit to hold them back."""
    return clean_env(
        root,
        SWARM_LLM_BASE_URL=provider_url,
        SWARM_LLM_MODEL="local-model",
        SWARM_RATE_LIMIT="1000000",
    )


def tasks_per_second(provider_url: str, workers: int, tasks: int) -> tuple[float, float]:
    """Throughput, and the CPU seconds per task that workers and API used meanwhile."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        workspace = Workspace(root)
        workspace.ensure_layout()
        env = provider_env(root, provider_url)
        api = Child(["swarm.py", "--port", "0"], env, wait_for_url=True)
        started: list[Child] = []
        try:
            store = QueueStore.for_settings(workspace, Settings(workspace=root))
            store.set_api_endpoint(api.url)
            for number in range(workers):
                started.append(
                    Child(["worker.py", "--worker-id", f"bench-{number}"], env, wait_for_url=False)
                )
            wait_for(lambda: len(list(workspace.workers_dir.glob("*.json"))) == workers)
            pids = [child.proc.pid for child in [*started, api]]
            cpu_before = sum(map(cpu_seconds, pids))
            store.add_many(
                [
                    {"id": f"t{i}", "mode": "llm", "prompt": f"Say hello to {i}"}
                    for i in range(tasks)
                ]
            )
            begin = time.perf_counter()
            wait_for(FinalWatch(workspace))
            elapsed = time.perf_counter() - begin
            cpu = sum(map(cpu_seconds, pids)) - cpu_before
            statuses = {t.status for t in store.load().tasks}
            if statuses != {Status.APPROVED}:
                raise RuntimeError(f"tasks ended {sorted(s.value for s in statuses)}")
            return tasks / elapsed, cpu / tasks
        finally:
            for child in [*started, api]:
                child.stop()


class FinalWatch:
    """Whether every task is final, read as cheaply as a watcher can: queue.json again
    only when it was replaced (a fold, about once a second), and of its journal only
    the lines appended since the last look.

    A plain read, not the validating store: the watcher must not take CPU from the
    processes it measures. Reading both files whole every 20 ms did: at 160 llm tasks
    (4 workers) it cost 2.4 ms a poll, about a tenth of a core, and a local drain's
    journal holds up to a second of records, re-parsed at every poll; Huey's watcher is
    one small query. A journal that is not the one followed so far (the fold removed
    it, a transaction started another) is read from its first record, on top of
    queue.json read again. Statuses only move towards final here, so a poll that
    catches a fold half-way sees too few tasks final, never too many, and the next poll
    sees them all."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.statuses: dict[str, str] = {}
        self.queue_version: tuple[int, int, int] | None = None
        self.journal_inode: int | None = None
        self.journal_read = 0

    def __call__(self) -> bool:
        self._read_queue()
        self._read_journal()
        return all(status in FINAL for status in self.statuses.values())

    def _read_queue(self) -> None:
        info = os.stat(self.workspace.queue_path)
        version = (info.st_ino, info.st_mtime_ns, info.st_size)
        if version != self.queue_version:
            tasks = read_json(self.workspace.queue_path)["tasks"]
            self.statuses = {task["id"]: task["status"] for task in tasks}
            self.queue_version, self.journal_inode = version, None

    def _read_journal(self) -> None:
        try:
            with open(self.workspace.queue_journal_path, "rb") as handle:
                data = self._unread(handle)
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self.journal_read += len(complete)
        for line in complete.splitlines():
            with contextlib.suppress(ValueError):  # not a record of this format
                tasks = json.loads(line).get("tasks", [])
                self.statuses.update((task["id"], task["status"]) for task in tasks)

    def _unread(self, handle: BinaryIO) -> bytes:
        inode = os.fstat(handle.fileno()).st_ino
        if inode != self.journal_inode:
            self.journal_inode, self.journal_read = inode, len(handle.readline())
        handle.seek(self.journal_read)
        return handle.read()


def wait_for(condition: object, interval: float = 0.02) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not done within {DEADLINE_SECONDS:.0f} s")
        time.sleep(interval)


def run(
    quick: bool = False, per_worker: int | None = None, runs: int | None = None, delay: float = 0.1
) -> list[Figure]:
    per_worker = per_worker or (16 if quick else 32)
    runs = runs or (1 if quick else 3)
    rates: dict[int, list[float]] = {n: [] for n in WORKER_COUNTS}
    cpu: dict[int, list[float]] = {n: [] for n in WORKER_COUNTS}
    with FakeLLMServer(delay=delay) as provider:
        for number in range(runs):
            for workers in WORKER_COUNTS:
                tasks = per_worker * workers
                rate, cpu_per_task = tasks_per_second(provider.url, workers, tasks)
                rates[workers].append(rate)
                cpu[workers].append(cpu_per_task)
                print(
                    f"  run {number + 1}: {workers} worker(s), {tasks} tasks: {rate:.1f} tasks/s, "
                    f"{cpu_per_task * 1000:.0f} ms CPU per task",
                    flush=True,
                )
    base = median(rates[1])
    figures = [
        Figure(
            NAME,
            f"1 worker ({delay * 1000:.0f} ms provider)",
            f"{base:.1f} tasks/s",
            f"ideal {1 / delay:.1f}/s",
        )
    ]
    for workers in WORKER_COUNTS[1:]:
        rate = median(rates[workers])
        target = TARGETS.get(workers)
        figures.append(
            Figure(
                NAME,
                f"{workers} workers",
                f"{rate:.1f} tasks/s = {rate / base:.2f}x",
                f">= {target}x" if target else f"ideal {workers}x",
                rate / base >= target if target else None,
            )
        )
    most = WORKER_COUNTS[-1]
    per_task = median(cpu[most])
    cores = os.cpu_count() or 1
    figures.append(
        Figure(
            NAME,
            f"CPU per task with {most} workers (workers + API)",
            f"{per_task * 1000:.0f} ms: {cores} cores cap at {cores / per_task:.0f} tasks/s",
        )
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--per-worker", type=int, help="tasks per worker in each measurement (default 32, quick 16)"
    )
    parser.add_argument("--runs", type=int, help="runs to take the median of (default 3)")
    parser.add_argument("--delay", type=float, default=0.1, help="provider delay in seconds")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print_table(run(args.quick, args.per_worker, args.runs, args.delay))


if __name__ == "__main__":
    main()
