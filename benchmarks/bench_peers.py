"""Peers: Huey and RQ on the same local and llm workloads as ours, round by round.

Each workload is drained by ours (swarm.py and N `worker.py`, every phase on), by Huey
(SQLite storage with its defaults, N worker processes) and, where `redis-server` is on
PATH, by RQ (N SimpleWorker processes, Redis with `appendfsync always`); the systems take
turns within a round, in reverse order every other round. Local: 200 `echo` tasks (a
Huey or RQ task runs the same `echo` through subprocess). LLM: 64 tasks against the
loopback provider (tests/fake_llm_server.py) answering after 100 ms (a Huey or RQ task
POSTs the same chat-completions request with requests). 1 and 4 workers each; and local
tasks with one worker again, ours with review off (SWARM_REVIEW=false: no critic, gate
or reward), the peers as always.

Start-up is not timed: the workers are started and waited for until every one is ready
and idle; the clock runs from the start of the enqueue (each system's own way of adding
work) until the last task has finished, polled every 20 ms. Every task must succeed.
Reported: tasks/s per system, and ours ÷ theirs within each round, their span and
median. Targets, ours ÷ Huey judged by the median of the rounds (as every figure in
BENCHMARKS.md is a median): at least 0.5× on local tasks with one worker, 0.8× with
review off, 0.95× on llm tasks with four workers.

    python benchmarks/bench_peers.py [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import peer_workers
from bench_llm_scaling import FinalWatch, provider_env, wait_for
from benchlib import ROOT, Child, Figure, clean_env, median, print_table
from fake_llm_server import FakeLLMServer

from swarm_runtime.contract import Status
from swarm_runtime.processes import stop_gracefully
from swarm_runtime.queue.store import QueueStore
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace

NAME = "9 peers"
TASKS = {"local": 200, "llm": 64}
WORKER_COUNTS = (1, 4)
PROVIDER_DELAY_SECONDS = 0.1
PEER_WORKERS = str(Path(peer_workers.__file__).relative_to(ROOT))
RQ_QUEUE = "bench"
INSTALL_HINT = "pip install -e '.[bench]', or python3 run.py bench"


@dataclass(frozen=True)
class Workload:
    kind: str  # "local" or "llm"
    workers: int
    review: bool = True  # ours only: the peers have no review phase

    @property
    def tasks(self) -> int:
        return TASKS[self.kind]

    @property
    def label(self) -> str:
        label = f"{self.kind}, {self.workers} worker{'s' if self.workers > 1 else ''}"
        return label if self.review else f"{label}, review off"


WORKLOADS = [
    *(Workload(kind, workers) for kind in TASKS for workers in WORKER_COUNTS),
    Workload("local", 1, review=False),
]
# Ours ÷ Huey, the median of the rounds, at least:
HUEY_TARGETS = {
    Workload("local", 1): 0.5,
    Workload("local", 1, review=False): 0.8,
    Workload("llm", 4): 0.95,
}


class Fleet(Protocol):
    """A system's workers, started, ready and idle."""

    def add(self, count: int) -> None: ...

    def done(self, count: int) -> bool: ...

    def check(self, count: int) -> None:
        """Raise unless every task succeeded."""


Starter = Callable[[Workload], AbstractContextManager[Fleet]]


@dataclass(frozen=True)
class System:
    name: str
    start: Starter


def drain(system: System, workload: Workload) -> float:
    """Tasks per second from the start of the enqueue to the last task finished."""
    with system.start(workload) as fleet:
        begin = time.perf_counter()
        fleet.add(workload.tasks)
        wait_for(lambda: fleet.done(workload.tasks))
        elapsed = time.perf_counter() - begin
        fleet.check(workload.tasks)
    return workload.tasks / elapsed


def ready_when(children: list[Child], ready: Callable[[], bool]) -> Callable[[], bool]:
    """A readiness check that fails at once when a process died starting."""

    def check() -> bool:
        for child in children:
            if child.proc.poll() is not None:
                command = " ".join(str(arg) for arg in child.proc.args)
                raise RuntimeError(f"exited with {child.proc.returncode}: {command}")
        return ready()

    return check


def stop_all(children: list[Child]) -> None:
    for child in reversed(children):
        child.stop()


# --- ours ------------------------------------------------------------------------------


class OurFleet:
    def __init__(self, workspace: Workspace, store: QueueStore, workload: Workload):
        self.workspace, self.store, self.kind = workspace, store, workload.kind
        self.final = Status.APPROVED if workload.review else Status.COMPLETED
        self.watch = FinalWatch(workspace)

    def add(self, count: int) -> None:
        if self.kind == "local":
            tasks = [
                {"id": f"t{i}", "mode": "local", "command": f"echo task {i}"} for i in range(count)
            ]
        else:
            tasks = [
                {"id": f"t{i}", "mode": "llm", "prompt": f"Say hello to {i}"} for i in range(count)
            ]
        self.store.add_many(tasks)

    def done(self, count: int) -> bool:
        return self.watch()

    def check(self, count: int) -> None:
        statuses = [task.status for task in self.store.load().tasks]
        if len(statuses) != count or set(statuses) != {self.final}:
            raise RuntimeError(f"ours: tasks ended {sorted({s.value for s in statuses})}")


