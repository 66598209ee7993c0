"""Where a local task's time goes: wall time, CPU by process, fsyncs by kind, round trips.

One worker drains N `echo` tasks through a real `worker.py --once` and `swarm.py`, as in
benchmark 1, with every phase on and again with SWARM_REVIEW=false; then four workers
at once, every phase on (their fsyncs shared by group commit); then one worker, every
phase on, in a workspace that has reviewed and paid 5,000 tasks before (the quality
gate holds a change for each, the reward ledger a grant); the four taking turns run by
run. Each figure is per task: (a run with N tasks - a run with none) / N, each of
the two on an API of its own, so neither process's start-up, nor the API's first writes,
is charged to the tasks.

History: the review files (the gate, the reward ledger) are rewritten whole at each fold
of the queue journal, about once a second, and each worker process reads and validates
them once, on its first review. So a workspace's history costs a task two things, taken
apart by one more run of one worker, review on, fresh and after 5,000 reviews, with 6N
tasks:
- per task once a worker is running: (the 6N run - the N run) / 5N, which holds the
  folds of a second's work or more and none of the first read. Target: at most 1.5× as
  much after 5,000 reviews as in a fresh workspace;
- once per worker process: what its first N tasks took beyond N at that rate (the
  first read, validation and encoding of both documents), printed beside the fresh
  workspace's; and, for the record, the ratio of the first N tasks alone.

- wall: the worker process, start to exit;
- worker CPU: its user + system time (getrusage of the reaped child);
- API CPU: swarm.py's own, and apart from it its reaped children (the `echo`s), from
  /proc, over the worker's run only;
- fsyncs by kind, and the time spent in them: `swarm_runtime.store.durability`, which
  both processes report at exit (SWARM_FSYNC_REPORT);
- HTTP round trips: the requests swarm.py answered, from its access log (`--access-log`:
  one log line per request, charged to the API's CPU like the rest);
- comparison point: the same `echo` started by a bare `subprocess.run` in a loop.

The CPU spent inside fsync (the kernel's share of the call) is given apart and taken
out of its process's CPU, so the rows do not overlap. "Rest" is the wall time none of
them covers: waiting on the other process, the socket, the scheduler; it goes negative
when the two processes work at the same time.

    PYTHONPATH=tests python benchmarks/bench_task_cost.py [--tasks N] [--runs R] [--quick]
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench_fleet import cpu_with_reaped
from bench_local_overhead import direct_seconds_per_task, tasks_and_runs_main
from benchlib import (
    ROOT,
    Child,
    Figure,
    clean_env,
    cpu_seconds,
    load_average,
    median,
    seconds,
)

from swarm_runtime.contract import Status
from swarm_runtime.phases.quality_gate import GateDocument
from swarm_runtime.phases.rewards import RewardLedger
from swarm_runtime.queue.store import QueueStore
from swarm_runtime.settings import Settings
from swarm_runtime.store.durability import REPORT_ENV
from swarm_runtime.store.state_files import Workspace, dump_json

NAME = "10 task cost"
ACCESS_LINE = re.compile(r" swarm: ([A-Z]+ \S+) \d{3} \d+ ms$")
# name: (review, workers, tasks reviewed before)
SETUPS = {
    "review on": (True, 1, 0),
    "review off": (False, 1, 0),
    "4 workers": (True, 4, 0),
    "5,000 reviewed": (True, 1, 5000),
}
HISTORY_TARGET = 1.5
LONGER = 6  # the long run's tasks, in multiples of N
RUNNING = ("review on", "5,000 reviewed")  # the setups also run with LONGER × N tasks
FINAL = {True: Status.APPROVED, False: Status.COMPLETED}
WALL, WORKER, API, ECHO = "wall", "worker CPU", "API CPU", "echo CPU"
FSYNC_CPU, FSYNC_WAIT, REST = "fsync CPU", "fsync wait", "rest"


@dataclass
class Cost:
    """What worker runs cost, in seconds or counts: in total, per task, or a median.

    `parts` holds the wall time and the CPU by process; the three Counters, fsyncs by
    kind, the time inside them by kind, and requests by method and path."""

    parts: Counter[str] = field(default_factory=Counter)
    fsyncs: Counter[str] = field(default_factory=Counter)
    fsync_seconds: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)

    def counters(self) -> tuple[Counter[str], ...]:
        return self.parts, self.fsyncs, self.fsync_seconds, self.requests

    def per_task(self, empty: Cost, tasks: int) -> Cost:
        """(this run - the run with no tasks) / tasks, and the rest of the wall time."""
        cost = Cost(
            *(
                Counter({key: (full[key] - none[key]) / tasks for key in full | none})
                for full, none in zip(self.counters(), empty.counters(), strict=True)
            )
        )
        covered = [WORKER, API, ECHO, FSYNC_WAIT]
        cost.parts[FSYNC_WAIT] = cost.fsync_seconds.total() - cost.parts[FSYNC_CPU]
        cost.parts[REST] = cost.parts[WALL] - sum(cost.parts[part] for part in covered)
        return cost

    def add_report(self, report: Path, process: str) -> None:
        """A process's fsync report: its counts and times by kind, its CPU inside fsync."""
        for kind, tally in json.loads(report.read_text()).items():
            self.fsyncs[kind] += tally["count"]
            self.fsync_seconds[kind] += tally["seconds"]
            self.parts[FSYNC_CPU] += tally["cpu_seconds"]
            self.parts[f"{process} {FSYNC_CPU}"] += tally["cpu_seconds"]
            self.parts[f"{process} fsyncs"] += tally["count"]


