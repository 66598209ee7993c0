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
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType
from typing import Any

import pytest
from fake_llm_server import FakeLLMServer

from swarm_runtime.contract import QueueDocument
from swarm_runtime.queue.store import QueueStore
from swarm_runtime.queue.transfer import export_queue
from swarm_runtime.settings import Settings
from swarm_runtime.store.documents import documents_for
from swarm_runtime.store.events import DatabaseEvents
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
        """Signal it and wait for its exit code; one that outlives the wait is killed, and
        the failure shows what it printed last."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            self._reader.join(timeout=5)
            raise AssertionError(
                f"{self.proc.args} still ran {timeout}s after signal {sig}; its output ended:\n"
                + self.output[-4000:]
            ) from None
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
def spawn(backend: Backend) -> Iterator[Callable[..., RunningProcess]]:
    """Start real processes; on teardown SIGTERM each and assert it exits cleanly. Set up
    after the store, so the processes stop before their database is dropped."""
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
def api(spawn: Callable[..., RunningProcess], backend: Backend) -> RunningProcess:
    """A real swarm.py on a free port with the offline provider."""
    return spawn(["swarm.py", "--port", "0"], backend.env())


SCRIPTED_MODEL = "gpt-4o-mini"


@pytest.fixture
def provider() -> Iterator[FakeLLMServer]:
    """A real OpenAI-compatible server on loopback that scripts replies and records
    requests; a module overrides this fixture to script another reply."""
    with FakeLLMServer(reply_text="Done as asked.") as server:
        yield server


@pytest.fixture
def api_url(spawn: Callable[..., RunningProcess], backend: Backend, provider: FakeLLMServer) -> str:
    """A real swarm.py whose model is the scripted provider."""
    env = backend.env(SWARM_LLM_BASE_URL=provider.url, SWARM_LLM_MODEL=SCRIPTED_MODEL)
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


class Clock:
    """A clock the test moves by hand, for the stores' lease times."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def a_fresh_reader_sees_the_journaled_queue(store: Any, workspace: Workspace, clock: Any) -> None:
    """A new store, reading queue.json and replaying the journal as another process
    would, sees the queue `store` has in memory, before and after the journal is folded."""
    from swarm_runtime.errors import QueueFileError
    from swarm_runtime.queue.store import QueueStore

    try:
        expected = store.load().model_dump()
    except QueueFileError:
        return  # the test left a malformed queue on purpose
    assert QueueStore(workspace, clock=clock).load().model_dump() == expected
    store.flush()
    assert not workspace.queue_journal_path.exists()
    assert QueueStore(workspace, clock=clock).load().model_dump() == expected


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
    if getattr(item, "callspec", None) and item.callspec.params.get("backend") == "postgres":
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


# --- the store a test runs on -------------------------------------------------------------

BACKENDS = ("files", "postgres")
# Runs a test once on the workspace's files and once on a PostgreSQL database of its own.
on_both_backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


class Backend(ABC):
    """Where the runtime keeps its state, as a test drives and reads it: the environment
    that puts a child process on it, and the queue, events and shared documents seen
    the same way whichever store holds them."""

    def __init__(self, workspace: Workspace, database_url: str | None = None):
        self.workspace = workspace
        self.settings = Settings(workspace=workspace.root, database_url=database_url)
        # The budget, the pause switch, the quality gate and the rewards, where the
        # runtime itself keeps them.
        self.documents = documents_for(self.settings, workspace)
        self.database = self.documents.database

    def env(self, workspace: Workspace | None = None, **extra: str) -> dict[str, str]:
        return child_env(workspace or self.workspace, **self.variables(), **extra)

    def variables(self) -> dict[str, str]:
        """What a child's environment adds to use this store."""
        url = self.settings.database_url
        return {} if url is None else {"SWARM_DATABASE_URL": url.get_secret_value()}

    def run_worker(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run_worker(self.workspace, *args, **self.variables(), **env)

    def close(self) -> None:
        self.documents.close()

    @abstractmethod
    def seed(self, tasks: list[dict[str, Any]], endpoint: str) -> None:
        """Fill the empty queue with `tasks`, run through the API at `endpoint`."""

    @abstractmethod
    def queue(self) -> dict[str, Any]:
        """The queue as a queue.json document."""

    @abstractmethod
    def archived(self) -> list[dict[str, Any]]:
        """The finished tasks retention moved out of the queue, oldest first."""

    @abstractmethod
    def events(self) -> list[dict[str, Any]]:
        """Every event, in the order it was logged."""

    @abstractmethod
    def workspaces(self, count: int) -> list[Workspace]:
        """Workspaces for `count` processes sharing this store."""


class FileBackend(Backend):
    """queue.json (with the journal not yet folded into it, as every process reads it),
    queue_archive.jsonl and execution_log.jsonl."""

    def seed(self, tasks: list[dict[str, Any]], endpoint: str) -> None:
        write_queue(self.workspace, tasks, endpoint)

    def queue(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(
            export_queue(QueueStore(self.workspace), review_enabled=True)
        )
        return document

    def archived(self) -> list[dict[str, Any]]:
        path = self.workspace.queue_archive_path
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.workspace)

    def workspaces(self, count: int) -> list[Workspace]:
        """On files, processes share the store by sharing the workspace."""
        return [self.workspace] * count


class DatabaseBackend(Backend):
    """The queue, the events and the shared documents in one database, read through the
    runtime's store classes; the queue as `swarm export` shows it."""

    def __init__(self, workspace: Workspace, database_url: str):
        from swarm_runtime.queue.postgres import PostgresQueueStore

        super().__init__(workspace, database_url)
        assert self.database is not None
        self.store = PostgresQueueStore(self.database)

    def seed(self, tasks: list[dict[str, Any]], endpoint: str) -> None:
        document = QueueDocument.model_validate({"api_endpoint": endpoint, "tasks": tasks})
        self.store.import_queue(document)

    def queue(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(export_queue(self.store, review_enabled=True))
        return document

    def archived(self) -> list[dict[str, Any]]:
        assert self.database is not None
        with self.database.transaction() as conn:
            rows = conn.execute("SELECT doc FROM swarm_archive ORDER BY archived").fetchall()
        return [doc for (doc,) in rows]

    def events(self) -> list[dict[str, Any]]:
        assert self.database is not None
        return [json.loads(line) for line in DatabaseEvents(self.database).lines()]

    def workspaces(self, count: int) -> list[Workspace]:
        """A workspace each, as on different hosts: the database is what they share."""
        others = [Workspace(self.workspace.root.with_name(f"host-{n}")) for n in range(1, count)]
        for other in others:
            other.ensure_layout()
        return [self.workspace, *others]


@pytest.fixture
def backend(request: pytest.FixtureRequest, workspace: Workspace) -> Iterator[Backend]:
    """The workspace's files, unless `on_both_backends` asks for PostgreSQL too."""
    if getattr(request, "param", "files") == "files":
        chosen: Backend = FileBackend(workspace)
    else:
        chosen = DatabaseBackend(workspace, request.getfixturevalue("database_url"))
    yield chosen
    chosen.close()
