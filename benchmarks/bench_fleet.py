"""Fleet: workers on two simulated hosts sharing one PostgreSQL database, against one
worker on one host, on the same database server.

A simulated host is a workspace of its own (SWARM_WORKSPACE: its token, sandbox and
files), its own swarm.py on a free loopback port, and its own workers, told by
SWARM_API_PORT to use that API; SWARM_HOST names the host. Every host's processes share
one database (SWARM_DATABASE_URL) on a throwaway cluster the benchmark starts with
PostgreSQL's default settings (fsync and synchronous_commit on, as in benchmark 7).
Each fleet gets a fresh database.

1. LLM path: 16 workers over 2 hosts against 1 worker on 1 host, every task an llm task
   answered by a loopback provider (tests/fake_llm_server.py, a process of its own) after
   100 ms, then reviewed. The ideal is 16 / 0.1 s = 160 tasks/s, 16x one worker.
2. Local tasks (`echo`): 2 hosts x 2 workers against 1 host x 1 worker.

A fleet is started, then waited for until every worker has announced itself and is
listening for queue changes (its presence row, and its LISTEN in pg_stat_activity);
only then are the tasks added, in one transaction, and the clock runs from the add's
return until every task is final. Start-up is never timed. Rounds alternate the fleet
and its comparison point, so other load hits both; figures are min-max over rounds.

CPU per task counts the runtime's processes (workers and APIs, with the children they
reaped: the commands of local tasks) and the PostgreSQL server's (the postmaster and
every child: backends and background workers, less the benchmark's own watcher), all
from /proc; the provider's is given apart. The machine's busy cores over the same
interval (/proc/stat: every process on it, and steal) say whether the cores were the
bound, and how much of them other work took.

    PYTHONPATH=tests python benchmarks/bench_fleet.py [--rounds R] [--llm-tasks N]
        [--local-tasks N] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench_llm_scaling import FINAL, wait_for
from bench_postgres import DEFAULT_DURABILITY, describe_server
from benchlib import Child, Figure, clean_env, print_table
from postgres_cluster import Cluster, ClusterUnavailable, throwaway_cluster
from pydantic import SecretStr

from swarm_runtime.contract import Status
from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.queue.select import store_for
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace

NAME = "8 fleet"
HOSTS = ("host-a", "host-b")
DELAY_SECONDS = 0.1
FINAL_STATUSES = sorted(status.value for status in FINAL)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
Records = list[dict[str, str]]  # tasks as added


@dataclass(frozen=True)
class Fleet:
    hosts: int
    workers_per_host: int

    @property
    def workers(self) -> int:
        return self.hosts * self.workers_per_host

    def __str__(self) -> str:
        if self.hosts == 1:
            return f"{self.workers} worker{'s' if self.workers > 1 else ''} on 1 host"
        return f"{self.hosts} hosts x {self.workers_per_host} workers"


@dataclass(frozen=True)
class Drain:
    tasks: int
    seconds: float
    cpu: dict[str, float]  # CPU seconds by who spent them
    busy_cores: float  # the whole machine's, over the drain

    @property
    def per_second(self) -> float:
        return self.tasks / self.seconds

    @property
    def other_cores(self) -> float:
        """Cores busy with anything but what was measured: other load on the machine."""
        return self.busy_cores - sum(self.cpu.values()) / self.seconds

    def cpu_ms_per_task(self, *who: str) -> float:
        return sum(self.cpu[name] for name in who) / self.tasks * 1000


RUNTIME = ("workers", "APIs", "PostgreSQL")


# --- CPU from /proc -----------------------------------------------------------------------


def stat_fields(pid: int) -> list[str]:
    """The fields after the command name, which may itself hold spaces or brackets."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_with_reaped(pid: int) -> float:
    """User + system CPU of a process and of the children it has waited for."""
    fields = stat_fields(pid)
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def own_cpu(pid: int) -> float:
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_of(parent: int) -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if int(stat_fields(int(entry.name))[1]) == parent:
                    yield int(entry.name)