@contextlib.contextmanager
def our_fleet(provider_url: str, workload: Workload) -> Iterator[Fleet]:
    """swarm.py and N `worker.py` on a fresh workspace, as benchmarks 1 and 2 run them."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        workspace = Workspace(root)
        workspace.ensure_layout()
        env = provider_env(root, provider_url) | {"SWARM_REVIEW": str(workload.review).lower()}
        children = [Child(["swarm.py", "--port", "0"], env, wait_for_url=True)]
        try:
            store = QueueStore.for_settings(workspace, Settings(workspace=root))
            store.set_api_endpoint(str(children[0].url))
            for number in range(workload.workers):
                worker = ["worker.py", "--worker-id", f"bench-{number}"]
                children.append(Child(worker, env, wait_for_url=False))
            presence = workspace.workers_dir
            wait_for(
                ready_when(children, lambda: len(list(presence.glob("*.json"))) == workload.workers)
            )
            yield OurFleet(workspace, store, workload)
        finally:
            stop_all(children)


# --- Huey ------------------------------------------------------------------------------


class HueyFleet:
    def __init__(self, app: peer_workers.HueyApp, kind: str, provider_url: str):
        self.app, self.kind, self.provider_url = app, kind, provider_url
        self.results: list[Any] = []

    def add(self, count: int) -> None:
        """One enqueue, one commit, per task: Huey has no bulk enqueue."""
        if self.kind == "local":
            self.results = [self.app.echo(i) for i in range(count)]
        else:
            self.results = [self.app.chat(self.provider_url, i) for i in range(count)]

    def done(self, count: int) -> bool:
        return int(self.app.huey.result_count()) >= count

    def check(self, count: int) -> None:
        """`get` raises for a task that failed; a result is there for every task."""
        values = [result.get() for result in self.results]
        if len(values) != count or None in values:
            raise RuntimeError("huey: not every task returned its result")


@contextlib.contextmanager
def huey_fleet(provider_url: str, workload: Workload) -> Iterator[Fleet]:
    """Huey's consumer with N worker processes on a fresh SQLite file."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        db, ready = root / "huey.db", root / "ready"
        ready.mkdir()
        app = peer_workers.huey_app(db)  # creates the tables before the consumer opens them
        serve = [PEER_WORKERS, "huey", str(db), str(ready), str(workload.workers)]
        children = [Child(serve, clean_env(root), wait_for_url=False)]
        try:
            wait_for(ready_when(children, lambda: len(list(ready.iterdir())) == workload.workers))
            yield HueyFleet(app, workload.kind, provider_url)
        finally:
            stop_all(children)
            app.huey.storage.close()


# --- RQ --------------------------------------------------------------------------------


class RQFleet:
    def __init__(self, queue: Any, kind: str, provider_url: str):
        self.queue, self.kind, self.provider_url = queue, kind, provider_url

    def add(self, count: int) -> None:
        """RQ's bulk enqueue: every job in one pipeline."""
        if self.kind == "local":
            jobs = [self.queue.prepare_data(peer_workers.run_echo, (i,)) for i in range(count)]
        else:
            jobs = [
                self.queue.prepare_data(peer_workers.ask_provider, (self.provider_url, i))
                for i in range(count)
            ]
        self.queue.enqueue_many(jobs)

    def finished(self) -> int:
        return int(self.queue.finished_job_registry.count)

    def failed(self) -> int:
        return int(self.queue.failed_job_registry.count)

    def done(self, count: int) -> bool:
        return self.finished() + self.failed() >= count

    def check(self, count: int) -> None:
        if self.finished() != count:
            raise RuntimeError(f"rq: {self.failed()} of {count} jobs failed")


@contextlib.contextmanager
def rq_fleet(redis_url: str, provider_url: str, workload: Workload) -> Iterator[Fleet]:
    """N SimpleWorker processes on an emptied Redis."""
    from redis import Redis
    from rq import Queue, Worker

    connection = Redis.from_url(redis_url)
    connection.flushall()
    queue = Queue(RQ_QUEUE, connection=connection)
    with tempfile.TemporaryDirectory() as folder:
        env = clean_env(Path(folder))
        serve = [PEER_WORKERS, "rq", redis_url, RQ_QUEUE]
        children = [Child(serve, env, wait_for_url=False) for _ in range(workload.workers)]
        try:
            wait_for(
                ready_when(
                    children, lambda: Worker.count(connection=connection) == workload.workers
                )
            )
            yield RQFleet(queue, workload.kind, provider_url)
        finally:
            stop_all(children)
            connection.close()


