"""Two simulated hosts on one PostgreSQL database, for the fleet fault tests.

A host is a workspace of its own (its token, sandbox and log file), its own swarm.py on
a loopback port of its own, and its workers, each process started with SWARM_HOST set to
the host's name and SWARM_DATABASE_URL to the one database they share. The database is
what the hosts share and all they share, as on real machines.

Run as a script, it is the feeder of the drain test:

    PYTHONPATH=tests fleet.py feed REPORT FIRST TOTAL

the churn feeder of tests/helpers/faults_queue_churn.py (adds tasks in batches while
workers drain them and requeues each failing one once), fed the fleet's task mix.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from conftest import RunningProcess, child_env, start_process
from test_faults_processes import kill_hard

from swarm_runtime.settings import Settings
from swarm_runtime.store.local_postgres import free_port
from swarm_runtime.store.state_files import Workspace

TESTS = Path(__file__).resolve().parent.parent
FLEET_SCRIPT = str(Path(__file__).resolve())
HOSTS = ("host-a", "host-b")
PROCESS_STOP_TIMEOUT = 30.0


@dataclass
class Host:
    """One simulated machine: a workspace, an API on a fixed port, and workers."""

    name: str
    workspace: Workspace
    port: int
    variables: dict[str, str]
    processes: list[RunningProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return self.workspace.token_path.read_text().strip()

    def env(self, **extra: str) -> dict[str, str]:
        return child_env(self.workspace, **self.variables, **extra)

    def start(self, args: list[str], *, wait_for_url: bool = False, **extra: str) -> RunningProcess:
        process = start_process(args, self.env(**extra), wait_for_url=wait_for_url)
        self.processes.append(process)
        return process

    def start_api(self) -> RunningProcess:
        """On a port fixed in advance: the host's URL is known before its API runs."""
        api = self.start(["swarm.py", "--port", str(self.port)], wait_for_url=True)
        assert api.url == self.url, api.output
        return api

    def start_worker(self, number: int) -> RunningProcess:
        return self.start(["worker.py", "--worker-id", self.worker_id(number)])

    def start_panel(self) -> RunningProcess:
        return self.start(["control_panel.py", "--port", "0"], wait_for_url=True)

    def worker_id(self, number: int) -> str:
        return f"{self.name}-w{number}"

    def kill(self) -> None:
        """The whole host gone at once, as in a power cut."""
        for process in self.processes:
            if process.proc.poll() is None:
                kill_hard(process)

    def stop(self) -> list[str]:
        """SIGTERM every process still running; what did not exit cleanly, with its output.
        One that outlives the timeout is killed, so no failed test leaves a process behind
        (a worker holding a result waits for the database before it exits)."""
        failures = []
        for process in self.processes:
            if process.proc.poll() is not None:
                continue
            try:
                code = process.stop(timeout=PROCESS_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                kill_hard(process)
                code = None
            if code != 0:
                failures.append(f"{process.proc.args}: exit {code}\n{process.output}")
        return failures


class Fleet:
    """Hosts sharing one database; `stop` ends every process they started."""

    def __init__(self, root: Path, database_url: str, **shared: str):
        self.root = root
        self.database_url = database_url
        self.shared = shared
        self.hosts: dict[str, Host] = {}

    def add_host(self, name: str) -> Host:
        workspace = Workspace(self.root / name)
        workspace.ensure_layout()
        variables = {"SWARM_DATABASE_URL": self.database_url, "SWARM_HOST": name}
        host = Host(name, workspace, free_port(), variables | self.shared)
        self.hosts[name] = host
        return host

    def stop(self) -> list[str]:
        return [failure for host in self.hosts.values() for failure in host.stop()]


# --- reading what happened ----------------------------------------------------------------


def file_events(hosts: list[Host]) -> list[dict[str, Any]]:
    """Every event of every host, from each host's own log file: a host keeps its events
    there even when the database refused them (an outage)."""
    events = []
    for host in hosts:
        path = host.workspace.log_path
        if path.exists():
            events += [json.loads(line) for line in path.read_text().splitlines() if line]
    return events


def runs(events: list[dict[str, Any]]) -> Counter[tuple[str, int]]:
    """How many times each (task, attempt) started; API retries repeat no start."""
    return Counter(
        (e["task_id"], e["attempt"])
        for e in events
        if e["status"] == "in_progress" and e.get("api_retry") is None
    )


def ends(events: list[dict[str, Any]], workers: set[str]) -> Counter[tuple[str, int]]:
    """How many times each (task, attempt) a worker of `workers` recorded its outcome."""
    return Counter(
        (e["task_id"], e["attempt"])
        for e in events
        if e["status"] in ("completed", "failed") and e["worker_id"] in workers
    )


def get_json(url: str, timeout: float = 10.0) -> Any:
    return requests.get(url, timeout=timeout).json()


# --- the feeder ---------------------------------------------------------------------------


def fleet_task(index: int) -> dict[str, Any]:
    """Task `index` of the drain: a local command or an LLM prompt, a fifth pinned to each
    host; every tenth one a command that fails (exit code 2), to be requeued."""
    task: dict[str, Any] = {"id": f"t{index:03d}"}
    if index % 10 == 7:
        task["command"] = f"ls missing-{index}"
    elif index % 3 == 1:
        task["prompt"] = f"Say hello to number {index}"
    else:
        task["command"] = f"echo {index}"
    pinned = {1: HOSTS[0], 2: HOSTS[1]}.get(index % 5)
    if pinned is not None:
        task["host"] = pinned
    return task


def main() -> int:
    """The churn feeder, fed this module's task mix instead of its own."""
    from helpers.faults_queue_churn import TaskMix, feed, is_failing

    report, first, total = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    return feed(Settings.from_env(), report, first, total, TaskMix(fleet_task, is_failing))


if __name__ == "__main__":
    sys.exit(main())