class CountedApi(Child):
    """swarm.py with its access log on, counting the requests it answered by method and path."""

    def __init__(self, env: dict[str, str]):
        self.requests: Counter[str] = Counter()
        self.drained = threading.Event()
        super().__init__(["swarm.py", "--port", "0", "--access-log"], env, wait_for_url=True)

    def _drain(self) -> None:
        for line in self.proc.stdout:
            match = ACCESS_LINE.search(line.rstrip())
            if match:
                self.requests[match.group(1)] += 1
        self.drained.set()

    def stop_counted(self) -> Counter[str]:
        self.stop()
        self.drained.wait(10)
        return self.requests


def seed_reviews(workspace: Workspace, count: int) -> None:
    """What `count` earlier reviewed and paid tasks leave: a gate change and a ledger
    grant each (validated as the runtime would read them)."""
    at = "2026-01-01T00:00:00+00:00"
    vote = {"decision": "approved", "verdict": "APPROVE", "confidence": 0.9, "attempt": 0}
    changes = {
        f"old-{n}": {
            "change_id": f"old-{n}",
            "title": f"echo task {n}",
            "description": f"echo task {n}",
            "author_id": "resident_default",
            "created_at": at,
            "status": "needs_qa",
            "vote": vote | {"voted_at": at},
        }
        for n in range(count)
    }
    gate = {"version": 1, "created_at": at, "updated_at": at, "changes": changes}
    grant = {"identity_id": "earlier", "tokens_requested": 1, "granted_at": at, "reason": "old"}
    grants = {
        f"old-{n}::earlier": grant
        | {"task_id": f"old-{n}", "state": "applied"}
        | {"free_time_awarded": 1, "journal_awarded": 0, "tokens_awarded": 1}
        for n in range(count)
    }
    ledger = {"version": 1, "grants": grants}
    GateDocument.model_validate(gate)
    RewardLedger.model_validate(ledger)
    workspace.quality_gate_path.write_bytes(dump_json(gate))
    workspace.reward_ledger_path.write_bytes(dump_json(ledger))


def worker_cost(root: Path, tasks: int, review: bool, workers: int = 1) -> Cost:
    """An API of its own; `workers` × `worker.py --once` drain `tasks` echo tasks."""
    env = clean_env(root, SWARM_REVIEW=str(review).lower())
    api = CountedApi({**env, REPORT_ENV: str(root / "api-fsyncs.json")})
    cost = Cost()
    try:
        store = QueueStore.for_settings(Workspace(root), Settings(workspace=root))
        store.set_api_endpoint(api.url or "")
        store.add_many([echo_task(i) for i in range(tasks)])
        api_before, echo_before = cpu_seconds(api.proc.pid), cpu_with_reaped(api.proc.pid)
        worker_before = reaped_cpu()
        reports = [root / f"w{number}.json" for number in range(workers)]
        cost.parts[WALL] = seconds(lambda: run_workers(env, reports))
        cost.parts[WORKER] = reaped_cpu() - worker_before
        cost.parts[API] = cpu_seconds(api.proc.pid) - api_before
        cost.parts[ECHO] = cpu_with_reaped(api.proc.pid) - echo_before - cost.parts[API]
        check_final(store, FINAL[review])
    finally:
        cost.requests = api.stop_counted()
    for report in reports:
        cost.add_report(report, "worker")
    cost.add_report(root / "api-fsyncs.json", "API")
    return cost


def echo_task(number: int) -> dict[str, str]:
    return {"id": f"t{number}", "mode": "local", "command": f"echo task {number}"}


