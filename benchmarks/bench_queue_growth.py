"""Queue growth: the cost of one claim + finish as queue.json holds more tasks.

The store is used exactly as a worker uses it (`QueueStore.claim`, then `finish`, each
a durable transaction under queue.json's lock). The queue holds N tasks, half finished
(approved) and half pending, and retention is set to N so that all of them stay in the
file. Comparison point: the same operations at 100 tasks; the ideal growth is flat.
Target: the cost at 10,000 tasks <= 2x the cost at 100.

A queue this large appends each transaction to its journal and folds the journal into
queue.json at most about once a second (or once it reaches a quarter of queue.json's
size); the cost of one fold is printed too, since it is the part that still grows with
the queue, paid per second rather than per task.

    python benchmarks/bench_queue_growth.py [--rounds R] [--sizes 100,1000,10000] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

from benchlib import Figure, median, print_table

from swarm_runtime.contract import Status, utc_now
from swarm_runtime.queue.store import QueueStore, WorkerIdentity
from swarm_runtime.store.state_files import Workspace, atomic_write_json

NAME = "3 queue growth"
SIZES = (100, 1000, 10_000)
TARGET_RATIO = 2.0


def build_queue(workspace: Workspace, size: int) -> None:
    """N tasks shaped like a worker leaves them: half approved with a result, half pending."""
    stamp = utc_now().isoformat()
    tasks = []
    for number in range(size):
        task = {
            "id": f"task-{number:05d}",
            "mode": "local",
            "command": f"echo {number}",
            "prompt": f"Print the number {number} so the operator can see it ran",
            "status": Status.PENDING.value,
            "created_at": stamp,
            "attempts": 0,
        }
        if number % 2 == 0:
            task.update(status=Status.APPROVED.value, attempts=1, updated_at=stamp, last_error=None)
        tasks.append(task)
    atomic_write_json(
        workspace.queue_path,
        {
            "version": "1.1",
            "api_endpoint": "http://127.0.0.1:8420",
            "tasks": tasks,
            "completed": [t["id"] for t in tasks if t["status"] == Status.APPROVED.value],
            "failed": [],
        },
    )


def claim_finish_ms(store: QueueStore) -> float:
    worker = WorkerIdentity("bench")
    start = time.perf_counter()
    claimed = store.claim(worker, lease_seconds=30).task
    store.finish(claimed.id, worker, Status.COMPLETED)
    return (time.perf_counter() - start) * 1000


def fold_ms(store: QueueStore) -> float:
    """One claim + finish, then the time to fold the journal into queue.json."""
    claim_finish_ms(store)
    start = time.perf_counter()
    store.flush()
    return (time.perf_counter() - start) * 1000


def run(
    quick: bool = False, rounds: int | None = None, sizes: tuple[int, ...] = SIZES
) -> list[Figure]:
    """The sizes take turns round by round, so other load on the machine hits all alike."""
    rounds = min(rounds or (10 if quick else 30), min(sizes) // 2)
    with contextlib.ExitStack() as stack:
        stores = {}
        for size in sizes:
            workspace = Workspace(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            workspace.ensure_layout()
            build_queue(workspace, size)
            stores[size] = QueueStore(workspace, retain=size, review_enabled=True)
        samples: dict[int, list[float]] = {size: [] for size in sizes}
        for _ in range(rounds):
            for size, store in stores.items():
                samples[size].append(claim_finish_ms(store))
        folds = {size: median([fold_ms(store) for _ in range(5)]) for size, store in stores.items()}
    costs = {size: median(taken) for size, taken in samples.items()}
    for size in sizes:
        print(
            f"  {size:>6} tasks: claim + finish {costs[size]:.2f} ms (median of {rounds}); "
            f"one fold of the journal into queue.json {folds[size]:.1f} ms",
            flush=True,
        )
    base = costs[sizes[0]]
    figures = [Figure(NAME, f"claim + finish at {sizes[0]:,} tasks", f"{base:.2f} ms")]
    for size in sizes[1:]:
        ratio = costs[size] / base
        last = size == sizes[-1]
        figures.append(
            Figure(
                NAME,
                f"at {size:,} tasks",
                f"{costs[size]:.2f} ms = {ratio:.1f}x",
                f"<= {TARGET_RATIO:.0f}x" if last else "",
                ratio <= TARGET_RATIO if last else None,
            )
        )
    figures.append(
        Figure(
            NAME, f"one journal fold at {sizes[-1]:,} tasks (<= 1/s)", f"{folds[sizes[-1]]:.1f} ms"
        )
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="claim + finish pairs per size (default 30)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = tuple(int(size) for size in args.sizes.split(","))
    print_table(run(args.quick, args.rounds, sizes))


if __name__ == "__main__":
    main()
