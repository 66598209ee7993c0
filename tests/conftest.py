"""Shared fixtures: workspaces, real processes on free loopback ports, polling waits."""

from __future__ import annotations

import fnmatch
import inspect
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType
from typing import Any

import pytest
from fake_llm_server import FakeLLMServer

from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace

ROOT = Path(__file__).resolve().parent.parent

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+\S*)")
PROCESS_START_TIMEOUT = 20.0


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.ensure_layout()
    return ws


@pytest.fixture
def settings(workspace: Workspace) -> Settings:
    return Settings(workspace=workspace.root)


def child_env(workspace: Workspace, **extra: str) -> dict[str, str]:
    """A clean environment: nothing from the host's SWARM_*/GROQ_* settings leaks in."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SWARM_", "GROQ_", "CONTROL_PANEL_"))
    }
    env.update(SWARM_WORKSPACE=str(workspace.root), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class RunningProcess:
    def __init__(self, proc: subprocess.Popen[str], url: str | None):
        self.proc = proc
        self.url = url
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code


def start_process(
    args: list[str], env: dict[str, str], *, wait_for_url: bool = True
) -> RunningProcess:
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    url = None
    if wait_for_url:
        seen = []
        deadline = time.monotonic() + PROCESS_START_TIMEOUT
        while url is None:
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=5)
                raise AssertionError(f"{args[0]} exited early:\n{''.join(seen)}")
            seen.append(line)
            match = LISTENING.search(line)
            url = match.group(1) if match else None
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{args[0]} never announced its URL:\n{''.join(seen)}")
    running = RunningProcess(proc, url)
    if wait_for_url:
        running.lines.extend(seen)
    return running


@pytest.fixture
def spawn() -> Iterator[Callable[..., RunningProcess]]:
    """Start real processes; on teardown SIGTERM each and assert it exits cleanly."""
    started: list[RunningProcess] = []

    def _spawn(args: list[str], env: dict[str, str], **kwargs: Any) -> RunningProcess:
        process = start_process(args, env, **kwargs)
        started.append(process)
        return process

    yield _spawn
    failures = []
    for process in started:
        if process.proc.poll() is None:
            code = process.stop()
            if code != 0:
                failures.append(f"{process.proc.args}: exit {code}\n{process.output}")
    assert not failures, "\n".join(failures)


@pytest.fixture
def api(spawn: Callable[..., RunningProcess], workspace: Workspace) -> RunningProcess:
    """A real swarm.py on a free port with the offline provider."""
    return spawn(["swarm.py", "--port", "0"], child_env(workspace))


SCRIPTED_MODEL = "gpt-4o-mini"


@pytest.fixture
def provider() -> Iterator[FakeLLMServer]:
    """A real OpenAI-compatible server on loopback that scripts replies and records
    requests; a module overrides this fixture to script another reply."""
    with FakeLLMServer(reply_text="Done as asked.") as server:
        yield server


@pytest.fixture
def api_url(
    spawn: Callable[..., RunningProcess], workspace: Workspace, provider: FakeLLMServer
) -> str:
    """A real swarm.py whose model is the scripted provider."""
    env = child_env(workspace, SWARM_LLM_BASE_URL=provider.url, SWARM_LLM_MODEL=SCRIPTED_MODEL)
    url = spawn(["swarm.py", "--port", "0"], env).url
    assert url is not None
    return url


def run_worker(
    workspace: Workspace, *args: str, timeout: float = 60.0, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "worker.py", *args],
        cwd=ROOT,
        env=child_env(workspace, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lease_of_a_dead_worker() -> dict[str, Any]:
    """A live-looking lease held by a process of this host that has exited: a worker that
    crashed mid-task, whose lease the next claim must take over at once."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return {
        "worker_id": "crashed",
        "pid": dead.pid,
        "host": socket.gethostname(),
        "claimed_at": time.time(),
        "expires_at": time.time() + 3600,
    }


def read_events(workspace: Workspace) -> list[dict[str, Any]]:
    if not workspace.log_path.exists():
        return []
    return [json.loads(line) for line in workspace.log_path.read_text().splitlines() if line]


def write_queue(workspace: Workspace, tasks: list[dict[str, Any]], endpoint: str) -> None:
    document = {
        "version": "1.1",
        "api_endpoint": endpoint,
        "tasks": tasks,
        "completed": [],
        "failed": [],
    }
    workspace.queue_path.write_text(json.dumps(document, indent=2))


def read_queue(workspace: Workspace) -> dict[str, Any]:
    return json.loads(workspace.queue_path.read_text())


# --- the slow marker ----------------------------------------------------------------------

TESTS = Path(__file__).resolve().parent
PROCESS_MODULES = ("test_faults_*.py", "test_*_end_to_end.py", "test_panel_browser.py")
# How starting a process, a server or a browser reads in a test's code (besides a Python
# child started with `sys.executable`).
PROCESS_NAMES = frozenset({"Popen", "multiprocessing", "make_server", "sync_playwright"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` every test that starts a process, a server or a browser, so that
    `-m "not slow"` runs the rest in seconds: every test of the process-level modules, and
    any other whose own code, fixtures, or the functions and classes of the tests tree
    they use start one. `spawn`, `api`, `start_process`, `run_worker` and the fake
    provider's server all count, and so will the next helper built on them."""
    for item in items:
        if starts_processes(item):
            item.add_marker(pytest.mark.slow)


def starts_processes(item: pytest.Item) -> bool:
    if any(fnmatch.fnmatch(item.path.name, pattern) for pattern in PROCESS_MODULES):
        return True
    if not isinstance(item, pytest.Function):
        return False
    if "postgres_cluster" in item.fixturenames:  # a PostgreSQL server of its own
        return True
    fixtures = item._fixtureinfo.name2fixturedefs.values()
    functions = [item.function, *(fixture.func for defs in fixtures for fixture in defs)]
    seen: set[Callable[..., Any]] = set()
    return any(reaches_process_names(function, seen) for function in functions)


def reaches_process_names(function: Callable[..., Any], seen: set[Callable[..., Any]]) -> bool:
    """Follow the names a function of the tests tree uses to the functions and classes of
    the tests tree they are bound to; code outside it (pytest, the package) is not read."""
    function = inspect.unwrap(function)
    code = getattr(function, "__code__", None)
    if function in seen or code is None or not code.co_filename.startswith(str(TESTS)):
        return False
    seen.add(function)
    names = names_used(code)
    python_child = {"sys", "executable"} <= names and function.__globals__.get("sys") is sys
    if python_child or names & PROCESS_NAMES:
        return True
    bound = [function.__globals__.get(name) for name in names]
    return any(reaches_process_names(callee, seen) for callee in callees(bound))


def names_used(code: CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):  # nested functions, lambdas, comprehensions
            names |= names_used(const)
    return names


def callees(bound: list[object]) -> Iterator[Callable[..., Any]]:
    for value in bound:
        if inspect.isfunction(value):
            yield value
        elif inspect.isclass(value):
            yield from (member for member in vars(value).values() if inspect.isfunction(member))


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Any]:
    """One throwaway cluster for the whole run, started on first use."""
    from postgres_cluster import running_cluster

    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def database_url(postgres_cluster: Any) -> Iterator[str]:
    """The URL of a new, empty database of its own for one test."""
    name = postgres_cluster.fresh_database()
    yield postgres_cluster.url(name)
    postgres_cluster.drop(name)