def server_cpu(postmaster: int) -> float:
    """The server's CPU so far: a backend that exits moves its time into the postmaster's
    reaped-children total, so the sum never loses it."""
    total = cpu_with_reaped(postmaster)
    for child in children_of(postmaster):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += own_cpu(child)
    return total


def busy_seconds() -> float:
    """CPU seconds every core of the machine has spent on anything but idling so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, iowait = values[3], values[4]
    return (sum(values[:8]) - idle - iowait) / CLOCK_TICKS


# --- one fleet draining one queue ---------------------------------------------------------


class Counter:
    """The benchmark's own connection to the fleet's database: it watches, it does not
    work, so its server process is left out of the server's CPU."""

    def __init__(self, url: str):
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.backend = int(self.value("SELECT pg_backend_pid()"))

    def value(self, sql: str, *params: object) -> int:
        row = self.conn.execute(sql, params).fetchone()
        assert row is not None
        return int(row[0])

    def ready(self, workers: int) -> bool:
        announced = self.value("SELECT count(*) FROM swarm_workers")
        listening = self.value(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND starts_with(query, 'LISTEN ')"
        )
        return announced >= workers and listening >= workers

    def unfinished(self) -> int:
        return self.value(
            "SELECT count(*) FROM swarm_tasks WHERE status <> ALL(%s)", FINAL_STATUSES
        )

    def statuses(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, count(*) FROM swarm_tasks GROUP BY status")
        return {status: count for status, count in rows.fetchall()}

    def one_not_approved(self) -> object:
        row = self.conn.execute(
            "SELECT doc FROM swarm_tasks WHERE status <> %s LIMIT 1", (Status.APPROVED.value,)
        ).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.conn.close()


def start_host(host: str, root: Path, workers: int, env: dict[str, str]) -> list[Child]:
    """The host's API, then its workers, which it tells where that API listens."""
    Workspace(root).ensure_layout()
    host_env = clean_env(root, SWARM_HOST=host, **env)
    api = Child(["swarm.py", "--port", "0"], host_env, wait_for_url=True)
    assert api.url is not None
    worker_env = {**host_env, "SWARM_API_PORT": api.url.rsplit(":", 1)[1].strip("/")}
    return [api] + [
        Child(["worker.py", "--worker-id", f"{host}-{n}"], worker_env, wait_for_url=False)
        for n in range(workers)
    ]


def all_running(children: list[Child]) -> bool:
    """A process that died would leave its tasks leased until the deadline: say so now."""
    for child in children:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.proc.args} exited with {child.proc.returncode}")
    return True