def rq_missing() -> str | None:
    """Why RQ cannot run here; Redis is never required."""
    for module in ("rq", "redis"):
        if importlib.util.find_spec(module) is None:
            return f"the {module} package is not installed ({INSTALL_HINT})"
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH"
    return None


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, every write fsynced before the
    reply (appendonly, appendfsync always), no snapshots."""
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", folder]
        command += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            wait_for(lambda: server.poll() is None and answers(url))
            yield url
        finally:
            stop_gracefully(server)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(url: str) -> bool:
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisDown

    try:
        with Redis.from_url(url) as connection:
            return bool(connection.ping())
    except RedisDown:
        return False


# --- the rounds ------------------------------------------------------------------------


def systems(provider_url: str, redis_url: str | None) -> list[System]:
    found = [
        System("ours", lambda w: our_fleet(provider_url, w)),
        System("Huey", lambda w: huey_fleet(provider_url, w)),
    ]
    if redis_url is not None:
        found.append(System("RQ", lambda w: rq_fleet(redis_url, provider_url, w)))
    return found


def measure(
    rounds: int, provider_url: str, redis_url: str | None
) -> dict[str, dict[Workload, list[float]]]:
    """tasks/s per system and workload, one entry per round; the systems take turns."""
    everyone = systems(provider_url, redis_url)
    rates: dict[str, dict[Workload, list[float]]] = {
        s.name: {w: [] for w in WORKLOADS} for s in everyone
    }
    for number in range(rounds):
        order = everyone if number % 2 == 0 else everyone[::-1]
        for workload in WORKLOADS:
            for system in order:
                rates[system.name][workload].append(drain(system, workload))
            print(
                f"  round {number + 1}, {workload.label}: {round_line(rates, workload)}", flush=True
            )
    return rates


def round_line(rates: dict[str, dict[Workload, list[float]]], workload: Workload) -> str:
    ours = rates["ours"][workload][-1]
    parts = [f"ours {ours:.1f}/s"]
    for name, by_workload in rates.items():
        if name != "ours":
            theirs = by_workload[workload][-1]
            parts.append(f"{name} {theirs:.1f}/s (ours ÷ {name} {ours / theirs:.2f})")
    return ", ".join(parts)


def span(values: list[float], digits: int) -> str:
    low, high = (f"{value:.{digits}f}" for value in (min(values), max(values)))
    return low if low == high else f"{low}–{high}"


def figures(rates: dict[str, dict[Workload, list[float]]], rq_skipped: str | None) -> list[Figure]:
    found = []
    for workload, ours in rates["ours"].items():
        found.append(Figure(NAME, f"{workload.label}: ours", f"{span(ours, 1)} tasks/s"))
        for name, by_workload in rates.items():
            if name != "ours":
                found.append(ratio_figure(workload, name, ours, by_workload[workload]))
    if rq_skipped:
        found.append(Figure(NAME, "RQ", f"skipped: {rq_skipped}"))
    return found


def ratio_figure(workload: Workload, name: str, ours: list[float], theirs: list[float]) -> Figure:
    """Their rates, and ours ÷ theirs round by round: the span, and the median that a
    target (against Huey, where there is one) is judged by."""
    ratios = [mine / other for mine, other in zip(ours, theirs, strict=True)]
    middle = median(ratios)
    value = f"{span(theirs, 1)} tasks/s; ours ÷ {name} {span(ratios, 2)}, median {middle:.2f}"
    target = HUEY_TARGETS.get(workload) if name == "Huey" else None
    if target is None:
        return Figure(NAME, f"{workload.label}: {name}", value)
    return Figure(NAME, f"{workload.label}: {name}", value, f">= {target}x", middle >= target)


def run(quick: bool = False, rounds: int | None = None) -> list[Figure]:
    rounds = rounds or (1 if quick else 4)
    if importlib.util.find_spec("huey") is None:
        reason = f"skipped: the huey package is not installed ({INSTALL_HINT})"
        print(f"  {reason}")
        return [Figure(NAME, "Huey and RQ", reason)]
    rq_skipped = rq_missing()
    if rq_skipped:
        print(f"  RQ skipped: {rq_skipped}", flush=True)
    with contextlib.ExitStack() as stack:
        provider = stack.enter_context(FakeLLMServer(delay=PROVIDER_DELAY_SECONDS))
        redis_url = None if rq_skipped else stack.enter_context(redis_server())
        rates = measure(rounds, provider.url, redis_url)
    return figures(rates, rq_skipped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="rounds (default 4, quick 1)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print_table(run(args.quick, args.rounds))


if __name__ == "__main__":
    main()