def run_workers(env: dict[str, str], reports: list[Path]) -> None:
    """One `worker.py --once` per report path, all at once; returns when all exited 0."""
    workers = [
        subprocess.Popen(
            [sys.executable, "worker.py", "--once", "--worker-id", f"cost-{number}"],
            cwd=ROOT,
            env=env | {REPORT_ENV: str(report)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for number, report in enumerate(reports)
    ]
    codes = [worker.wait() for worker in workers]
    if any(codes):
        raise RuntimeError(f"a worker exited {codes}")


def reaped_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def check_final(store: QueueStore, final: Status) -> None:
    stuck = [task.id for task in store.load().tasks if task.status != final]
    if stuck:
        raise RuntimeError(f"tasks did not end {final.value}: {stuck[:5]}")


def setup_run(name: str, tasks: int) -> SetupCost:
    """A setup's runs of none and of `tasks` tasks, and of LONGER × `tasks` for the
    setups whose running cost is compared (`RUNNING`)."""
    review, workers, history = SETUPS[name]
    counts = (0, tasks, LONGER * tasks) if name in RUNNING else (0, tasks)
    empty, short, *longer = counted_runs(counts, review, workers, history)
    steady = longer[0].per_task(short, (LONGER - 1) * tasks) if longer else None
    return SetupCost(tasks, short.per_task(empty, tasks), steady)


def counted_runs(counts: tuple[int, ...], review: bool, workers: int, history: int) -> list[Cost]:
    """One run per count of tasks, each in a workspace and on an API of its own."""
    costs = []
    for count in counts:
        with tempfile.TemporaryDirectory() as folder:
            workspace = Workspace(Path(folder))
            workspace.ensure_layout()
            seed_reviews(workspace, history)
            costs.append(worker_cost(Path(folder), count, review, workers))
    return costs


@dataclass
class SetupCost:
    """What a setup's first `tasks` cost per task (`first`) and, where it was measured,
    what a task costs once its worker is running (`steady`)."""

    tasks: int
    first: Cost
    steady: Cost | None

    def running(self) -> Cost:
        assert self.steady is not None, "a setup of RUNNING"
        return self.steady

    def one_off(self) -> float:
        """The wall time the first tasks took beyond their count at the running rate."""
        return self.tasks * (self.first.parts[WALL] - self.running().parts[WALL])


def middle(costs: list[Cost]) -> Cost:
    """The median of each part over the runs (so the parts need not add up exactly)."""

    def each(counters: tuple[Counter[str], ...]) -> Counter[str]:
        keys = set().union(*counters)
        return Counter({key: median(counter[key] for counter in counters) for key in keys})

    return Cost(*(each(counters) for counters in zip(*(c.counters() for c in costs), strict=True)))


def print_breakdown(costs: dict[str, Cost], bare: float) -> None:
    names = list(costs)
    heading = "".join(f"{name:>22}" for name in names)

    def row(label: str, value: Callable[[Cost], float]) -> None:
        cells = []
        for name in names:
            ms, wall = value(costs[name]) * 1000, costs[name].parts[WALL] * 1000
            cells.append(f"{ms:8.2f} ms {ms / wall:6.0%}")
        print(f"  {label:<34}" + "".join(f"{cell:>22}" for cell in cells))

    print(f"\n  {'per task, share of wall time':<34}{heading}")
    row("wall time", lambda c: c.parts[WALL])
    row("worker CPU, outside fsync", lambda c: c.parts[WORKER] - c.parts["worker fsync CPU"])
    row("swarm.py CPU, outside fsync", lambda c: c.parts[API] - c.parts["API fsync CPU"])
    row("echo child CPU (reaped by swarm.py)", lambda c: c.parts[ECHO])
    row("fsync, on CPU (kernel)", lambda c: c.parts[FSYNC_CPU])
    row("fsync, waiting for the disk", lambda c: c.parts[FSYNC_WAIT])
    row("rest: waits, socket, scheduler", lambda c: c.parts[REST])
    row("bare subprocess.run(['echo'])", lambda c: bare)
    print(f"\n  {'fsyncs per task, by kind':<34}{heading}")
    kinds = sorted({kind for c in costs.values() for kind, n in c.fsyncs.items() if n >= 0.005})
    for kind in [*kinds, None]:
        cells = []
        for cost in costs.values():
            count = cost.fsyncs.total() if kind is None else cost.fsyncs[kind]
            spent = cost.fsync_seconds.total() if kind is None else cost.fsync_seconds[kind]
            cells.append(f"{count:5.2f} = {spent * 1000:6.2f} ms")
        print(f"  {kind or 'all':<34}" + "".join(f"{cell:>22}" for cell in cells))
    by_api = "".join(f"{c.parts['API fsyncs']:>11.2f}{'':11}" for c in costs.values())
    print(f"  {'of which by swarm.py':<34}{by_api}")
    for name, cost in costs.items():
        trips = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cost.requests.items()) if v)
        print(f"  HTTP round trips per task, {name}: {cost.requests.total():.2f} ({trips})")


