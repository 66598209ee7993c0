"""PostgreSQL store: transitions per second with concurrent claimers, the cost of a claim
as the table grows, and the budget's reserve + settle, each beside its comparison point.

The benchmark starts a throwaway cluster of its own (initdb, then pg_ctl on a free
loopback port, as the tests do) with PostgreSQL's default durability: fsync and
synchronous_commit on, so every commit waits for the disk. The server's version and
settings are printed. Without PostgreSQL it says so in one line and skips.

1. Throughput: 1, 4, 8 and 16 claimer processes (`claimers.py`), each with its own store
   built by `store_for` as a worker's is, claim tasks that do nothing and finish them as
   completed (review off), for 10 s or until a backlog of 5,000 tasks is gone; a claim
   is one transition, a finish another. Comparison point: the file store (queue.json), run by
   the same processes right after each database run. Target: >= 1,500 transitions/s
   with 8 claimers on PostgreSQL.
2. Queue growth: `claim` then `finish` by one store on a table of 1,000 waiting tasks
   and on one of 100,000, taking turns round by round. Target: <= 1.5x.
3. Budget: `BudgetLedger.reserve` then `settle` with the ledger in the database (a
   `DatabaseDocument`, from `documents_for`), call by call beside the file ledger.
   Target: <= 2 ms, as for the file ledger (benchmark 6).

Everything talks to the stores through their interface, so it measures whichever
PostgresQueueStore is installed.

    PYTHONPATH=tests python benchmarks/bench_postgres.py [--seconds S] [--tasks N]
        [--claimers 1,4,8,16] [--sizes 1000,100000] [--rounds R] [--calls N] [--quick]

(`tests/` holds the cluster starter that the tests use too; `run.py bench` puts it on
the path.)
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_budget import TARGET_MS as BUDGET_TARGET_MS
from benchlib import Figure, durable_write_ms, median, print_table
from claimers import Claimers, Throughput, claim_and_finish
from postgres_cluster import Cluster, ClusterUnavailable, throwaway_cluster
from pydantic import SecretStr

from swarm_runtime.llm.budget import BudgetLedger
from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.queue.leases import WorkerIdentity
from swarm_runtime.queue.select import store_for
from swarm_runtime.settings import Settings
from swarm_runtime.store.documents import documents_for
from swarm_runtime.store.state_files import Workspace

NAME = "7 postgres"
CLAIMERS = (1, 4, 8, 16)
TARGET_CLAIMERS = 8
TARGET_TRANSITIONS = 1500
SIZES = (1000, 100_000)
TARGET_GROWTH = 1.5
DEFAULT_DURABILITY = ""  # no -c options: the server's own fsync and synchronous_commit
SHOWN_SETTINGS = (
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_sync_method",
    "shared_buffers",
)
SEED_BATCH = 1000
# Tasks queued at the start of each throughput run; one that runs dry first ends early.
# A backlog, not a flood: with several processes the file store's cost grows with
# queue.json (8 claimers were over ten times slower on 20,000 tasks than on 2,000), and
# it is the comparison point.
TASKS = 5_000
QUICK_TASKS = 2_000
BUDGET_LIMIT = 1_000_000.0


def run(
    quick: bool = False,
    seconds: float | None = None,
    tasks: int | None = None,
    claimers: tuple[int, ...] = CLAIMERS,
    sizes: tuple[int, ...] = SIZES,
    rounds: int | None = None,
    calls: int | None = None,
) -> list[Figure]:
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(throwaway_cluster(DEFAULT_DURABILITY))
        except ClusterUnavailable as exc:
            print(f"  skipped: no PostgreSQL here: {exc}", flush=True)
            return [Figure(NAME, "PostgreSQL store", f"skipped: {exc}")]
        server = describe_server(cluster)
        print(f"  server: {server}", flush=True)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        return [
            Figure(NAME, "server", server),
            *floors(cluster, folder),
            *throughput(
                cluster,
                folder,
                claimers,
                seconds or (3.0 if quick else 10.0),
                tasks or (QUICK_TASKS if quick else TASKS),
            ),
            *growth(cluster, folder, sizes, rounds or (50 if quick else 200)),
            *budget(cluster, folder, calls or (100 if quick else 400)),
        ]


def describe_server(cluster: Cluster) -> str:
    import psycopg

    with psycopg.connect(cluster.url(), autocommit=True) as conn:

        def show(setting: str) -> str:
            row = conn.execute(f"SHOW {setting}").fetchone()
            return str(row[0]) if row else "?"

        version = show("server_version").split()[0]
        return f"PostgreSQL {version}, " + ", ".join(f"{s}={show(s)}" for s in SHOWN_SETTINGS)


def floors(cluster: Cluster, folder: Path) -> list[Figure]:
    """What one durable step costs on this disk right now, in each store: a transition
    cannot cost less, and a busy disk moves every figure below."""
    commit, write = commit_ms(cluster), durable_write_ms(folder)
    print(f"  one durable commit {commit:.2f} ms; one atomic file write {write:.2f} ms")
    return [
        Figure(NAME, "floor: one commit of a one-row update", f"{commit:.2f} ms"),
        Figure(NAME, "floor: one atomic state-file write", f"{write:.2f} ms"),
    ]


def commit_ms(cluster: Cluster, commits: int = 50) -> float:
    import psycopg

    samples = []
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute("CREATE TABLE commit_probe (n integer)")
        conn.execute("INSERT INTO commit_probe VALUES (0)")
        for _ in range(commits):
            start = time.perf_counter()
            conn.execute("UPDATE commit_probe SET n = n + 1")
            samples.append((time.perf_counter() - start) * 1000)
        conn.execute("DROP TABLE commit_probe")
    return median(samples)


def queue_settings(folder: Path, url: str | None, **options: Any) -> Settings:
    """A runtime's settings on a fresh workspace: its queue in `url`'s database, or in
    queue.json when there is none. Review is off, so a finished task is `completed`."""
    workspace = Workspace(Path(tempfile.mkdtemp(dir=folder)))
    workspace.ensure_layout()
    database_url = SecretStr(url) if url else None
    return Settings(workspace=workspace.root, database_url=database_url, review=False, **options)


def new_database(cluster: Cluster) -> str:
    return cluster.url(cluster.fresh_database())


def seed(store: TaskQueue, count: int) -> float:
    """`count` tasks that do nothing, added a thousand per transaction; the seconds taken."""
    start = time.perf_counter()
    for first in range(0, count, SEED_BATCH):
        numbers = range(first, min(count, first + SEED_BATCH))
        store.add_many([noop_task(number) for number in numbers])
    return time.perf_counter() - start


def noop_task(number: int) -> dict[str, object]:
    return {
        "id": f"noop-{number:06d}",
        "mode": "local",
        "command": "true",
        "prompt": f"Do nothing ({number}): a benchmark claims and finishes this task",
    }


def fill(settings: Settings, count: int) -> None:
    store = store_for(settings, Workspace(settings.workspace))
    try:
        seed(store, count)
    finally:
        store.close()


# --- 1. throughput ------------------------------------------------------------------------


def throughput(
    cluster: Cluster, folder: Path, counts: tuple[int, ...], seconds: float, tasks: int
) -> list[Figure]:
    """Each run gets a fresh queue of `tasks` tasks. The two stores take turns at each
    number of claimers, so other load on the machine hits both alike."""
    results: dict[str, dict[int, Throughput]] = {"postgres": {}, "file": {}}
    pool = Claimers(max(counts))
    try:
        for count in counts:
            for kind, measured in results.items():
                url = new_database(cluster) if kind == "postgres" else None
                settings = queue_settings(folder, url)
                fill(settings, tasks)
                measured[count] = result = pool.run(settings, count, seconds)
                print(f"  {describe_run(kind, count, result)}", flush=True)
    finally:
        pool.close()
    return throughput_figures(results["postgres"], results["file"])


def describe_run(kind: str, claimers: int, result: Throughput) -> str:
    store = "PostgreSQL" if kind == "postgres" else "file store"
    dry = f", ran out of tasks after {result.seconds:.1f} s" if result.ran_dry else ""
    return (
        f"{store:<10} {claimers:>2} claimers: {result.per_second:>7,.0f} transitions/s "
        f"({result.transitions:,} in {result.seconds:.1f} s{dry})"
    )


def throughput_figures(
    database: dict[int, Throughput], files: dict[int, Throughput]
) -> list[Figure]:
    figures = []
    for count, result in database.items():
        rate, versus = result.per_second, files[count].per_second
        aimed = count == TARGET_CLAIMERS
        figures.append(
            Figure(
                NAME,
                f"claim + finish, {count} claimer{'s' if count > 1 else ''}",
                f"{rate:,.0f} transitions/s vs file {versus:,.0f} = {rate / versus:.2f}x",
                f">= {TARGET_TRANSITIONS:,}/s" if aimed else "",
                rate >= TARGET_TRANSITIONS if aimed else None,
            )
        )
    return figures


# --- 2. queue growth ----------------------------------------------------------------------


def growth(cluster: Cluster, folder: Path, sizes: tuple[int, ...], rounds: int) -> list[Figure]:
    """One store per size, each seeded by itself (retention keeps every task) and warmed
    by one claim; then the sizes take turns round by round."""
    rounds = min(rounds, min(sizes) - 1)
    worker = WorkerIdentity("growth")
    stores: dict[int, TaskQueue] = {}
    try:
        for size in sizes:
            settings = queue_settings(folder, new_database(cluster), queue_retain=size)
            stores[size] = store = store_for(settings, Workspace(settings.workspace))
            took = seed(store, size)
            print(f"  {size:>7,} tasks added in {took:.1f} s", flush=True)
            claim_and_finish(store, worker)
        samples: dict[int, list[float]] = {size: [] for size in sizes}
        for _ in range(rounds):
            for size, store in stores.items():
                start = time.perf_counter()
                claim_and_finish(store, worker)
                samples[size].append((time.perf_counter() - start) * 1000)
    finally:
        for store in stores.values():
            store.close()
    costs = {size: median(taken) for size, taken in samples.items()}
    for size in sizes:
        print(f"  {size:>7,} tasks: claim + finish {costs[size]:.2f} ms (median of {rounds})")
    return growth_figures(costs)


def growth_figures(costs: dict[int, float]) -> list[Figure]:
    sizes = list(costs)
    base = costs[sizes[0]]
    figures = [Figure(NAME, f"claim + finish at {sizes[0]:,} tasks", f"{base:.2f} ms")]
    for size in sizes[1:]:
        ratio, last = costs[size] / base, size == sizes[-1]
        figures.append(
            Figure(
                NAME,
                f"at {size:,} tasks",
                f"{costs[size]:.2f} ms = {ratio:.2f}x",
                f"<= {TARGET_GROWTH}x" if last else "",
                ratio <= TARGET_GROWTH if last else None,
            )
        )
    return figures


# --- 3. budget ----------------------------------------------------------------------------


def budget(cluster: Cluster, folder: Path, calls: int) -> list[Figure]:
    """The ledger in the database and the workspace's ledger file, call by call."""
    settings = queue_settings(folder, new_database(cluster))
    workspace = Workspace(settings.workspace)
    documents = documents_for(settings, workspace)
    try:
        ledgers = {
            "postgres": BudgetLedger(workspace, BUDGET_LIMIT, documents.budget),
            "file": BudgetLedger(workspace, BUDGET_LIMIT),
        }
        samples: dict[str, list[float]] = {kind: [] for kind in ledgers}
        for number in range(calls):
            for kind, ledger in ledgers.items():
                samples[kind].append(reserve_settle_ms(ledger, f"task-{number}"))
    finally:
        documents.close()
    database, files = median(samples["postgres"]), median(samples["file"])
    print(
        f"  reserve + settle: PostgreSQL {database:.2f} ms, file {files:.2f} ms "
        f"(median of {calls} each)",
        flush=True,
    )
    return [
        Figure(
            NAME,
            "budget reserve + settle",
            f"{database:.2f} ms vs file {files:.2f} ms = {database / files:.2f}x",
            f"<= {BUDGET_TARGET_MS:.0f} ms",
            database <= BUDGET_TARGET_MS,
        )
    ]


def reserve_settle_ms(ledger: BudgetLedger, task_id: str) -> float:
    start = time.perf_counter()
    reservation = ledger.reserve(0.002, task_id=task_id)
    ledger.settle(reservation, 0.0011)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, help="length of a throughput run (default 10)")
    parser.add_argument("--tasks", type=int, help="queued per throughput run (default 5000)")
    parser.add_argument("--claimers", default=",".join(map(str, CLAIMERS)))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--rounds", type=int, help="claim + finish pairs per size (default 200)")
    parser.add_argument("--calls", type=int, help="reserve + settle pairs per ledger (default 400)")
    parser.add_argument(
        "--quick", action="store_true", help="3 s runs on 2,000 tasks, fewer rounds"
    )
    args = parser.parse_args()
    claimers = tuple(int(count) for count in args.claimers.split(","))
    sizes = tuple(int(size) for size in args.sizes.split(","))
    print_table(run(args.quick, args.seconds, args.tasks, claimers, sizes, args.rounds, args.calls))


if __name__ == "__main__":
    main()
