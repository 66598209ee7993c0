"""`python3 run.py --with-postgres`: a PostgreSQL server of the workspace's own, which the
three processes and other terminals share, kept across runs and never left running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from conftest import ROOT, child_env, wait_until
from launched import RUNNING
from postgres_cluster import unavailable
from test_launcher import all_gone, children_of

from swarm_runtime.store.local_postgres import BIN_VARIABLE, LocalPostgres, missing_server
from swarm_runtime.store.state_files import Workspace

START_SECONDS = 120.0
TASK_SECONDS = 60.0
STOP_SECONDS = 60.0
FINAL = {"approved", "failed", "safety_blocked", "cancelled", "completed"}
RUN_WITH_POSTGRES = f"exec {sys.executable} run.py --with-postgres"


class Launched:
    """run.py in a session of its own, its output collected as it comes."""

    def __init__(self, workspace: Workspace, env: dict[str, str], command: str = ""):
        """`command` starts run.py (by default with --with-postgres)."""
        self.lines: list[str] = []
        run = f"{command or RUN_WITH_POSTGRES} --workspace {workspace.root}"
        self.proc = subprocess.Popen(
            ["bash", "-c", f"{run} --api-port 0 --panel-port 0"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def line_with(self, text: str) -> str:
        def found() -> str | None:
            if self.proc.poll() is not None and text not in self.output:
                pytest.fail(f"run.py ended ({self.proc.returncode}):\n{self.output}")
            return next((line for line in self.lines if text in line), None)

        line: str = wait_until(found, START_SECONDS)
        return line

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=STOP_SECONDS)


@pytest.fixture
def workspace() -> Iterator[Workspace]:
    """Unlike conftest's, one the unprivileged `postgres` user can reach when the tests
    run as root (pytest's own temporary folders are closed to other users)."""
    if problem := missing_server():
        unavailable(problem)
    folder = Path(tempfile.mkdtemp(prefix="swarm-with-postgres-"))
    folder.chmod(0o711)
    workspace = Workspace(folder / "ws")
    yield workspace
    server = LocalPostgres(workspace.root, workspace.state_dir)
    try:
        server.stop("immediate")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def launch(workspace: Workspace) -> Iterator[Callable[..., Launched]]:
    """Starts run.py; whatever a failed test left running is stopped before the server's
    folder goes."""
    started: list[Launched] = []

    def start(where: Workspace, env: dict[str, str], command: str = "") -> Launched:
        started.append(Launched(where, env, command))
        return started[-1]

    yield start
    for launched in reversed(started):
        if launched.proc.poll() is None:
            launched.interrupt()


def launcher_env(workspace: Workspace) -> dict[str, str]:
    named = os.environ.get(BIN_VARIABLE)
    return child_env(workspace, **({BIN_VARIABLE: named} if named else {}))


def in_another_terminal(workspace: Workspace, reach: str, command: str) -> str:
    """`command` after the line run.py printed for other terminals, in a shell with no
    SWARM_DATABASE_URL of its own."""
    env = child_env(workspace)
    done = subprocess.run(
        ["bash", "-c", f"{reach} && {command}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TASK_SECONDS,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def status_of(workspace: Workspace, reach: str, task_id: str) -> str:
    shown = in_another_terminal(
        workspace, reach, f"{sys.executable} worker.py show {task_id} --json"
    )
    return str(json.loads(shown)["task"]["status"])


def server_gone(workspace: Workspace, port: int) -> bool:
    if (workspace.root / "postgres" / "data" / "postmaster.pid").exists():
        return False
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_the_runtime_runs_on_a_server_of_its_own_kept_across_runs(
    workspace: Workspace, launch: Callable[..., Launched]
) -> None:
    first = launch(workspace, launcher_env(workspace))
    first.line_with(RUNNING)
    reach = first.line_with("other terminals").split("other terminals", 1)[1].strip()
    url_file = workspace.state_dir / "database_url"
    assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
    url = urlsplit(url_file.read_text().strip())
    assert url.password and url.port and url.hostname == "127.0.0.1"

    added = f"{sys.executable} worker.py add from-elsewhere 'echo shared' --mode local"
    in_another_terminal(workspace, reach, added)
    assert wait_until(lambda: status_of(workspace, reach, "from-elsewhere") in FINAL, TASK_SECONDS)
    assert status_of(workspace, reach, "from-elsewhere") == "approved"
    # The task never touched the workspace's queue file: the worker found it in the database.
    assert (
        not workspace.queue_path.exists()
        or "from-elsewhere" not in workspace.queue_path.read_text()
    )
    panel = first.line_with("control panel").split()[-1]
    shown = requests.get(f"{panel}/api/tasks/from-elsewhere", timeout=10)
    assert shown.status_code == 200 and shown.json()["task"]["status"] == "approved"

    assert first.interrupt() == 0
    wait_until(lambda: server_gone(workspace, url.port), STOP_SECONDS)
    assert url.password not in first.output

    second = launch(workspace, launcher_env(workspace))
    second.line_with(RUNNING)
    assert "initialising" not in second.output
    assert status_of(workspace, reach, "from-elsewhere") == "approved"
    assert second.interrupt() == 0


def test_a_second_host_shares_the_queue_and_works_with_its_own_api(
    workspace: Workspace, launch: Callable[..., Launched]
) -> None:
    """With --api-port 0 the worker followed the queue's api_endpoint, which the database
    shares with every host: the last host to start had set it to its own API, which serves
    another workspace, so the first host's worker failed every task it claimed."""
    first = launch(workspace, launcher_env(workspace))
    first.line_with(RUNNING)
    reach = first.line_with("other terminals").split("other terminals", 1)[1].strip()
    other = Workspace(workspace.root.parent / "ws2")
    second = launch(other, child_env(other), f"{reach} && exec {sys.executable} run.py")
    second.line_with(RUNNING)

    tasks = {f"{host}-{n}" for host in ("one", "two") for n in range(2)}
    for host, terminal in (("one", workspace), ("two", other)):
        adds = [
            f"{sys.executable} worker.py add {host}-{n} 'echo {n}' --mode local" for n in (0, 1)
        ]
        in_another_terminal(terminal, reach, " && ".join(adds))

    def statuses() -> dict[str, str]:
        listed = in_another_terminal(other, reach, f"{sys.executable} worker.py tasks --json")
        return {row["id"]: row["status"] for row in json.loads(listed)["tasks"]}

    wait_until(lambda: all(statuses().get(task) in FINAL for task in tasks), TASK_SECONDS)
    final = statuses()
    assert {final[task] for task in tasks} == {"approved"} and "failed" not in final.values()
    shown = in_another_terminal(other, reach, f"{sys.executable} worker.py status --json")
    assert len(json.loads(shown)["workers"]) == 2  # both hosts' workers, alive
    assert second.interrupt() == 0 and first.interrupt() == 0


def test_a_killed_launcher_leaves_no_server_behind(
    workspace: Workspace, launch: Callable[..., Launched]
) -> None:
    """Its watchdog stops the server; and with the watchdog killed too, the next start
    finds the server still running and starts it afresh."""
    for kill_the_watchdog in (False, True):
        launched = launch(workspace, launcher_env(workspace))
        launched.line_with(RUNNING)
        port = urlsplit((workspace.state_dir / "database_url").read_text().strip()).port
        assert port is not None
        children = children_of(launched.proc.pid)  # the three processes and the watchdog
        assert len(children) == 4
        watchdog = {pid for pid in children if b"local_postgres" in cmdline(pid)}
        os.kill(launched.proc.pid, signal.SIGKILL)
        for pid in watchdog if kill_the_watchdog else ():
            os.kill(pid, signal.SIGKILL)
        launched.proc.wait()
        wait_until(partial(all_gone, children), STOP_SECONDS)
        assert server_gone(workspace, port) is not kill_the_watchdog

    again = launch(workspace, launcher_env(workspace))
    again.line_with(RUNNING)
    assert "an earlier run left running" in again.output
    assert again.interrupt() == 0
    wait_until(lambda: server_gone(workspace, port), STOP_SECONDS)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def refused(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "run.py", "--with-postgres"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stdout == "" and done.stderr.count("\n") == 1
    return done


def test_without_the_server_programs_one_line_says_what_to_install(tmp_path: Path) -> None:
    done = refused(child_env(Workspace(tmp_path / "ws"), **{BIN_VARIABLE: str(tmp_path)}))
    assert "apt-get install postgresql" in done.stderr and BIN_VARIABLE in done.stderr
    assert not (tmp_path / "ws").exists()


def test_a_database_named_already_is_not_overruled(tmp_path: Path) -> None:
    env = child_env(Workspace(tmp_path / "ws"), SWARM_DATABASE_URL="postgresql://u:p@db/x")
    assert "unset the variable" in refused(env).stderr