def figures(name: str, cost: Cost, bare: float) -> list[Figure]:
    wall, part = cost.parts[WALL], cost.parts
    in_fsync = cost.fsync_seconds.total()
    return [
        Figure(NAME, f"{name}: wall per task", f"{wall * 1000:.1f} ms (bare echo {ms(bare)})"),
        Figure(
            NAME,
            f"{name}: CPU worker / API / echo",
            f"{ms(part[WORKER])} / {ms(part[API])} / {ms(part[ECHO])}",
        ),
        Figure(
            NAME,
            f"{name}: fsyncs per task",
            f"{cost.fsyncs.total():.1f}: {ms(in_fsync)} = {in_fsync / wall:.0%} of wall "
            f"({ms(part[FSYNC_CPU])} on CPU)",
        ),
        Figure(NAME, f"{name}: HTTP round trips per task", f"{cost.requests.total():.2f}"),
    ]


def ms(value: float) -> str:
    return f"{value * 1000:.2f} ms"


def run(quick: bool = False, tasks: int | None = None, runs: int | None = None) -> list[Figure]:
    tasks = tasks or (20 if quick else 60)
    runs = runs or (2 if quick else 5)
    measured: dict[str, list[SetupCost]] = {name: [] for name in SETUPS}
    bare: list[float] = []
    for number in range(runs):
        for name, setup_costs in measured.items():
            setup_costs.append(setup_run(name, tasks))
            print_run(number, name, setup_costs[-1])
        bare.append(direct_seconds_per_task(tasks))
    costs = {name: middle([c.first for c in setup_costs]) for name, setup_costs in measured.items()}
    print_breakdown(costs, median(bare))
    found = [figure for name in SETUPS for figure in figures(name, costs[name], median(bare))]
    return [
        *found,
        first_tasks_figure(costs["5,000 reviewed"], costs["review on"], tasks),
        *history_figures(measured["5,000 reviewed"], measured["review on"]),
    ]


def print_run(number: int, name: str, cost: SetupCost) -> None:
    first = cost.first
    running = (
        ""
        if cost.steady is None
        else (f" running {ms(cost.steady.parts[WALL])}/task, one-off {ms(cost.one_off())};")
    )
    print(
        f"  run {number + 1}, {name}: {ms(first.parts[WALL])}/task, "
        f"{first.fsyncs.total():.1f} fsyncs = {ms(first.fsync_seconds.total())};{running} "
        f"{load_average()}",
        flush=True,
    )


def first_tasks_figure(after_history: Cost, fresh: Cost, tasks: int) -> Figure:
    ratio = after_history.parts[WALL] / fresh.parts[WALL]
    return Figure(
        NAME,
        f"after 5,000 reviews ÷ fresh, a worker's first {tasks} tasks",
        f"{ratio:.2f}x ({ms(after_history.parts[WALL])} vs {ms(fresh.parts[WALL])} per task)",
    )


def history_figures(after_history: list[SetupCost], fresh: list[SetupCost]) -> list[Figure]:
    """The running ratio (the median of the runs'), and the one-offs beside it."""
    ratios = [
        h.running().parts[WALL] / f.running().parts[WALL]
        for h, f in zip(after_history, fresh, strict=True)
    ]
    ratio = median(ratios)
    walls = [median(r.running().parts[WALL] for r in side) for side in (after_history, fresh)]
    one_offs = [median(r.one_off() for r in side) for side in (after_history, fresh)]
    return [
        Figure(
            NAME,
            "after 5,000 reviews ÷ fresh, per task once running",
            f"{ratio:.2f}x ({ms(walls[0])} vs {ms(walls[1])} per task; "
            f"runs {min(ratios):.2f}-{max(ratios):.2f}x)",
            f"<= {HISTORY_TARGET}x",
            ratio <= HISTORY_TARGET,
        ),
        Figure(
            NAME,
            "once per worker process, after 5,000 reviews / fresh",
            f"{one_offs[0] * 1000:.0f} / {one_offs[1] * 1000:.0f} ms of wall time",
        ),
    ]


def main() -> None:
    tasks_and_runs_main(__doc__, run)


if __name__ == "__main__":
    main()