def stop_all(children: list[Child]) -> None:
    """SIGTERM to all at once, so sixteen workers finish together, not one by one."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    for child in children:
        child.stop()


def drain(
    cluster: Cluster, fleet: Fleet, records: Records, env: dict[str, str], provider: int | None
) -> Drain:
    """A fresh database and workspaces; the fleet started and ready; then the timed drain."""
    database = cluster.fresh_database()
    url = cluster.url(database)
    children: list[Child] = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            roots = [Path(folder) / host for host in HOSTS[: fleet.hosts]]
            settings = Settings(workspace=roots[0], database_url=SecretStr(url))
            store = store_for(settings, Workspace(roots[0]))  # makes the schema first
            counter = Counter(url)
            try:
                for host, root in zip(HOSTS, roots, strict=False):
                    children += start_host(
                        host, root, fleet.workers_per_host, {"SWARM_DATABASE_URL": url, **env}
                    )
                wait_for(lambda: all_running(children) and counter.ready(fleet.workers))
                meter = Meter(cluster, children, counter, provider)
                result = timed_drain(meter, counter, store, records)
                check_all_approved(counter, len(records))
                return result
            finally:
                stop_all(children)
                store.close()
                counter.close()
    finally:
        cluster.drop(database)


class Meter:
    """CPU seconds so far, by who spent them."""

    def __init__(
        self, cluster: Cluster, children: list[Child], counter: Counter, provider: int | None
    ):
        self.postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        self.apis = [child.proc.pid for child in children if child.url is not None]
        self.workers = [child.proc.pid for child in children if child.url is None]
        self.children = children
        self.watcher = counter.backend
        self.provider = provider

    def read(self) -> dict[str, float]:
        spent = {
            "workers": sum(map(cpu_with_reaped, self.workers)),
            "APIs": sum(map(cpu_with_reaped, self.apis)),
            "PostgreSQL": server_cpu(self.postmaster) - own_cpu(self.watcher),
        }
        if self.provider is not None:
            spent["provider"] = cpu_with_reaped(self.provider)
        # Watching the queue and reading the APIs' output: not the runtime's, not others'.
        spent["benchmark"] = time.process_time()
        return spent


def timed_drain(meter: Meter, counter: Counter, store: TaskQueue, records: Records) -> Drain:
    """The clock starts once the add has returned; CPU is counted from just before it."""
    before, busy_before = meter.read(), busy_seconds()
    store.add_many(records)
    begin = time.perf_counter()
    try:
        wait_for(lambda: all_running(meter.children) and counter.unfinished() == 0)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; tasks now {counter.statuses()}") from None
    elapsed = time.perf_counter() - begin
    after, busy = meter.read(), busy_seconds() - busy_before
    spent = {who: after[who] - before[who] for who in before}
    return Drain(len(records), elapsed, spent, busy / elapsed)


def check_all_approved(counter: Counter, tasks: int) -> None:
    statuses = counter.statuses()
    if statuses != {Status.APPROVED.value: tasks}:
        raise RuntimeError(
            f"tasks ended {statuses}, not all {tasks} approved; one: {counter.one_not_approved()}"
        )


# --- the two measures ---------------------------------------------------------------------


def llm_tasks(count: int) -> Records:
    return [{"id": f"t{i}", "mode": "llm", "prompt": f"Say hello to {i}"} for i in range(count)]


def local_tasks(count: int) -> Records:
    return [{"id": f"t{i}", "mode": "local", "command": f"echo task {i}"} for i in range(count)]


def compare(
    cluster: Cluster,
    label: str,
    pair: tuple[tuple[Fleet, int], tuple[Fleet, int]],
    make: Callable[[int], Records],
    rounds: int,
    env: dict[str, str],
    provider: int | None = None,
) -> list[tuple[Drain, Drain]]:
    """Each round drains the comparison point's queue, then the fleet's: (one, many)."""
    results = []
    for number in range(rounds):
        drained = []
        for fleet, tasks in pair:
            drained.append(drain(cluster, fleet, make(tasks), env, provider))
            print(f"  round {number + 1}: {label} {describe(fleet, drained[-1])}", flush=True)
        results.append((drained[0], drained[1]))
    return results


def describe(fleet: Fleet, result: Drain) -> str:
    spent = ", ".join(f"{who} {result.cpu_ms_per_task(who):.1f}" for who in result.cpu)
    return (
        f"{fleet}: {result.per_second:.1f} tasks/s ({result.tasks} in {result.seconds:.1f} s); "
        f"CPU ms per task: {spent}; machine busy {result.busy_cores:.2f} cores, "
        f"{result.other_cores:.2f} of them with other work"
    )


def span(values: list[float], fmt: str) -> str:
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}–{high}"


def machine_busy(drains: list[Drain]) -> str:
    busy = span([d.busy_cores for d in drains], ".2f")
    others = span([d.other_cores for d in drains], ".2f")
    return f"machine busy {busy} of {os.cpu_count()} cores ({others} other work)"


def cpu_figure(kind: str, fleet: Fleet, drains: list[Drain]) -> Figure:
    """The runtime's CPU per task, and who spent it; the provider's apart."""
    parts = [f"{who} {span([d.cpu_ms_per_task(who) for d in drains], '.1f')}" for who in RUNTIME]
    if "provider" in drains[0].cpu:
        parts.append(f"provider {span([d.cpu_ms_per_task('provider') for d in drains], '.1f')}")
    total = span([d.cpu_ms_per_task(*RUNTIME) for d in drains], ".1f")
    return Figure(NAME, f"CPU per {kind} task, {fleet}", f"{total} ms ({', '.join(parts)})")


def bound_figure(kind: str, fleet: Fleet, drains: list[Drain]) -> Figure:
    """Whether the cores were the limit: what the measured processes used of them, what
    else ran, and the rate the cores would allow at the CPU a task took."""
    cores = os.cpu_count() or 1
    used = span([sum(d.cpu.values()) / d.seconds for d in drains], ".2f")
    cap = span([cores / (d.cpu_ms_per_task(*RUNTIME) / 1000) for d in drains], ".0f")
    return Figure(
        NAME,
        f"bound, {kind}, {fleet}",
        f"measured processes {used} cores; {machine_busy(drains)}; "
        f"{cores} cores allow {cap}/s at that CPU",
    )


def rate_figures(
    kind: str, results: list[tuple[Drain, Drain]], one: Fleet, many: Fleet, ideal: float | None
) -> list[Figure]:
    ones, manys = [a for a, _ in results], [b for _, b in results]
    ratios = span([b.per_second / a.per_second for a, b in results], ".2f")
    return [
        Figure(
            NAME,
            f"{kind}, {one}",
            f"{span([a.per_second for a in ones], '.1f')} tasks/s",
            f"ideal {ideal:.0f}/s" if ideal else "",
        ),
        Figure(
            NAME,
            f"{kind}, {many}",
            f"{span([b.per_second for b in manys], '.1f')} tasks/s = {ratios}x",
            f"ideal {ideal * many.workers:.0f}/s = {many.workers}x"
            if ideal
            else f"ideal {many.workers}x",
        ),
        cpu_figure(kind, one, ones),
        cpu_figure(kind, many, manys),
        bound_figure(kind, many, manys),
    ]


def run(
    quick: bool = False,
    rounds: int | None = None,
    llm_count: int | None = None,
    local_count: int | None = None,
) -> list[Figure]:
    rounds = rounds or (1 if quick else 3)
    llm_count = llm_count or (160 if quick else 320)
    local_count = local_count or (100 if quick else 200)
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(throwaway_cluster(DEFAULT_DURABILITY))
        except ClusterUnavailable as exc:
            print(f"  skipped: no PostgreSQL here: {exc}", flush=True)
            return [Figure(NAME, "fleet on PostgreSQL", f"skipped: {exc}")]
        print(f"  server: {describe_server(cluster)}", flush=True)
        provider = Child(
            ["tests/fake_llm_server.py", "--port", "0", "--delay", str(DELAY_SECONDS)],
            clean_env(Path(tempfile.gettempdir())),
            wait_for_url=True,
        )
        stack.callback(provider.stop)
        assert provider.url is not None
        llm_env = {
            "SWARM_LLM_BASE_URL": provider.url,
            "SWARM_LLM_MODEL": "local-model",
            "SWARM_RATE_LIMIT": "1000000",
        }
        one, many, four = Fleet(1, 1), Fleet(2, 8), Fleet(2, 2)
        # One worker gets an eighth as many llm tasks: a drain about as long as the fleet's.
        llm = compare(
            cluster,
            "llm",
            ((one, max(8, llm_count // 8)), (many, llm_count)),
            llm_tasks,
            rounds,
            llm_env,
            provider.proc.pid,
        )
        local = compare(
            cluster,
            "local",
            ((one, local_count // 2), (four, local_count)),
            local_tasks,
            rounds,
            {},
        )
        return [
            *rate_figures("llm", llm, one, many, 1 / DELAY_SECONDS),
            *rate_figures("local", local, one, four, None),
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="rounds of fleet and comparison (default 3)")
    parser.add_argument("--llm-tasks", type=int, help="llm tasks for 16 workers (default 320)")
    parser.add_argument("--local-tasks", type=int, help="local tasks for 4 workers (default 200)")
    parser.add_argument("--quick", action="store_true", help="one round, half the tasks")
    args = parser.parse_args()
    print_table(run(args.quick, args.rounds, args.llm_tasks, args.local_tasks))


if __name__ == "__main__":
    main()
